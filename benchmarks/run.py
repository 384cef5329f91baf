"""Run the benchmark: ``python benchmarks/run.py [options]`` = ``python -m eval bench [options]``.

The logic lives in :mod:`eval.bench`; see there (or ``--help``) for what is measured.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: eval is not installed

from eval.bench import add_arguments, command_line, config_from_args, format_markdown, run_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__)
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = run_bench(config_from_args(args, command_line(["python", "benchmarks/run.py"], argv)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
