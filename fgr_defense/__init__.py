"""fgr_defense: drop-in gradient-regularized and adversarial training against deformations."""

__version__ = "0.1.0"
