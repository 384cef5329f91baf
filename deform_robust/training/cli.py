"""The ``deform-robust train`` command: arguments -> :class:`~deform_robust.training.spec.TrainSpec` ->
:func:`~deform_robust.training.run.train_from_spec` (also under ``torchrun --nproc_per_node N``).

Adding the options (:func:`add_train_arguments`) imports no ``torch``, so ``deform-robust --help``
answers at once; the heavy imports happen in :func:`run_train`.

Writes ``OUT/model.pt`` (checkpoint, see :mod:`fgr_defense.trainer`), ``OUT/log.json`` (metrics
per epoch), ``OUT/train.log`` and, with ``--keep-best``, ``OUT/best.pt``. Exit status: 0 done,
1 training/data error (message on stderr), 2 bad arguments (checked before any work), 130
interrupted with Ctrl-C (``model.pt`` is written after the running step; the message gives the
command that resumes).

Example:
    >>> import argparse
    >>> args = add_train_arguments(argparse.ArgumentParser()).parse_args(["--defense", "FGR+RS", "--weight", "5"])
    >>> args.defense, args.weight, args.schedule
    ('FGR+RS', 5.0, 'fast')
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from fgr_defense.constants import DATASETS, DEFENSES, MODEL_NAMES, PIPELINES, SCHEDULES, VARIANTS
from fgr_defense.files import OutputLockedError, OutputWriteError, check_writable

__all__ = ["PROG", "add_train_arguments", "resume_command", "run_train", "spec_from_args"]

logger = logging.getLogger(__name__)

PROG = "deform-robust train"

def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 40,60, got {text!r}") from None
    return values


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser`` (any parser or sub-parser); returns it.

    Pair with :func:`run_train`. Imports no ``torch``. ``-v/--verbose`` is left to the caller
    (``deform-robust`` puts it on its main parser and its sub-commands alike); :func:`run_train`
    logs at DEBUG level when ``args.verbose`` is set.
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
    how.add_argument("--schedule", default="fast", choices=list(SCHEDULES),
                     help="training schedule: paper (SGD, lr 0.1, batch 256), authors (their code, CIFAR), "
                          "fast (Adam, 8 epochs)")
    how.add_argument("--preset", dest="schedule", choices=list(SCHEDULES), help=argparse.SUPPRESS)  # the old name
    how.add_argument("--epochs", type=int, default=None, help="total epochs (default: the schedule's)")
    how.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the schedule's)")
    how.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the schedule's)")
    how.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="override the schedule's optimizer")
    how.add_argument("--momentum", type=float, default=None, help="override the schedule's SGD momentum")
    how.add_argument("--weight-decay", type=float, default=None, help="override the schedule's weight decay")
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


#: Spec field -> option, for error messages of the command line.
_FLAGS = {"validation": "--no-val", "augment": "--no-augment", "schedule": "--schedule", "progress": "--no-progress",
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
    """The :class:`~deform_robust.training.spec.TrainSpec` of parsed ``train`` arguments (validated)."""
    from fgr_defense.defenses import (
        get_schedule,  # torch: imported when the command runs, not for --help
    )

    from .spec import TrainSpec  # torch: imported when the command runs, not for --help

    schedule: Any = args.schedule
    custom = {k: getattr(args, k) for k in ("optimizer", "momentum", "weight_decay", "milestones", "gamma")
              if getattr(args, k, None) is not None}
    if custom:
        schedule = get_schedule(args.schedule, args.dataset).replace(name=f"{args.schedule}-custom", **custom)
    return TrainSpec(
        dataset=args.dataset, model=args.model, defense=args.defense, weight=args.weight, lam=args.lam,
        lam_batch_size=args.lam_batch_size, sigma=args.sigma, variant=args.variant, eps=args.eps,
        schedule=schedule, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, pipeline=args.pipeline,
        augment=not args.no_augment, limit=args.limit, seed=args.seed, grad_clip=args.grad_clip,
        keep_best=args.keep_best, data_root=args.data_root, download=args.download, device=args.device,
        workers=args.workers, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
        validation=not args.no_val, val_limit=args.val_limit,
    )


def _out_dir(args: argparse.Namespace, spec: Any) -> Any:
    from .spec import default_out_dir  # torch: imported when the command runs, not for --help

    return args.out or default_out_dir(spec.dataset, spec.model, spec.defense, args.lam, weight=args.weight)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else getattr(logging, getattr(args, "log_level", "INFO"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("fgr_defense", "deform_robust.training"):  # the training code's loggers only
        logging.getLogger(name).setLevel(level)


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
    ckpt = getattr(err, "checkpoint", None)
    if ckpt is None and (Path(out) / "model.pt").is_file():
        ckpt = Path(out) / "model.pt"  # interrupted at once (a second Ctrl-C): the last checkpoint written
    if ckpt is None:
        sys.stderr.write(f"interrupted before the first checkpoint was written to {out}; nothing to resume\n")
    else:
        sys.stderr.write(f"interrupted: checkpoint at {ckpt}; resume with: {resume_command(prog, argv)}\n")
    return 130


def run_train(args: argparse.Namespace, prog: str = PROG, argv: Sequence[str] | None = None) -> int:
    """Run ``train`` with parsed arguments (from :func:`add_train_arguments`); returns the exit status.

    0: done; 1: a training or data error (one line on stderr); 2: bad arguments, found before
    any work (one line on stderr, ``"<prog>: error: --option: ..."``, as argparse writes them);
    130: interrupted with Ctrl-C (one line: the checkpoint and the command that resumes it,
    built from ``argv``, default ``sys.argv[1:]``; see :class:`~fgr_defense.trainer.TrainingInterrupted`).
    """
    _configure_logging(args)
    try:
        from fgr_defense.device import (
            resolve_device,  # torch: imported when the command runs, not for --help
        )

        spec = spec_from_args(args)
        resolve_device(spec.device)
        out = _out_dir(args, spec)
        check_writable(out, "--out", folder=True)
    except (ValueError, TypeError) as err:
        sys.stderr.write(f"{prog}: error: {_as_flags(str(err))}\n")
        return 2

    import torch.distributed as dist  # torch: imported when the command runs, not for --help

    from fgr_defense.trainer import NonFiniteLossError

    from .run import train_from_spec

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
