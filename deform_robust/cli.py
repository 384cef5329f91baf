"""The ``deform-robust`` console script: train, evaluate your own model, run a config, RobustBench zoo.

Building the parser imports no torch (``--help`` answers at once); each command imports the
engine it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

from fgr_defense.files import atomic_write_text, check_writable  # torch-free

from .training.cli import add_train_arguments, run_train  # torch-free until a command runs

__all__ = ["HelpFormatter", "add_run_arguments", "add_verbose", "add_zoo_arguments", "build_parser", "main"]

_EPILOG = """examples:
  deform-robust evaluate --model mypkg.nets:Net --weights net.pt --data test.pt --eps 0.25,0.5
  deform-robust evaluate --model runs/x/model.pt --data mnist5k --n 500 --attacks fast
  deform-robust evaluate --model robustbench:Standard --model-dir models --data cifar10 --data-root data
  deform-robust train --dataset mnist5k --model smallcnn --defense fgr+rs --weight 2 --out runs/x
  deform-robust run --config eval/configs/mnist5k.yaml --out results/mnist5k
  deform-robust zoo --dataset cifar10 --models Standard --model-dir models --data-root data

Configs and `module:callable` specs are Python code that is imported and run: use only trusted ones.
"""


_TRAIN_EPILOG = """examples:
  # FGR+RS on the embedded MNIST-5k (nothing to download), a few minutes on a CPU
  deform-robust train --defense FGR+RS --weight 5 --epochs 8 --out runs/fgr-rs
  # continue it after Ctrl-C or a crash (the same options plus --resume), here to more epochs
  deform-robust train --defense FGR+RS --weight 5 --epochs 10 --out runs/fgr-rs --resume
  # the paper's FGR on CIFAR-10 (downloaded once into data/) with its lambda and schedule
  deform-robust train --dataset cifar10 --data-root data --download --model vgg11 --defense FGR --lam 400 --schedule paper --out runs/c10-fgr
  # the authors' public code, like for like: their variant, data pipeline, schedule, best epoch
  deform-robust train --dataset cifar10 --data-root data --model vgg11 --defense FGR+RS --lam 300 --lam-batch-size 128 --variant authors --pipeline authors --schedule authors --keep-best
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, defaults shown."""


def add_verbose(p: argparse.ArgumentParser, top: bool) -> None:
    """``-v/--verbose``; on a sub-command its default is SUPPRESS, so it works before and after the sub-command."""
    p.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="debug logging")


def _add_evaluate(sub: Any) -> None:
    e = sub.add_parser(
        "evaluate", formatter_class=HelpFormatter,
        help="robust accuracy of your model under the deformation suite",
        description="Clean accuracy, robust accuracy per attack and the worst case over the suite of one "
                    "model on one set of test images (torchattacks_deform.evaluate_robustness).",
        epilog="examples:\n  deform-robust evaluate --model mypkg.nets:make_net --weights net.pt --data test.npz\n"
               "  deform-robust evaluate --model model.ts --data images/ --eps 0.5 --out out/ --save-adv out/adv\n")
    e.add_argument("--model", required=True,
                   help="a checkpoint of ours (.pt), a TorchScript file, 'package.module:callable' (with "
                        "--weights), 'robustbench:<name>' with cifar10/cifar100 --data, or "
                        "'robustbench:cifar10/<name>' on your own data of that shape (with --model-dir)")
    e.add_argument("--weights", default=None, help="state dict for a 'module:callable' model")
    e.add_argument("--kwargs", default="{}", help="JSON keyword arguments for a 'module:callable' model")
    e.add_argument("--model-dir", default="models", help="RobustBench model_dir holding the weights")
    e.add_argument("--threat-model", default="Linf", help="RobustBench threat model of the entry")
    e.add_argument("--data", required=True,
                   help="a dataset name (mnist5k, mnist, cifar10, cifar100), a .pt/.npz file with images "
                        "and labels, or an ImageFolder")
    e.add_argument("--data-root", default=None, help="torchvision root for mnist/cifar10/cifar100")
    e.add_argument("--n", type=int, default=None, help="evaluate N images only (a user's data: drawn evenly over the classes, seeded)")
    e.add_argument("--eps", default="0.5", help="comma-separated flow budgets in pixels (Linf)")
    e.add_argument("--attacks", default="standard",
                   help="'standard', 'fast' or 'legacy' (FlowAutoAttack's members), or comma-separated flow "
                        "attacks (FlowFGSM,FlowPGD,FlowAPGD,FlowAPGDT,StAdv,FlowES,FlowSquare)")
    e.add_argument("--cascade", action="store_true",
                   help="run the attacks as a cascade (cheaper; per-attack numbers become cumulative)")
    e.add_argument("--batch-size", type=int, default=256, help="images per batch")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    e.add_argument("--out", default=None,
                   help="also write robustness.json (numbers, per-class accuracies, provenance: versions, git "
                        "revision, the weights file's sha256) and robustness.csv (see --csv) into this folder")
    e.add_argument("--save-adv", default=None, metavar="DIR",
                   help="also write the adversarial images into DIR: adversarial_eps<eps>.pt per budget, read by "
                        "torch.load(path, weights_only=True): labels, per attack its images and fooled mask, "
                        "the per-example worst case")
    e.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the CSV to FILE (--out writes it as robustness.csv next to robustness.json): "
                        "one row per budget and attack, plus clean and worst case; columns model, data, budget, "
                        "norm, attack, accuracy, correct, n, attacked, fooled, time_s, queries_per_example, "
                        "per_attack, seed")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose(e, top=False)


def _add_run(sub: Any) -> None:
    r = sub.add_parser(
        "run", formatter_class=HelpFormatter, help="run a config's grid of models x attacks x budgets (resumable)",
        description="Run every (model, attack, budget) cell of a YAML config into an output folder: results.json, "
                    "results.csv, worst_case.csv. A killed run resumes cell by cell. Configs are code: "
                    "use only trusted ones.",
        epilog="example:\n  deform-robust run --config my.yaml --out results/my\n")
    add_run_arguments(r)
    add_verbose(r, top=False)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``run`` (shared with ``python -m eval run``)."""
    p.add_argument("--config", required=True, help="YAML config (schema: deform_robust.config)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite-stale", action="store_true",
                   help="recompute finished cells whose settings changed (default: stop with an error)")
    p.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--n", type=int, default=None, help="override data.n (number of test examples)")
    p.add_argument("--batch-size", type=int, default=None, help="override data.batch_size")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they show only on a terminal anyway)")


