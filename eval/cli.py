"""Command line: ``python -m eval {run,zoo,report,demo}`` (run from the repository root)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import yaml

from .config import ConfigError, DataConfig, EvalConfig, load_config

__all__ = ["build_parser", "main"]

DEFAULT_ZOO_SUITE = Path(__file__).with_name("configs") / "zoo.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a config's grid of models x attacks x budgets (resumable)")
    run.add_argument("--config", required=True, help="YAML config, e.g. eval/configs/mnist5k.yaml")
    run.add_argument("--out", required=True, help="output folder, e.g. results/mnist5k")
    _common(run)

    zoo = sub.add_parser("zoo", help="evaluate RobustBench zoo entries against the deformation suite")
    zoo.add_argument("--dataset", required=True, choices=["cifar10", "cifar100"])
    zoo.add_argument("--threat-model", default="Linf", help="RobustBench threat model (Linf, L2, corruptions)")
    zoo.add_argument("--models", required=True, help="comma-separated zoo names, e.g. Standard,Carmon2019Unlabeled")
    zoo.add_argument("--model-dir", default="models", help="robustbench model_dir holding the weights")
    zoo.add_argument("--data-root", default=None, help="torchvision data root with the test set")
    zoo.add_argument("--suite", default=str(DEFAULT_ZOO_SUITE), help="YAML whose attacks/data/checks to use")
    zoo.add_argument("--out", default=None, help="output folder (default results/zoo-<dataset>-<threat>)")
    _common(zoo)

    rep = sub.add_parser("report", help="re-render report.md, CSVs and budget plots from results.json")
    rep.add_argument("--out", required=True)

    demo = sub.add_parser("demo", help="train a Standard SmallCNN on MNIST-5k and attack it (CPU, ~1 min)")
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--n", type=int, default=500, help="test examples")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--device", default="auto")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite-stale", action="store_true",
                   help="recompute finished cells whose settings changed (default: stop with an error)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--n", type=int, default=None, help="override data.n (number of test examples)")
    p.add_argument("--batch-size", type=int, default=None, help="override data.batch_size")


def _override(cfg: EvalConfig, args: argparse.Namespace) -> EvalConfig:
    data: DataConfig = cfg.data
    if args.n is not None:
        if args.n < 1:
            raise ConfigError(f"--n: expected a positive number of examples, got {args.n}")
        data = dataclasses.replace(data, n=args.n)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size: expected a positive int, got {args.batch_size}")
        data = dataclasses.replace(data, batch_size=args.batch_size)
    cfg = dataclasses.replace(cfg, data=data)
    if args.device is not None:
        cfg = dataclasses.replace(cfg, device=args.device)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .runner import StaleResultsError

    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, StaleResultsError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from .runner import evaluate

        cfg = _override(load_config(args.config), args)
        results = evaluate(cfg, args.out, overwrite_stale=args.overwrite_stale,
                           plots=False if args.no_plots else None)
        if results is not None:
            print(f"wrote {Path(args.out) / 'report.md'} and results.json / results.csv")
        return 0
    if args.command == "zoo":
        from .zoo import run_zoo, zoo_config

        with open(args.suite) as fh:
            suite = yaml.safe_load(fh) or {}
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        if not names:
            raise ConfigError("--models: expected at least one comma-separated model name")
        cfg = zoo_config(args.dataset, args.threat_model, names, args.model_dir, suite,
                         data_root=args.data_root, n=args.n, batch_size=args.batch_size, device=args.device)
        out = args.out or f"results/zoo-{args.dataset}-{args.threat_model}"
        for path in run_zoo(cfg, out, overwrite_stale=args.overwrite_stale,
                            plots=False if args.no_plots else None):
            print(f"wrote {path}")
        return 0
    if args.command == "report":
        from .report import write_outputs

        path = Path(args.out) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"--out: no results.json in {args.out!r}; run `python -m eval run` first")
        results = json.loads(path.read_text())
        keep = [p for p in results.get("plots", []) if not p.startswith("robust_vs_budget_")]
        write_outputs(results, args.out, plot_files=[str(Path(args.out) / p) for p in keep])
        print(f"wrote {Path(args.out) / 'report.md'}")
        return 0
    if args.command == "demo":
        from .demo import format_summary, run_demo

        results = run_demo(out=args.out, n=args.n, epochs=args.epochs, device=args.device)
        print(format_summary(results))
        print(f"\nfull report: {Path(args.out) / 'report.md'}")
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse restricts choices
