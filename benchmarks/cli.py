"""The command line of ``python -m benchmarks`` (and ``python benchmarks/run.py``).

Building the parser imports no torch (``--help`` is instant); :func:`main` imports the
benchmark (:mod:`benchmarks.driver`) only when it runs.

Example:
    >>> args = build_parser().parse_args(["--quick", "--autocast-dtype", "bf16", "--channels-last"])
    >>> cfg = config_from_args(args, "cmd")
    >>> cfg.quick, cfg.autocast_dtype, cfg.channels_last
    (True, 'bf16', True)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any, Optional, Sequence

from .config import AUTOCAST_DTYPES, SECTIONS, SPECS, SUITE_VERSIONS, BenchConfig

__all__ = ["build_parser", "command_line", "config_from_args", "main"]

PROG = "python -m benchmarks"

_EPILOG = """examples:
  python -m benchmarks                                   # everything (= make bench; CPU: about 5 min on 2 cores)
  python -m benchmarks --quick --out /tmp/bench          # smoke test: SmallCNN, tiny batches (under a minute)
  python -m benchmarks --device cuda --models vgg11,resnet18 --autocast-dtype bf16 --channels-last

Writes OUT/bench.json and OUT/bench.md after every row group; ratios are per round, rounds interleaved.
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of the benchmark's options (no torch import)."""
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="What the flow attacks and the regularized training steps cost, as ratios to references "
                    "timed side by side (torchattacks, plain loops, a Standard training step).")
    p.add_argument("--out", default="results/bench", help="folder of bench.json and bench.md (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke-test settings (SmallCNN only, two rounds, the fast suite): the numbers mean little")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(SPECS['cpu'])} (default: all)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per model and device)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds before the timed ones (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--autocast-dtype", choices=list(AUTOCAST_DTYPES), default=None,
                   help="run the models under torch.autocast with this dtype (bf16 = torch.bfloat16) in the "
                        "attacks, the references and the training steps (default: float32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last models and inputs")
    p.add_argument("--suite-images", type=int, default=None,
                   help="correctly classified images of the suite row (default: 8)")
    p.add_argument("--suite-eps", type=float, default=None, help="flow budget of the suite row, pixels Linf (default: 0.5)")
    p.add_argument("--suite-version", choices=list(SUITE_VERSIONS), default=None,
                   help="FlowAutoAttack version of the suite row (default: standard; --quick: fast)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the models and the random attacks (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return None if not text else tuple(s.strip() for s in text.split(",") if s.strip())


def config_from_args(args: argparse.Namespace, command: str) -> BenchConfig:
    """A :class:`~benchmarks.config.BenchConfig` from parsed :func:`build_parser` options."""
    kwargs: dict[str, Any] = {"device": args.device, "repeats": args.repeats, "threads": args.threads,
                              "autocast_dtype": args.autocast_dtype, "channels_last": args.channels_last,
                              "seed": args.seed, "out": args.out, "command": command}
    optional = {"models": _names(args.models), "sections": _names(args.sections), "warmup": args.warmup,
                "suite_images": args.suite_images, "suite_eps": args.suite_eps, "suite_version": args.suite_version}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return BenchConfig.quick_config(**kwargs) if args.quick else BenchConfig(**kwargs)


def command_line(prefix: Sequence[str], argv: Optional[Sequence[str]] = None) -> str:
    """``prefix`` followed by the arguments, shell-quoted: the command recorded in the outputs.

    Example:
        >>> command_line(["python", "-m", "benchmarks"], ["--threads", "1", "--out", "a b"])
        "python -m benchmarks --threads 1 --out 'a b'"
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [*prefix, *args])


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Parse, run the benchmark, print ``bench.md``; 2 on bad settings."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args, command_line(prog.split(), argv))
        # the command's engine (torch among it) is imported when it runs: --help stays fast
        from .driver import run_bench
        from .report import format_markdown

        results = run_bench(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_markdown(results))
    return 0
