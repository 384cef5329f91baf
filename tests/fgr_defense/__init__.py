"""Tests of ``fgr_defense``."""
