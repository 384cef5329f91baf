"""``python -m benchmarks [options]``: see :mod:`benchmarks` and ``--help``."""

import sys

from .cli import main

sys.exit(main())