def _add_zoo(sub: Any) -> None:
    z = sub.add_parser(
        "zoo", formatter_class=HelpFormatter, help="RobustBench zoo entries against the deformation suite",
        description="Evaluate RobustBench models (weights already on disk; nothing is downloaded) and write "
                    "one RobustBench-style JSON record per model.",
        epilog="example:\n  deform-robust zoo --dataset cifar10 --models Standard --model-dir models "
               "--data-root data\n")
    add_zoo_arguments(z)
    add_verbose(z, top=False)


def add_zoo_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zoo`` (shared with ``python -m eval zoo``)."""
    p.add_argument("--dataset", required=True, choices=["cifar10", "cifar100"], help="RobustBench dataset")
    p.add_argument("--threat-model", default="Linf", help="RobustBench threat model (Linf, L2, corruptions)")
    p.add_argument("--models", required=True, help="comma-separated zoo names, e.g. Standard,Carmon2019Unlabeled")
    p.add_argument("--model-dir", default="models", help="robustbench model_dir holding the weights")
    p.add_argument("--data-root", required=True,
                   help="torchvision root holding the test set (cifar-10-batches-py/ or cifar-100-python/)")
    p.add_argument("--suite", default=None, help="YAML whose attacks/data/checks to use (default: the shipped zoo suite)")
    p.add_argument("--out", default=None, help="output folder (default results/zoo-<dataset>-<threat>)")
    p.add_argument("--n", type=int, default=None, help="override the suite's number of test examples")
    p.add_argument("--batch-size", type=int, default=None, help="override the suite's batch size")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite-stale", action="store_true", help="recompute finished cells whose settings changed")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they show only on a terminal anyway)")


def _version() -> str:
    """The installed distribution's version (no torch import)."""
    try:
        return version("deform-robust")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``deform-robust`` parser (no torch import)."""
    p = argparse.ArgumentParser(prog="deform-robust", formatter_class=HelpFormatter, epilog=_EPILOG,
                                description="Adversarial deformations: attack, train and evaluate image classifiers.")
    add_verbose(p, top=True)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,run,zoo}")
    t = sub.add_parser("train", formatter_class=HelpFormatter, help="train one model with one of the paper's defenses",
                       description="Train a classifier with Standard, IGR, FGR, FGR+RS, AT-FGSM, AT-PGD or "
                                   "FGR+RS+AT-PGD (deform_robust.training). Ctrl-C writes "
                                   "a checkpoint after the running step and prints the command that resumes.",
                       epilog=_TRAIN_EPILOG)
    add_train_arguments(t)
    add_verbose(t, top=False)
    _add_evaluate(sub)
    _add_run(sub)
    _add_zoo(sub)
    return p


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")


def _budgets(text: str) -> list[float]:
    # torchattacks_deform.validation imports torch: only when the command runs, --help stays fast
    from torchattacks_deform.validation import check_budget

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--eps: expected comma-separated numbers of pixels, got {text!r}") from None
    if not values:
        raise ValueError("--eps: expected at least one budget")
    return [check_budget(v, "--eps", exclusive_minimum=True) for v in values]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .evaluate import run_model_source, write_output

    _positive(args.n, "--n")
    _positive(args.batch_size, "--batch-size")
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--kwargs: expected a JSON object, got {args.kwargs!r} ({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs: expected a JSON object, got {args.kwargs!r}")
    budgets = _budgets(args.eps)
    for value, flag, folder in ((args.out, "--out", True), (args.save_adv, "--save-adv", True),
                                (args.csv, "--csv", False)):
        if value is not None:  # before the (long) evaluation, not after it
            check_writable(value, flag, folder)
    ev = run_model_source(
        model=args.model, weights=args.weights, kwargs=kwargs, model_dir=args.model_dir,
        threat_model=args.threat_model, data=args.data, data_root=args.data_root, n=args.n,
        budgets=budgets, attacks=args.attacks, cascade=args.cascade, batch_size=args.batch_size,
        device=args.device, seed=args.seed, progress=False if args.no_progress else None)
    print(ev.table())
    if args.out is not None:
        path = Path(args.out) / "robustness.json"
        text = json.dumps(ev.record(exclude=args.out), indent=1) + "\n"
        write_output(path, "--out", lambda: atomic_write_text(path, text))
        ev.write_csv(path.with_suffix(".csv"), "--out")
        print(f"wrote {path} and {path.with_suffix('.csv')}")
    if args.csv is not None:
        ev.write_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.save_adv is not None:
        for path in ev.write_adversarial(args.save_adv):
            print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .config import load_config, override_config
    from .results import summary_table
    from .runner import run_config

    cfg = override_config(load_config(args.config), n=args.n, batch_size=args.batch_size, device=args.device)
    results = run_config(cfg, args.out, overwrite_stale=args.overwrite_stale,
                         progress=False if args.no_progress else None)
    if results is not None:
        print(summary_table(results))
        print(f"wrote {Path(args.out) / 'results.json'}, results.csv and worst_case.csv")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    # the command's engine (torch among it) is imported when it runs: --help stays fast
    from .zoo import run_zoo_command

    _, _, paths = run_zoo_command(args.dataset, args.threat_model, args.models, args.model_dir, args.data_root,
                                  args.suite, args.out, args.n, args.batch_size, args.device, args.overwrite_stale,
                                  progress=False if args.no_progress else None)
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0 ok, 1 failed, 2 bad input, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        return int(run_train(args, argv=argv))
    handlers = {"evaluate": _cmd_evaluate, "run": _cmd_run, "zoo": _cmd_zoo}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, (ValueError, TypeError, FileNotFoundError)) else 1
    except OSError as err:  # an output that cannot be written (fgr_defense.files.OutputWriteError names it)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = ("; the finished cells are kept: the same command resumes" if args.command in ("run", "zoo") else "")
        print(f"interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
