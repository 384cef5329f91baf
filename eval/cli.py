"""Command line: ``python -m eval {run,zoo,report,demo,reproduce,bench}`` (run from the repository root)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
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

    demo = sub.add_parser("demo", help="the paper's comparison on MNIST-5k: train 7 defenses (3 seeds), "
                          "attack them, report (CPU, < 15 min; cached and resumable)")
    demo.add_argument("--out", default="results/demo", help="output folder (checkpoints cached in OUT/cache)")
    demo.add_argument("--preset", default="mnist5k", help="mnist5k (make demo) or tiny (tests, seconds)")
    demo.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the preset's)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    demo.add_argument("--n", type=int, default=None, help="test examples (default: the preset's)")
    demo.add_argument("--device", default="auto")

    rep5 = sub.add_parser("reproduce", help="the paper's full setting for one dataset/architecture (GPU)")
    rep5.add_argument("--preset", required=True, help="cifar10-vgg11, cifar10-resnet18, cifar100-vgg11, "
                      "cifar100-resnet18, mnist-vgg11 or mnist-resnet18")
    rep5.add_argument("--data-root", default="data", help="local torchvision root holding the dataset")
    rep5.add_argument("--out", default=None, help="output folder (default results/reproduce/<preset>)")
    rep5.add_argument("--seeds", default=None, help="comma-separated training seeds (default: 0)")
    rep5.add_argument("--device", default="auto")
    rep5.add_argument("--dry-run", action="store_true", help="print the plan and the lambda conversions; exit")
    rep5.add_argument("--epochs", type=int, default=None, help="override the epochs (LR milestones scaled)")
    rep5.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    rep5.add_argument("--n", type=int, default=None, help="evaluate on the first N test images only")
    rep5.add_argument("--only", default=None, help="comma-separated model names, e.g. 'Standard,FGR+RS(lam=300)'")
    rep5.add_argument("--max-attack-steps", type=int, default=None, help="cap attack steps / ES population")
    rep5.add_argument("--dataset-override", default=None,
                      help="run the preset on other data, e.g. mnist5k (smoke tests; NOT the paper setting)")
    rep5.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 8 on CUDA, else 0)")

    bench = sub.add_parser("bench", help="speed and memory ratios of the attacks and training steps "
                           "(results/bench; CPU < 5 min)")
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return p


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct non-negative integers, got {text!r}")
    return seeds


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


def argv_is_default(args: argparse.Namespace) -> bool:
    """True when ``demo`` runs with every option at its default (as ``make demo`` does)."""
    return (args.out, args.preset, args.seeds, args.epochs, args.n, args.device) == (
        "results/demo", "mnist5k", None, None, None, "auto")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
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
        from .demo import format_headline, run_demo

        command = "make demo  (= python -m eval demo)" if argv_is_default(args) else \
            "python -m eval " + shlex.join(args.argv)
        results = run_demo(out=args.out, preset=args.preset, seeds=_seeds(args.seeds), epochs=args.epochs,
                           n=args.n, device=args.device, command=command)
        print(format_headline(results))
        print(f"\nfull report: {Path(args.out) / 'report.md'}")
        return 0
    if args.command == "reproduce":
        from .demo import format_headline
        from .reproduce import run_reproduce

        only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
        out = run_reproduce(args.preset, out=args.out, device=args.device, dry_run=args.dry_run,
                            command="python -m eval " + shlex.join(args.argv), data_root=args.data_root,
                            seeds=_seeds(args.seeds), epochs=args.epochs, limit=args.limit, n=args.n,
                            only=only, max_attack_steps=args.max_attack_steps,
                            dataset_override=args.dataset_override, workers=args.workers)
        if isinstance(out, str):
            print(out)
            return 0
        print(format_headline(out))
        print(f"\nfull report: {Path(args.out or Path('results') / 'reproduce' / args.preset) / 'report.md'}")
        return 0
    if args.command == "bench":
        from .bench import command_line, config_from_args, format_markdown, run_bench

        results = run_bench(config_from_args(args, command_line(["python", "-m", "eval"], getattr(args, "argv", None))))
        print(format_markdown(results))
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse restricts choices
