"""Train one model from a :class:`~deform_robust.training.spec.TrainSpec`: the one code path of the
``train`` command, the experiment harness, the benchmarks and the tests.

``train_from_spec(spec, out_dir, mode=...)`` builds the data, model, defense and schedule that
``spec`` names, trains with :class:`~fgr_defense.trainer.Trainer` into ``out_dir`` and returns
a :class:`~deform_robust.training.spec.TrainResult` (the checkpoint to evaluate, the history, the time).

Convention:
    **Identity:** see :mod:`deform_robust.training.spec`.

    **Modes.** ``"new"`` refuses an ``out_dir`` that holds a checkpoint; ``"resume"``
    requires one with the same identity (each difference is named) and at most ``epochs``
    epochs; ``"auto"`` reuses a complete checkpoint of the same identity (``cached=True``),
    resumes an incomplete one, and retrains from scratch, with a logged warning, when the
    identity differs, the checkpoint is unreadable or has more epochs. A finished run
    always ends with a complete ``log.json`` (rewritten from the checkpoint's history).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fgr_defense.checkpoint import load_checkpoint
from fgr_defense.data import dataset_info, get_dataset
from fgr_defense.defenses import build_defense
from fgr_defense.device import resolve_device
from fgr_defense.distributed import barrier, init_distributed, launched_distributed
from fgr_defense.files import OutputLock, remove_stale_temporaries
from fgr_defense.models import build_model
from fgr_defense.run_folder import RunFolder
from fgr_defense.trainer import Trainer
from torchattacks_deform.validation import check_choice

from .spec import TrainResult, TrainSpec, identity_differences

__all__ = ["TRAIN_MODES", "finish_cached", "plan", "read_state", "train_from_spec", "train_new_or_resume"]

logger = logging.getLogger(__name__)

#: Modes of :func:`train_from_spec`.
TRAIN_MODES: tuple[str, ...] = ("new", "resume", "auto")


def read_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = load_checkpoint(ckpt)
    return dict(obj.get("meta", {})), dict(obj.get("trainer") or {})


def plan(spec: TrainSpec, out: Path, mode: str) -> str:
    """What to do: ``"new"``, ``"wipe"`` (train from scratch), ``"resume"`` or ``"done"`` (see the module docstring)."""
    folder = RunFolder(out)
    ckpt, best = folder.model, folder.best
    target = spec.training_schedule().epochs
    if mode == "new":
        if folder.has_checkpoint():
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
        if done and spec.keep_best and folder.best_missing():
            raise FileNotFoundError(f"resume: the run in {str(out)!r} is complete but {best.name} is missing; "
                                    "train it again in another --out")
        return "done" if done else "resume"
    reason = ("; ".join(diffs) if diffs else
              f"it has {epochs} epochs, more than the {target} asked for" if epochs > target else
              f"{best.name} is missing" if done and spec.keep_best and folder.best_missing() else "")
    if reason:
        logger.warning("out_dir %s holds a run with other settings (%s); training from scratch", out, reason)
        return "wipe"
    return "done" if done else "resume"


def _result(spec: TrainSpec, out: Path, history: list[dict[str, Any]], t0: float, cached: bool) -> TrainResult:
    folder = RunFolder(out)
    model_path = folder.model
    return TrainResult(checkpoint=folder.best if spec.keep_best else model_path, model_path=model_path,
                       out_dir=out, history=[dict(r) for r in history], wall_s=time.perf_counter() - t0,
                       train_s=float(sum(r.get("time_s", 0.0) for r in history)), cached=cached, spec=spec)


def finish_cached(spec: TrainSpec, out: Path, t0: float) -> TrainResult:
    folder = RunFolder(out)
    meta, state = read_state(folder.model)
    if _main_process():
        folder.reconcile_best(state.get("best"))
        folder.repair_log()
    logger.info("%s: complete (%d epochs); nothing to do", out, int(state.get("epoch", 0)))
    return _result(spec, out, list(state.get("history", [])), t0, cached=True)


def train_new_or_resume(spec: TrainSpec, out: Path, device: Any, *, resume: bool, wipe: bool, t0: float) -> TrainResult:
    ctx = init_distributed()
    world = ctx.world_size if ctx is not None else 1
    main = ctx is None or ctx.is_main
    schedule = spec.training_schedule()
    folder = RunFolder(out)
    if schedule.batch_size % world:
        raise ValueError(f"batch_size: the global batch {schedule.batch_size} must be divisible by the "
                         f"{world} processes")
    if main:
        if wipe:
            folder.wipe()
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    handler: logging.Handler | None = None
    loggers = (logging.getLogger("fgr_defense"), logger)  # the Trainer's records and this run's go to train.log
    if main:
        handler = logging.FileHandler(folder.train_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for each in loggers:
            each.addHandler(handler)
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
                "identity": spec.identity(), "world_size": world, "trainer": "deform_robust.train_from_spec"}
        kwargs: dict[str, Any] = dict(
            **defense.trainer_kwargs(), scheduler=scheduler, device=device, grad_clip=spec.grad_clip,
            seed=spec.seed, progress=spec.progress, out_dir=out, checkpoint_every=spec.checkpoint_every,
            arch=arch, meta=meta, keep_best=spec.keep_best,
        )
        if resume:
            trainer = Trainer.resume(folder.model, model, optimizer, **kwargs)
        else:
            trainer = Trainer(model, optimizer, **kwargs)
        if trainer.is_main:
            logger.info("training %s / %s / %s: %s; schedule %s, %d epochs, global batch %d -> %s",
                        spec.dataset, spec.model, spec.defense, defense.config, schedule.name,
                        schedule.epochs, schedule.batch_size, out)
        history = trainer.fit(loader, schedule.epochs, val_loader)
    finally:
        if handler is not None:
            for each in loggers:
                each.removeHandler(handler)
            handler.close()
    return _result(spec, out, history, t0, cached=False)


def train_from_spec(spec: TrainSpec, out_dir: str | Path, *, mode: str = "new") -> TrainResult:
    """Train (or continue, or reuse) the run ``spec`` describes in ``out_dir``.

    Args:
        spec: the run.
        out_dir: its folder: ``model.pt``, ``log.json``, ``train.log`` (and ``best.pt``).
        mode: ``"new"``, ``"resume"`` or ``"auto"`` (module docstring).

    Returns:
        :class:`~deform_robust.training.spec.TrainResult`.

    Raises:
        FileExistsError: ``mode="new"`` and ``out_dir`` holds a checkpoint.
        OutputLockedError: another process is training into ``out_dir`` (its lock, see
            :class:`~fgr_defense.files.OutputLock`).
        FileNotFoundError: ``mode="resume"`` without a checkpoint; a missing dataset.
        ValueError: ``mode="resume"`` with other identity settings (each difference is named),
            an unusable device, a batch size the processes cannot share, bad data.
        NonFiniteLossError: training diverged (the last good checkpoint is kept).

    Example:
        >>> import tempfile
        >>> from deform_robust import TrainSpec
        >>> spec = TrainSpec(epochs=1, limit=32, val_limit=32, batch_size=16, device="cpu", progress=False)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = train_from_spec(spec, out)
        ...     again = train_from_spec(spec, out, mode="auto")
        >>> result.checkpoint.name, len(result.history), result.cached, again.cached
        ('model.pt', 1, False, True)
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"spec: expected a TrainSpec, got {type(spec).__name__}")
    check_choice(mode, "mode", TRAIN_MODES)
    t0 = time.perf_counter()
    device = resolve_device(spec.device)  # before any work
    out = Path(out_dir)
    lock = OutputLock(out).acquire() if _main_process() else None
    try:
        if lock is not None:  # nobody else writes here now: leftovers of a killed run go
            remove_stale_temporaries(out)
        action = plan(spec, out, mode)
        if action == "done":
            return finish_cached(spec, out, t0)
        return train_new_or_resume(spec, out, device, resume=action == "resume", wipe=action == "wipe", t0=t0)
    finally:
        if lock is not None:
            lock.release()


def _main_process() -> bool:
    """True outside torchrun and on its rank 0 (the process that holds the output folder's lock)."""
    return not launched_distributed() or int(os.environ.get("RANK", "0")) == 0
