"""Tests of ``deform_robust``."""
