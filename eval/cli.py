"""``python -m eval {run,report,zoo,demo,reproduce,calibrate}``: the repository's experiment harness.

Run from the repository root. Building the parser imports no torch (``--help`` is instant);
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from deform_robust.cli import HelpFormatter, add_run_arguments, add_verbose, add_zoo_arguments

__all__ = ["build_parser", "main"]

_EPILOG = """examples:
  make demo                                                   # = python -m eval demo
  python -m eval reproduce --preset mnist5k                   # the powered CPU experiment (1-1.7 h)
  python -m eval reproduce --preset cifar10-vgg11 --dry-run   # the paper's setting: plan and conversions
  python -m eval calibrate --preset mnist5k                   # choose weight grids on seed 100
  python -m eval run --config eval/configs/mnist5k.yaml --out results/mnist5k-grid
  python -m eval report --out results/mnist5k-grid

Configs and presets are code (they may import `module:callable`): use only trusted ones.
The installed command `deform-robust` (train, evaluate, run, zoo) needs no checkout.
"""


def _no_plots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-plots", action="store_true", help="draw no figures (the report keeps those already on disk)")


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (LR milestones scaled)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--n", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--max-attack-steps", type=int, default=None, help="cap attack steps and ES population")
    p.add_argument("--dataset-override", default=None,
                   help="train and evaluate on other data, e.g. mnist5k (smoke tests; NOT the preset's setting)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="print the plan (specs, lambda conversions, attacks); exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _sub(sub: Any, name: str, help: str, description: str, *examples: str,
         plots: bool = False) -> argparse.ArgumentParser:
    """A sub-command with the shared formatter, an examples epilog, ``-v`` and (``plots``) ``--no-plots``."""
    epilog = ("example:\n" if len(examples) == 1 else "examples:\n") + "".join(f"  {e}\n" for e in examples)
    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=HelpFormatter, help=help,
                                                     description=description, epilog=epilog)
    if plots:
        _no_plots(parser)
    add_verbose(parser, top=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m eval`` parser (no torch import)."""
    p = argparse.ArgumentParser(prog="python -m eval", formatter_class=HelpFormatter, epilog=_EPILOG,
                                description="Experiment harness of deform-robust: grids, the paper's demo and "
                                            "reproductions, reports and figures.")
    add_verbose(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,report,zoo,demo,reproduce,calibrate}")
    run = _sub(sub, "run", "a config's grid of models x attacks x budgets",
               "Run (or resume) every cell of a config; write results, report.md and figures.",
               "python -m eval run --config eval/configs/mnist5k.yaml --out results/x", plots=True)
    add_run_arguments(run)
    rep = _sub(sub, "report", "re-render report.md from results.json",
               "Re-render report.md (and the budget figures) of a finished run. On a demo or reproduce folder, "
               "recompute the analysis from the stored cells (no training, no attack) and say so in the report's "
               "header.", "python -m eval report --out results/x", "python -m eval report --out results/mnist5k")
    rep.add_argument("--out", required=True, help="the run's output folder (holding results.json)")
    zoo = _sub(sub, "zoo", "RobustBench zoo entries (weights on disk)", "`deform-robust zoo` plus report.md and figures.",
               "python -m eval zoo --dataset cifar10 --models Standard --model-dir models --data-root data",
               plots=True)
    add_zoo_arguments(zoo)
    demo = _sub(sub, "demo", "a newcomer's first run: FGR vs IGR at equal clean accuracy on MNIST-5k (CPU, about 8 min)",
                "Train, attack and compare on MNIST-5k with the demo preset (eval/presets/demo.yaml); cached and "
                "resumable.", "python -m eval demo --out results/demo")
    demo.add_argument("--out", default="results/demo", help="output folder (checkpoints cached in OUT/cache)")
    demo.add_argument("--preset", default="demo", help="preset name or YAML path (tests use 'tiny')")
    _pipeline_options(demo)
    repro = _sub(sub, "reproduce", "a preset: the powered MNIST-5k test, or the paper's and the authors' settings (GPU)",
                 "Run a preset of eval/presets/: mnist5k (the powered CPU experiment), the paper's settings "
                 "(cifar10-vgg11, ..., mnist-resnet18) and the authors' like-for-like anchor (cifar10-vgg11-authors).",
                 "python -m eval reproduce --preset mnist5k",
                 "python -m eval reproduce --preset cifar10-vgg11-authors --data-root data")
    repro.add_argument("--preset", required=True, help="preset name (eval/presets/<name>.yaml) or a YAML path")
    repro.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    repro.add_argument("--data-root", default=None, help="torchvision root for mnist/cifar10/cifar100 presets")
    _pipeline_options(repro)
    cal = _sub(sub, "calibrate", "choose a preset's weight grids on a calibration seed (training only)",
               "Train Standard and each family's calibration.scan weights on a seed the main run does not use, "
               "then choose the weights expected at the preset's target drops in clean accuracy; writes "
               "calibration.md (with the YAML lines for the preset), calibration.json and calibration.png.",
               "python -m eval calibrate --preset mnist5k",
               "python -m eval calibrate --preset demo --seed 101 102 --out results/demo-calibration")
    cal.add_argument("--preset", required=True, help="preset name (eval/presets/<name>.yaml) or a YAML path")
    cal.add_argument("--seed", type=int, nargs="+", default=None,
                     help="calibration seed(s) (default: the preset's calibration.seed)")
    cal.add_argument("--out", default=None, help="output folder (default results/<preset>-calibration)")
    cal.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cal.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct non-negative integers, got {text!r}")
    return seeds


