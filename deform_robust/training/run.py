"""The work behind :func:`fgr_defense.spec.train_from_spec`: what to do with ``out_dir``, and the training.

See :mod:`fgr_defense.spec` for the modes and the identity rule.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .spec import TrainResult, TrainSpec, identity_differences

__all__ = ["finish_cached", "plan", "read_state", "train_new_or_resume"]

logger = logging.getLogger("fgr_defense.spec")


def read_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from .checkpoint import load_checkpoint

    obj = load_checkpoint(ckpt)
    return dict(obj.get("meta", {})), dict(obj.get("trainer") or {})


def plan(spec: TrainSpec, out: Path, mode: str) -> str:
    """What to do: ``"new"``, ``"wipe"`` (train from scratch), ``"resume"`` or ``"done"`` (see :mod:`fgr_defense.spec`)."""
    from .trainer_io import BEST_NAME

    ckpt, best = out / "model.pt", out / BEST_NAME
    target = spec.training_schedule().epochs
    if mode == "new":
        if ckpt.exists() or best.exists():
            raise FileExistsError(f"out_dir: {str(out)!r} already holds a checkpoint; pass --resume "
                                  "(mode='resume') to continue it, or choose another --out (out_dir)")
        return "new"
    if not ckpt.is_file():
        if mode == "resume":
            raise FileNotFoundError(f"resume: no checkpoint at {str(ckpt)!r}; start the run without --resume "
                                    "(mode='new')")
        return "wipe"
    try:
        meta, state = read_state(ckpt)
    except ValueError as err:
        if mode == "resume":
            raise
        logger.warning("out_dir %s: %s; training from scratch", out, err)
        return "wipe"
    stored = meta.get("identity")
    diffs = (identity_differences(stored, spec.identity()) if isinstance(stored, Mapping)
             else ["identity: not stored (the checkpoint was not written by train_from_spec)"])
    epochs = int(state.get("epoch", 0))
    done = bool(meta.get("complete")) and epochs == target and int(state.get("step_in_epoch", 0)) == 0
    if mode == "resume":
        if diffs:
            raise ValueError(f"resume: the run in {str(out)!r} was started with different settings (stored vs "
                             f"given): {'; '.join(diffs)}. Pass the original settings, or start a new run in "
                             "another --out")
        if epochs > target:
            raise ValueError(f"epochs: the run in {str(out)!r} already has {epochs} epochs, more than the "
                             f"{target} given")
        if done and spec.keep_best and not best.is_file() and not (out / ".best.pt.pending").is_file():
            raise FileNotFoundError(f"resume: the run in {str(out)!r} is complete but {BEST_NAME} is missing; "
                                    "train it again in another --out")
        return "done" if done else "resume"
    reason = ("; ".join(diffs) if diffs else
              f"it has {epochs} epochs, more than the {target} asked for" if epochs > target else
              f"{BEST_NAME} is missing" if done and spec.keep_best and not best.is_file()
              and not (out / ".best.pt.pending").is_file() else "")
    if reason:
        logger.warning("out_dir %s holds a run with other settings (%s); training from scratch", out, reason)
        return "wipe"
    return "done" if done else "resume"


def _wipe(out: Path) -> None:
    for name in ("model.pt", "best.pt", ".best.pt.pending", "log.json"):
        (out / name).unlink(missing_ok=True)


def _result(spec: TrainSpec, out: Path, history: list[dict[str, Any]], t0: float, cached: bool) -> TrainResult:
    model_path = out / "model.pt"
    return TrainResult(checkpoint=out / "best.pt" if spec.keep_best else model_path, model_path=model_path,
                       out_dir=out, history=[dict(r) for r in history], wall_s=time.perf_counter() - t0,
                       train_s=float(sum(r.get("time_s", 0.0) for r in history)), cached=cached, spec=spec)


def finish_cached(spec: TrainSpec, out: Path, t0: float) -> TrainResult:
    from .distributed import launched_distributed
    from .trainer_io import reconcile_best, repair_log

    meta, state = read_state(out / "model.pt")
    main = not launched_distributed() or int(os.environ.get("RANK", "0")) == 0
    if main:
        reconcile_best(out, state.get("best"))
        repair_log(out)
    logger.info("%s: complete (%d epochs); nothing to do", out, int(state.get("epoch", 0)))
    return _result(spec, out, list(state.get("history", [])), t0, cached=True)


def train_new_or_resume(spec: TrainSpec, out: Path, device: Any, *, resume: bool, wipe: bool, t0: float) -> TrainResult:
    import torch
    from torch.utils.data import DataLoader

    from .data import dataset_info, get_dataset
    from .distributed import barrier, init_distributed
    from .models import build_model
    from .presets import build_defense
    from .trainer import Trainer

    ctx = init_distributed()
    world = ctx.world_size if ctx is not None else 1
    main = ctx is None or ctx.is_main
    schedule = spec.training_schedule()
    if schedule.batch_size % world:
        raise ValueError(f"batch_size: the global batch {schedule.batch_size} must be divisible by the "
                         f"{world} processes")
    if main:
        if wipe:
            _wipe(out)
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    handler: logging.Handler | None = None
    pkg_logger = logging.getLogger("fgr_defense")
    if main:
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg_logger.addHandler(handler)
    try:
        info = dataset_info(spec.dataset)
        arch = {"name": spec.model, "in_channels": info["channels"], "num_classes": info["num_classes"],
                "size": info["size"]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)  # initialization (DDP then broadcasts rank 0's weights)
            model = build_model(spec.model, info["channels"], info["num_classes"], info["size"])
        defense = build_defense(spec.defense, model, spec.dataset, **spec.defense_kwargs())
        optimizer, scheduler = schedule.build(model.parameters())
        train_set = get_dataset(spec.dataset, train=True, root=spec.data_root, download=spec.download,
                                augment=spec.augment, limit=spec.limit, pipeline=spec.pipeline)
        pin = torch.device(device).type == "cuda"
        loader = DataLoader(train_set, batch_size=schedule.batch_size // world, shuffle=True,
                            num_workers=spec.workers, pin_memory=pin)
        val_loader = None
        if spec.validation:
            val_set = get_dataset(spec.dataset, train=False, root=spec.data_root, download=spec.download,
                                  limit=spec.val_limit, pipeline=spec.pipeline)
            val_loader = DataLoader(val_set, batch_size=spec.val_batch_size, shuffle=False,
                                    num_workers=spec.workers, pin_memory=pin)
        meta = {"dataset": spec.dataset, "model": spec.model, "defense": spec.defense,
                "defense_config": defense.config, "schedule": schedule.to_dict(), "spec": spec.to_dict(),
                "identity": spec.identity(), "world_size": world, "trainer": "fgr_defense.train_from_spec"}
        kwargs: dict[str, Any] = dict(
            **defense.trainer_kwargs(), scheduler=scheduler, device=device, grad_clip=spec.grad_clip,
            seed=spec.seed, progress=spec.progress, out_dir=out, checkpoint_every=spec.checkpoint_every,
            arch=arch, meta=meta, keep_best=spec.keep_best,
        )
        if resume:
            trainer = Trainer.resume(out / "model.pt", model, optimizer, **kwargs)
        else:
            trainer = Trainer(model, optimizer, **kwargs)
        if trainer.is_main:
            logger.info("training %s / %s / %s: %s; schedule %s, %d epochs, global batch %d -> %s",
                        spec.dataset, spec.model, spec.defense, defense.config, schedule.name,
                        schedule.epochs, schedule.batch_size, out)
        history = trainer.fit(loader, schedule.epochs, val_loader)
    finally:
        if handler is not None:
            pkg_logger.removeHandler(handler)
            handler.close()
    return _result(spec, out, history, t0, cached=False)
