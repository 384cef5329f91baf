"""Command line: ``python -m fgr_defense train ...`` (also under ``torchrun --nproc_per_node N``).

Example::

    python -m fgr_defense train --dataset mnist5k --model smallcnn --defense FGR+RS \\
        --weight 5 --epochs 8 --out runs/x
    python -m fgr_defense train ... --out runs/x --resume          # continue after a crash
    python -m fgr_defense train --dataset cifar10 --data-root data --download \\
        --model vgg11 --defense FGR --lam 400 --preset paper       # the paper's schedule

Writes ``OUT/model.pt`` (checkpoint, see :mod:`fgr_defense.trainer`), ``OUT/log.json`` (metrics
per epoch) and ``OUT/train.log``. Exit status: 0 done, 1 training/data error (message on
stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint
from .data import DATASETS, dataset_info, get_dataset
from .distributed import init_distributed
from .models import MODELS, build_model
from .presets import (
    DEFENSES,
    SCHEDULES,
    build_defense,
    default_out_dir,
    get_schedule,
    resolve_defense_name,
)
from .regularizers import VARIANTS
from .trainer import NonFiniteLossError, Trainer

__all__ = ["build_parser", "main", "train_from_args"]

logger = logging.getLogger("fgr_defense")


def build_parser() -> argparse.ArgumentParser:
    """The ``fgr_defense`` argument parser (sub-command ``train``)."""
    parser = argparse.ArgumentParser(prog="python -m fgr_defense",
                                     description="Train classifiers with the paper's defenses.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model with one defense",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--dataset", default="mnist5k", choices=sorted(DATASETS))
    t.add_argument("--model", default="smallcnn", choices=sorted(MODELS))
    t.add_argument("--defense", default="Standard", help=f"one of {', '.join(DEFENSES)}")
    t.add_argument("--lam", type=float, default=None,
                   help="the paper's lambda (authors' convention), converted to --weight")
    t.add_argument("--lam-batch-size", type=int, default=256, help="the batch size --lam refers to")
    t.add_argument("--weight", type=float, default=None, help="per-example penalty weight (our convention)")
    t.add_argument("--sigma", type=float, default=None,
                   help="FGR+RS random-start std in pixels (default: the paper's 0.01 normalized)")
    t.add_argument("--variant", default="paper", choices=VARIANTS, help="FGR+RS: eq. (16) or the authors' code")
    t.add_argument("--eps", type=float, default=None, help="L-inf budget of adversarial training")
    t.add_argument("--preset", default="fast", choices=SCHEDULES, help="training schedule")
    t.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    t.add_argument("--batch-size", type=int, default=None, help="override the preset's global batch size")
    t.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    t.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm")
    t.add_argument("--data-root", default=None, help="torchvision data folder (mnist, cifar10, cifar100)")
    t.add_argument("--download", action="store_true", help="download a missing dataset into --data-root")
    t.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    t.add_argument("--val-limit", type=int, default=None, help="use only the first N test images")
    t.add_argument("--no-val", action="store_true", help="skip the per-epoch test-set evaluation")
    t.add_argument("--no-augment", action="store_true", help="disable random crop/flip")
    t.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    t.add_argument("--out", default=None,
                   help="output folder (default: results/train/<dataset>-<model>-<defense>[-lam<lam>])")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _check_positive(value: Any, name: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")


def _config_of(args: argparse.Namespace, defense: str) -> dict[str, Any]:
    keys = ("dataset", "model", "lam", "lam_batch_size", "weight", "sigma", "variant", "eps", "preset",
            "batch_size", "lr", "grad_clip", "limit", "no_augment", "seed")
    cfg = {k: getattr(args, k) for k in keys}
    cfg["defense"] = defense
    return cfg


def train_from_args(args: argparse.Namespace) -> Path:
    """Run ``train`` with parsed arguments; returns the checkpoint path (``OUT/model.pt``)."""
    defense_name = resolve_defense_name(args.defense)
    for name in ("epochs", "batch_size", "limit", "checkpoint_every"):
        _check_positive(getattr(args, name), "--" + name.replace("_", "-"))
    info = dataset_info(args.dataset)
    out = Path(args.out) if args.out else default_out_dir(args.dataset, args.model, defense_name, args.lam,
                                                          weight=args.weight)
    ckpt = out / "model.pt"
    config = _config_of(args, defense_name)
    if args.resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {str(ckpt)!r}; start the run without --resume")
        stored = load_checkpoint(ckpt).get("meta", {}).get("config", {})
        diff = {k: (stored.get(k), v) for k, v in config.items() if k in stored and stored.get(k) != v}
        if diff:
            raise ValueError(f"--resume: the run in {str(out)!r} was started with different settings "
                             f"(stored, given): {diff}")
    elif ckpt.exists():
        raise FileExistsError(f"--out: {str(out)!r} already holds a checkpoint; pass --resume to continue it "
                              "or choose another --out")

    ctx = init_distributed()
    world = ctx.world_size if ctx is not None else 1
    schedule = get_schedule(args.preset, args.dataset)
    epochs = args.epochs if args.epochs is not None else schedule.epochs
    global_batch = args.batch_size if args.batch_size is not None else schedule.batch_size
    if global_batch % world:
        raise ValueError(f"--batch-size: the global batch {global_batch} must be divisible by the "
                         f"{world} processes")
    if ctx is None or ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)

    torch.manual_seed(args.seed)  # model initialization (DDP then broadcasts rank 0's weights)
    model = build_model(args.model, info["channels"], info["num_classes"], info["size"])
    arch = {"name": args.model, "in_channels": info["channels"], "num_classes": info["num_classes"],
            "size": info["size"]}
    defense = build_defense(defense_name, model, args.dataset, lam=args.lam, weight=args.weight,
                            lam_batch_size=args.lam_batch_size, sigma=args.sigma, variant=args.variant,
                            eps=args.eps)
    if args.lr is not None:
        schedule = type(schedule)(**{**schedule.__dict__, "lr": args.lr})
    optimizer, scheduler = schedule.build(model.parameters())

    train_set = get_dataset(args.dataset, train=True, root=args.data_root, download=args.download,
                            augment=not args.no_augment, limit=args.limit)
    train_loader = DataLoader(train_set, batch_size=global_batch // world, shuffle=True,
                              num_workers=args.workers)
    val_loader = None
    if not args.no_val:
        val_set = get_dataset(args.dataset, train=False, root=args.data_root, download=args.download,
                              limit=args.val_limit)
        val_loader = DataLoader(val_set, batch_size=512, shuffle=False, num_workers=args.workers)

    meta = {"dataset": args.dataset, "model": args.model, "defense": defense_name,
            "defense_config": defense.config, "schedule": {**schedule.to_dict(), "epochs": epochs,
                                                           "batch_size": global_batch},
            "config": config, "world_size": world, "trainer": "fgr_defense.Trainer"}
    kwargs: dict[str, Any] = dict(
        regularizer=defense.regularizer, adversary=defense.adversary, scheduler=scheduler,
        device=args.device, grad_clip=args.grad_clip, seed=args.seed, progress=not args.no_progress,
        out_dir=out, checkpoint_every=args.checkpoint_every, arch=arch, meta=meta,
    )
    if args.resume:
        trainer = Trainer.resume(ckpt, model, optimizer, **kwargs)
    else:
        trainer = Trainer(model, optimizer, **kwargs)
    if trainer.is_main:
        logger.info("training %s / %s / %s: %s; schedule %s, %d epochs, global batch %d -> %s",
                    args.dataset, args.model, defense_name, defense.config, schedule.name, epochs,
                    global_batch, ckpt)
    trainer.fit(train_loader, epochs, val_loader)
    if trainer.epoch == 0 and trainer.is_main:
        trainer.save(ckpt)  # epochs == 0: still leave a (untrained) checkpoint behind
    return ckpt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    owned_group = not (dist.is_available() and dist.is_initialized())
    try:
        if args.command == "train":
            path = train_from_args(args)
            if not dist.is_initialized() or dist.get_rank() == 0:
                logger.info("done: %s", path)
    except (NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError, TypeError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    finally:
        if owned_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the one torchrun's environment made us create
    return 0