def _finish_run(results: dict[str, Any], cfg: Any, out: Path, plots: bool, data: Any = None) -> None:
    """Figures (``data``: the test data the run used, loaded here when not given) and report.md."""
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .report import write_report

    files = None
    if plots and cfg.plots.enabled:
        # the command's engine (torch among it) is imported when it runs: --help stays fast
        from deform_robust.data import load_test_data
        from fgr_defense.device import resolve_device

        from .plots import budget_plots, model_plots

        d = cfg.data
        if data is None:
            data = load_test_data(d.dataset, d.root, d.n, d.pipeline)
        files = [Path(f).name for f in budget_plots(results, out)]
        files += [Path(f).name for f in model_plots(cfg, out, data, resolve_device(cfg.device))]
    print(f"wrote {write_report(results, out, files)}, results.json, results.csv, worst_case.csv")


def _cmd_run(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from deform_robust.config import load_config, override_config
    from deform_robust.data import load_test_data
    from deform_robust.runner import run_config

    cfg = override_config(load_config(args.config), n=args.n, batch_size=args.batch_size, device=args.device)
    d = cfg.data  # loaded once for the cells and the figures
    data = load_test_data(d.dataset, d.root, d.n, d.pipeline) if cfg.plots.enabled and not args.no_plots else None
    results = run_config(cfg, args.out, overwrite_stale=args.overwrite_stale, data=data,
                         progress=False if args.no_progress else None)
    if results is not None:
        _finish_run(results, cfg, Path(args.out), not args.no_plots, data)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from deform_robust.results import read_results

    from .pipeline_report import (
        format_summary,
        read_pipeline_results,
        reanalyze,
        write_pipeline_outputs,
    )

    # (these too: imported when the command runs)
    from .provenance import git_revision
    from .report import write_report

    out = Path(args.out)
    pipeline = read_pipeline_results(out / "results.json")
    if pipeline is not None:  # a demo/reproduce folder: recompute the analysis, keep the cells and the header
        res = reanalyze(pipeline)
        res["header"] = {**res["header"], "rerendered": {
            "command": "python -m eval " + shlex.join(args.argv), "git_revision": git_revision(exclude=out),
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}}
        write_pipeline_outputs(res, out)
        print(format_summary(res))
        print(f"wrote {out / 'report.md'}")
        return 0
    results = read_results(out / "results.json")
    print(f"wrote {write_report(results, args.out)}")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from deform_robust.results import read_results
    from deform_robust.zoo import run_zoo_command

    cfg, out, paths = run_zoo_command(args.dataset, args.threat_model, args.models, args.model_dir, args.data_root,
                                      args.suite, args.out, args.n, args.batch_size, args.device,
                                      args.overwrite_stale, progress=False if args.no_progress else None)
    for path in paths:
        print(f"wrote {path}")
    _finish_run(read_results(out / "results.json"), cfg, out, not args.no_plots)
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .pipeline import describe, prepare, run_pipeline
    from .pipeline_report import format_summary

    preset = prepare(args.preset, seeds=_seeds(args.seeds), epochs=args.epochs, limit=args.limit, n=args.n,
                         max_attack_steps=args.max_attack_steps, dataset=args.dataset_override,
                         data_root=getattr(args, "data_root", None))
    if args.dry_run:
        print(describe(preset))
        return 0
    default = "results/" + ("demo" if args.command == "demo" else preset.name)
    out = Path(getattr(args, "out", None) or default)
    plain = args.command == "demo" and args.argv in ([], ["demo"])
    command = "make demo  (= python -m eval demo)" if plain else "python -m eval " + shlex.join(args.argv)
    results = run_pipeline(preset, out, device=args.device, progress=not args.no_progress, command=command)
    print(format_summary(results))
    print(f"\nfull report: {out / 'report.md'}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .calibrate import render_calibration, run_calibration
    from .presets import load_preset

    preset = load_preset(args.preset)
    out = Path(args.out or f"results/{preset.name}-calibration")
    result = run_calibration(preset, out, seed=args.seed, device=args.device, progress=not args.no_progress)
    print(render_calibration(result).split("Chosen grids")[1].strip())
    print(f"\nwrote {out / 'calibration.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failed, 2 bad input, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"run": _cmd_run, "report": _cmd_report, "zoo": _cmd_zoo, "demo": _cmd_pipeline,
                "reproduce": _cmd_pipeline, "calibrate": _cmd_calibrate}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a locked output folder, stale cells, a failed run
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # finished cells and checkpoints are on disk; a training run at its last step
        where = getattr(err, "checkpoint", None)
        where = f" (training checkpoint at {where})" if where is not None else ""
        kept = "" if args.command == "report" else "; the finished work is kept: the same command resumes"
        print(f"interrupted{where}{kept}", file=sys.stderr)
        return 130
