"""``python benchmarks/run.py [options]`` = ``python -m benchmarks [options]`` (run from anywhere).

A thin entry for running the file directly: the logic lives in the :mod:`benchmarks` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a file, sys.path[0] is benchmarks/ itself: put the repository root there instead,
    # so that `benchmarks` (and eval, which is not installed) import as packages.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from benchmarks.cli import main

    sys.exit(main(prog="benchmarks/run.py"))
