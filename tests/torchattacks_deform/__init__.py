"""Tests of ``torchattacks_deform``."""
