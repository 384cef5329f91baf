"""Tests of ``eval``."""
