"""The epoch loop of :class:`~fgr_defense.trainer.Trainer`: seeding, resume mid-epoch, Ctrl-C, records.

Functions over explicit arguments (the run's :class:`~fgr_defense.trainer_io.TrainState`, the
step to take, callbacks), which :meth:`~fgr_defense.trainer.Trainer.fit` calls.

Convention:
    **Batch norm.** A training batch of a single example cannot be normalized by batch norm
    in train mode (PyTorch raises); with a batch-norm model such a batch (the last one of an
    epoch when the dataset size is ``1 (mod batch_size)``) is dropped and logged once per
    epoch.

    **Determinism and resume.** Before creating each epoch's iterator and before fetching
    each batch, the trainer seeds ``torch``, ``random`` and ``numpy`` with
    :func:`~fgr_defense.naming.derive_seed` ``(seed, epoch, step + 1, rank)`` (``step = -1``
    before the iterator). A resumed run re-creates the epoch's iterator, skips (fetches and
    drops) the batches already done and continues with the same random numbers, so an
    interrupted-and-resumed run takes the same optimizer steps as an uninterrupted one (bit
    for bit on CPU with a deterministic loader). ``fit(loader, epochs)`` trains up to
    ``epochs`` epochs in total.

    **Ctrl-C.** During :meth:`~fgr_defense.trainer.Trainer.fit` (in the main thread of a single process,
    with ``out_dir`` set and Python's default SIGINT handler in place) the first Ctrl-C
    (SIGINT) lets the running optimizer step finish, writes ``model.pt`` there (a consistent
    state: resuming from it takes the same steps as an uninterrupted run) and raises
    :class:`~fgr_defense.trainer_io.TrainingInterrupted`; a second Ctrl-C interrupts at once
    (the last checkpoint written stays). Under ``torchrun`` a Ctrl-C interrupts at once (the
    ranks could not agree on a step without a collective per step); the last epoch's
    checkpoint stays.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .naming import derive_seed
from .trainer_io import ACCUM_KEYS, TrainingInterrupted, TrainState

__all__ = ["StopRequest", "epoch_record", "interrupted", "run_epoch", "seed_all", "seed_step", "split_batch"]

logger = logging.getLogger("fgr_defense.trainer")


def seed_all(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (the trainer's per-step seeding)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_step(seed: int, epoch: int, step: int, rank: int = 0) -> None:
    """Seed everything for batch ``step`` of ``epoch`` (``step = -1``: before the epoch's iterator)."""
    seed_all(derive_seed(seed, epoch, step + 1, rank))


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a loader's batch: a tuple/list or a dict with ``image``/``label``.

    Example:
        >>> split_batch({"image": 1, "label": 2})
        (1, 2)
    """
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "image" in batch and "label" in batch:
        return batch["image"], batch["label"]
    raise TypeError(
        f"batch: expected (images, labels) from the DataLoader, got {type(batch).__name__}"
    )


class StopRequest:
    """Within ``with StopRequest(enabled) as stop:``, the first Ctrl-C sets ``stop.requested`` (the
    loop stops after the running step, module docstring) and restores the default handler, so a
    second Ctrl-C stops at once. Disabled (or off the main thread, or under another SIGINT handler)
    it changes nothing.

    Example:
        >>> with StopRequest(False) as stop:
        ...     stop.requested
        False
    """

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._active = (enabled and threading.current_thread() is threading.main_thread()
                        and signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def __enter__(self) -> StopRequest:
        if self._active:
            signal.signal(signal.SIGINT, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def run_epoch(loader: Any, epoch: int, epochs: int, state: TrainState, *, step: Callable[[Tensor, Tensor], Tensor],
              after_step: Callable[[bool], None], rank: int = 0, batchnorm: bool = False, progress: bool = False,
              is_main: bool = True) -> None:
    """Train epoch ``epoch`` (0-based) from batch ``state.step_in_epoch``, summing into ``state.accum``.

    ``step(x, y)`` takes one optimizer step and returns its sums ``(loss * n, task * n, reg * n,
    correct, n)``; ``after_step(trained)`` runs after every batch (mid-epoch checkpoints, Ctrl-C).
    The batches already done are fetched and dropped with the same seeds (module docstring).

    Raises:
        ValueError: the loader is now shorter than the batches the state says are done.
    """
    seed_step(state.seed, epoch, -1, rank)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    try:
        total: int | None = len(loader)
    except TypeError:
        total = None
    it: Iterator[Any] = iter(loader)
    start = state.step_in_epoch
    for done in range(start):  # skip the batches already done, with the same seeds
        seed_step(state.seed, epoch, done, rank)
        try:
            next(it)
        except StopIteration:
            raise ValueError(
                f"train_loader: the checkpoint has {start} batches done in epoch {epoch + 1}, "
                f"but the loader now has only {done}; resume with the same data and batch size"
            ) from None
    bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
               disable=not (progress and is_main), leave=False, dynamic_ncols=True)
    acc = state.accum
    tick = time.perf_counter()
    try:
        k = start
        while True:
            seed_step(state.seed, epoch, k, rank)
            try:
                batch = next(it)
            except StopIteration:
                break
            x, y = split_batch(batch)
            trained = not (batchnorm and isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == 1)
            if trained:
                for key, value in zip(ACCUM_KEYS, step(x, y).tolist()):
                    acc[key] += value
            else:
                if not acc["dropped"] and is_main:
                    logger.warning("epoch %d: dropped a training batch of 1 example (batch norm cannot "
                                   "normalize a single example in train mode)", epoch + 1)
                acc["dropped"] += 1
            now = time.perf_counter()
            acc["time_s"] += now - tick
            tick = now
            state.step_in_epoch = k = k + 1
            count = max(acc["count"], 1.0)
            bar.update(1)
            bar.set_postfix(loss=f"{acc['loss'] / count:.4f}", acc=f"{acc['correct'] / count:.3f}", refresh=False)
            after_step(trained)
    finally:
        bar.close()


def epoch_record(state: TrainState, epoch: int, lr: float) -> dict[str, Any]:
    """The log record of epoch ``epoch`` (0-based) from ``state.accum`` (module docstring of trainer_io).

    Raises:
        ValueError: the epoch trained on no batch.
    """
    acc = state.accum
    count = acc["count"]
    if count == 0:
        raise ValueError(f"train_loader: expected at least one batch to train on in epoch {epoch + 1}, got "
                         f"none ({int(acc['dropped'])} batch(es) of 1 example dropped for batch norm)")
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "global_step": state.global_step,
        "steps": state.step_in_epoch - int(acc["dropped"]),
        "lr": float(lr),
        "train_loss": acc["loss"] / count,
        "train_task_loss": acc["task_loss"] / count,
        "train_reg_loss": acc["reg_loss"] / count,
        "train_acc": acc["correct"] / count,
        "time_s": acc["time_s"],
    }
    if acc["dropped"]:
        record["dropped_batches"] = int(acc["dropped"])
    return record


def interrupted(state: TrainState, checkpoint: Path | None) -> TrainingInterrupted:
    """The :class:`~fgr_defense.trainer_io.TrainingInterrupted` of a stop at the state's step (logged)."""
    s = state
    where = f"epoch {s.epoch + 1}, step {s.step_in_epoch}" if s.step_in_epoch else f"the end of epoch {s.epoch}"
    logger.info("interrupted at %s (global step %d); checkpoint %s", where, s.global_step, checkpoint)
    return TrainingInterrupted(f"interrupted at {where}: checkpoint at {checkpoint}", checkpoint, s.epoch,
                               s.step_in_epoch)
