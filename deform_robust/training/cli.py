"""Command line: ``python -m fgr_defense train ...`` (also under ``torchrun --nproc_per_node N``).

A thin wrapper: arguments -> :class:`~fgr_defense.spec.TrainSpec` ->
:func:`~fgr_defense.spec.train_from_spec`. Building the parser imports no ``torch`` (``--help``
answers at once); the heavy imports happen in :func:`run_train`. Another console script can
mount the same sub-command with :func:`add_train_arguments` and :func:`run_train`.

Writes ``OUT/model.pt`` (checkpoint, see :mod:`fgr_defense.trainer`), ``OUT/log.json`` (metrics
per epoch), ``OUT/train.log`` and, with ``--keep-best``, ``OUT/best.pt``. Exit status: 0 done,
1 training/data error (message on stderr), 2 bad arguments (checked before any work), 130
interrupted with Ctrl-C (``model.pt`` is written after the running step; the message gives the
command that resumes).

Example:
    >>> parser = build_parser()
    >>> args = parser.parse_args(["-v", "train", "--defense", "FGR+RS", "--weight", "5", "-v"])
    >>> args.command, args.defense, args.weight, args.verbose + args.train_verbose
    ('train', 'FGR+RS', 5.0, 2)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any, Sequence

from .constants import DATASETS, DEFENSES, MODEL_NAMES, PIPELINES, SCHEDULES, VARIANTS

__all__ = ["EXAMPLES", "add_train_arguments", "build_parser", "main", "resume_command", "run_train", "spec_from_args",
           "train_from_args"]

logger = logging.getLogger("fgr_defense")

PROG = "python -m fgr_defense"

EXAMPLES = """\
examples:
  # FGR+RS on the embedded MNIST-5k (no download), a few minutes on a CPU
  python -m fgr_defense train --defense FGR+RS --weight 5 --epochs 8 --out runs/fgr-rs
  # continue it after a crash, or to more epochs
  python -m fgr_defense train --defense FGR+RS --weight 5 --epochs 10 --out runs/fgr-rs --resume
  # the paper's FGR on CIFAR-10 with the paper's schedule (lambda converted to --weight)
  python -m fgr_defense train --dataset cifar10 --data-root data --download --model vgg11 \\
      --defense FGR --lam 400 --preset paper --out runs/c10-fgr
  # the authors' public code, like for like: their variant, data pipeline, schedule, best epoch
  python -m fgr_defense train --dataset cifar10 --data-root data --model vgg11 --defense FGR+RS \\
      --lam 300 --lam-batch-size 128 --variant authors --pipeline authors --preset authors --keep-best
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show the defaults that say something (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == argparse.SUPPRESS \
            or isinstance(action, argparse._CountAction)
        if "%(default)" not in text and not quiet and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 40,60, got {text!r}") from None
    return values


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser`` (any parser or sub-parser); returns it.

    Pair with :func:`run_train` (``parser.set_defaults(handler=run_train)`` or similar).
    Imports no ``torch``. ``-v/--verbose`` is left to the caller (so that a console script
    can put it on its main parser and its sub-commands alike); :func:`run_train` logs at
    DEBUG level when ``args.verbose`` or ``args.train_verbose`` is set.
    """
    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", default="mnist5k", choices=list(DATASETS),
                      help="dataset (mnist5k is embedded; the others load from --data-root)")
    what.add_argument("--model", default="smallcnn", choices=list(MODEL_NAMES), help="classifier")
    what.add_argument("--defense", default="Standard", help=f"one of {', '.join(DEFENSES)} (case-insensitive)")
    what.add_argument("--lam", type=float, default=None,
                      help="the paper's lambda (authors' convention), converted to the weight "
                           "lam*((W-1)/2)^2/B^2 for FGR (lam/B^2 for IGR) with B = --lam-batch-size; "
                           "default 100 (FGR) / 1000 (IGR) when --weight is not given")
    what.add_argument("--lam-batch-size", type=int, default=256, help="the batch size B that --lam was tuned with")
    what.add_argument("--weight", type=float, default=None,
                      help="penalty weight in this package's per-example convention (instead of --lam)")
    what.add_argument("--sigma", type=float, default=None,
                      help="FGR+RS random-start std in pixels (default: the paper's 0.01 normalized)")
    what.add_argument("--variant", default="paper", choices=list(VARIANTS),
                      help="FGR: eq. (16) as printed, or the authors' code (random start as augmentation)")
    what.add_argument("--eps", type=float, default=None,
                      help="L-inf budget of adversarial training (default: 0.1 MNIST, 0.01 CIFAR)")
    how = parser.add_argument_group("schedule")
    how.add_argument("--preset", default="fast", choices=list(SCHEDULES),
                     help="training schedule: paper (SGD, lr 0.1, batch 256), authors (their code, CIFAR), "
                          "fast (Adam, 8 epochs)")
    how.add_argument("--epochs", type=int, default=None, help="total epochs (default: the preset's)")
    how.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the preset's)")
    how.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the preset's)")
    how.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="override the preset's optimizer")
    how.add_argument("--momentum", type=float, default=None, help="override the preset's SGD momentum")
    how.add_argument("--weight-decay", type=float, default=None, help="override the preset's weight decay")
    how.add_argument("--milestones", type=_int_list, default=None,
                     help="override the epochs after which the lr drops, e.g. 40,60")
    how.add_argument("--gamma", type=float, default=None, help="override the lr drop factor")
    how.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    how.add_argument("--seed", type=int, default=0, help="seed of the initialization and all training randomness")
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", default=None, help="torchvision data folder (mnist, cifar10, cifar100)")
    data.add_argument("--download", action="store_true", help="download a missing dataset into --data-root")
    data.add_argument("--pipeline", default="paper", choices=list(PIPELINES),
                      help="data pipeline: paper (pad-and-crop) or authors (resize-then-crop, test images too)")
    data.add_argument("--no-augment", action="store_true", help="disable the random crop/flip")
    data.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    data.add_argument("--val-limit", type=int, default=None, help="validate on the first N test images only")
    data.add_argument("--no-val", action="store_true", help="skip the per-epoch test-set evaluation")
    data.add_argument("--keep-best", action="store_true",
                      help="also keep OUT/best.pt, the epoch with the best validation accuracy")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None,
                     help="output folder (default: results/train/<dataset>-<model>-<defense>[-lam<lam>][-w<weight>])")
    run.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    run.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N optimizer steps")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="logging level (-v is DEBUG)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``fgr_defense`` argument parser (sub-command ``train``); imports no ``torch``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Train classifiers with the paper's defenses.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="the sub-command ('COMMAND --help' lists its options)")
    train = sub.add_parser("train", help="train one model with one defense", description=(
        "Train one model with one defense; writes OUT/model.pt, OUT/log.json and OUT/train.log."),
        epilog=EXAMPLES, formatter_class=_HelpFormatter)
    add_train_arguments(train)
    train.add_argument("-v", "--verbose", dest="train_verbose", action="count", default=0,
                       help="more log output (DEBUG), also accepted after the sub-command")
    return parser


#: Spec field -> option, for error messages of the command line.
_FLAGS = {"validation": "--no-val", "augment": "--no-augment", "schedule": "--preset", "progress": "--no-progress",
          "lam, weight": "--lam, --weight", "lam/weight": "--lam/--weight", "data_root": "--data-root"}


def _as_flags(message: str) -> str:
    """``"val_limit: expected ..."`` -> ``"--val-limit: expected ..."``."""
    head, sep, rest = message.partition(": ")
    if not sep:
        return message
    name = head.removeprefix("schedule.")
    if name in _FLAGS:
        return f"{_FLAGS[name]}: {rest}"
    if name.replace("_", "").isalnum() and name.islower():
        return f"--{name.replace('_', '-')}: {rest}"
    return message


def spec_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~fgr_defense.spec.TrainSpec` of parsed ``train`` arguments (validated)."""
    from .presets import get_schedule
    from .spec import TrainSpec

    schedule: Any = args.preset
    custom = {k: getattr(args, k) for k in ("optimizer", "momentum", "weight_decay", "milestones", "gamma")
              if getattr(args, k, None) is not None}
    if custom:
        schedule = get_schedule(args.preset, args.dataset).replace(name=f"{args.preset}-custom", **custom)
    return TrainSpec(
        dataset=args.dataset, model=args.model, defense=args.defense, weight=args.weight, lam=args.lam,
        lam_batch_size=args.lam_batch_size, sigma=args.sigma, variant=args.variant, eps=args.eps,
        schedule=schedule, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, pipeline=args.pipeline,
        augment=not args.no_augment, limit=args.limit, seed=args.seed, grad_clip=args.grad_clip,
        keep_best=args.keep_best, data_root=args.data_root, download=args.download, device=args.device,
        workers=args.workers, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
        validation=not args.no_val, val_limit=args.val_limit,
    )


def train_from_args(args: argparse.Namespace) -> Any:
    """Backward-compatible: train from parsed arguments and return the checkpoint path (raises on errors).

    Prefer :func:`run_train` (exit status) or :func:`~fgr_defense.spec.train_from_spec`.
    """
    from .spec import train_from_spec

    spec = spec_from_args(args)
    return train_from_spec(spec, _out_dir(args, spec), mode="resume" if args.resume else "new").checkpoint


def _out_dir(args: argparse.Namespace, spec: Any) -> Any:
    from .presets import default_out_dir

    return args.out or default_out_dir(spec.dataset, spec.model, spec.defense, args.lam, weight=args.weight)


def _configure_logging(args: argparse.Namespace) -> None:
    verbose = int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "train_verbose", 0) or 0)
    level = logging.DEBUG if verbose else getattr(logging, getattr(args, "log_level", "INFO"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("fgr_defense").setLevel(level)


def resume_command(prog: str, argv: Sequence[str] | None = None) -> str:
    """The command line that resumes a run: ``prog``, the options after ``train`` in ``argv``, ``--resume``.

    ``argv`` defaults to ``sys.argv[1:]``; options before the sub-command (``-v``) are dropped.

    Example:
        >>> resume_command("deform-robust train", ["-v", "train", "--epochs", "3", "--out", "runs/my run"])
        "deform-robust train --epochs 3 --out 'runs/my run' --resume"
    """
    words = list(sys.argv[1:] if argv is None else argv)
    if "train" in words:
        words = words[words.index("train") + 1:]
    if "--resume" not in words:
        words.append("--resume")
    return f"{prog} {shlex.join(words)}"


def _interrupted(err: KeyboardInterrupt, out: Any, prog: str, argv: Sequence[str] | None) -> int:
    """One line for a Ctrl-C: where the checkpoint is and the command that resumes; exit status 130."""
    from pathlib import Path

    ckpt = getattr(err, "checkpoint", None)
    if ckpt is None and (Path(out) / "model.pt").is_file():
        ckpt = Path(out) / "model.pt"  # interrupted at once (a second Ctrl-C): the last checkpoint written
    if ckpt is None:
        sys.stderr.write(f"interrupted before the first checkpoint was written to {out}; nothing to resume\n")
    else:
        sys.stderr.write(f"interrupted: checkpoint at {ckpt}; resume with: {resume_command(prog, argv)}\n")
    return 130


def run_train(args: argparse.Namespace, prog: str = f"{PROG} train", argv: Sequence[str] | None = None) -> int:
    """Run ``train`` with parsed arguments (from :func:`add_train_arguments`); returns the exit status.

    0: done; 1: a training or data error (one line on stderr); 2: bad arguments, found before
    any work (one line on stderr, ``"<prog>: error: --option: ..."``, as argparse writes them);
    130: interrupted with Ctrl-C (one line: the checkpoint and the command that resumes it,
    built from ``argv``, default ``sys.argv[1:]``; see :class:`~fgr_defense.trainer.TrainingInterrupted`).
    """
    _configure_logging(args)
    try:
        from .device import resolve_device

        spec = spec_from_args(args)
        resolve_device(spec.device)
        out = _out_dir(args, spec)
        from .checkpoint import check_writable  # torch-free, like this module

        check_writable(out, "--out", folder=True)
    except (ValueError, TypeError) as err:
        sys.stderr.write(f"{prog}: error: {_as_flags(str(err))}\n")
        return 2

    import torch.distributed as dist

    from .checkpoint import OutputLockedError, OutputWriteError
    from .spec import train_from_spec
    from .trainer import NonFiniteLossError

    owned_group = not (dist.is_available() and dist.is_initialized())
    try:
        result = train_from_spec(spec, out, mode="resume" if args.resume else "new")
        if not dist.is_initialized() or dist.get_rank() == 0:
            logger.info("done: %s (%s)", result.checkpoint, "nothing to do" if result.cached else
                        f"{result.wall_s:.1f} s")
    except (NonFiniteLossError, OutputLockedError, FileNotFoundError, FileExistsError, ValueError, TypeError,
            OutputWriteError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt as err:  # TrainingInterrupted (a checkpoint at a step) or an immediate Ctrl-C
        if dist.is_initialized() and dist.get_rank() != 0:
            return 130
        return _interrupted(err, out, prog, argv)
    finally:
        if owned_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the one torchrun's environment made us create
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (argparse itself exits with 2 on unparsable arguments)."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_train(args, argv=argv)
    return 2  # pragma: no cover - argparse requires a known command
