"""The epoch loop of :class:`~fgr_defense.trainer.Trainer`: ``fit``, seeding, resume mid-epoch.

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

    **Ctrl-C.** During :meth:`~EpochLoopMixin.fit` (in the main thread of a single process,
    with ``out_dir`` set and Python's default SIGINT handler in place) the first Ctrl-C
    (SIGINT) lets the running optimizer step finish, writes ``model.pt`` there (a consistent
    state: resuming from it takes the same steps as an uninterrupted run) and raises
    :class:`~fgr_defense.trainer_io.TrainingInterrupted`; a second Ctrl-C interrupts at once
    (the last checkpoint written stays). Under ``torchrun`` a Ctrl-C interrupts at once (the
    ranks could not agree on a step without a collective per step); the last epoch's
    checkpoint stays.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from torchattacks_deform.validation import check_number

from .distributed import distributed_loader
from .naming import derive_seed
from .trainer_io import ACCUM_KEYS, CheckpointMixin, TrainingInterrupted

__all__ = ["EpochLoopMixin", "split_batch"]

logger = logging.getLogger("fgr_defense.trainer")


def seed_all(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (the trainer's per-step seeding)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class EpochLoopMixin(CheckpointMixin):
    """``fit`` and the epoch loop (the Trainer provides ``train_step`` and ``evaluate``)."""

    progress: bool
    checkpoint_every: int | None
    scheduler_interval: str
    _batchnorm: bool
    _last_stats: Tensor | None
    _interrupt_requested: bool = False

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def evaluate(self, loader: Any, attack: Any = None) -> dict[str, float]:
        raise NotImplementedError

    def _seed_step(self, epoch: int, step: int) -> None:
        rank = self.ctx.rank if self.ctx is not None else 0
        seed_all(derive_seed(self.seed, epoch, step + 1, rank))

    def fit(self, train_loader: Any, epochs: int, val_loader: Any | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete in total; returns the history.

        Continues a resumed run where it stopped (skipping the batches already done).
        Writes ``out_dir/log.json`` at the start (from the history, repairing a log that a
        kill left behind) and ``model.pt`` + ``log.json`` after every epoch (``model.pt``
        also every ``checkpoint_every`` steps; ``best.pt`` with ``keep_best``).

        Raises:
            NonFiniteLossError: NaN/inf loss, gradient or weights (the message says where
                the last good checkpoint is, or that none was written).
            TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``; ``model.pt`` is written after
                the running step, see the module docstring).
            ValueError: ``epochs`` is not a non-negative int, the loader changed length,
                or ``keep_best`` without ``val_loader``.
        """
        check_number(epochs, "epochs", integer=True, minimum=0)
        if self.keep_best and val_loader is None:
            raise ValueError("val_loader: keep_best=True selects best.pt by validation accuracy; pass a "
                             "val_loader (or keep_best=False)")
        self._target_epochs = epochs
        if self.ctx is not None:
            if isinstance(train_loader, DataLoader):
                train_loader = distributed_loader(train_loader, self.ctx, seed=self.seed)
            else:
                warnings.warn("train_loader is not a torch DataLoader: it is not sharded, every process "
                              "trains on all of its batches", stacklevel=2)
        self._reconcile_best()
        self._write_log()  # the checkpoint's history is the truth (a kill may have left the log behind)
        if self.epoch >= epochs:
            logger.info("already trained %d of %d epochs; nothing to do", self.epoch, epochs)
            return self.history
        with self._sigint_stops_between_steps():
            for epoch in range(self.epoch, epochs):
                self._run_epoch(train_loader, epoch, epochs)
                record = self._finish_epoch(epoch, val_loader)
                if self.is_main:
                    logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in record.items() if k != "epoch"))
                if self._interrupt_requested and epoch + 1 < epochs:
                    self._stop_interrupted(checkpoint_written=True)
        return self.history

    @contextlib.contextmanager
    def _sigint_stops_between_steps(self) -> Iterator[None]:
        """The first Ctrl-C asks for a stop after the running step (module docstring); the second is immediate."""
        self._interrupt_requested = False
        usable = (self.out_dir is not None and self.ctx is None
                  and threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if not usable:
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self._interrupt_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

        signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _stop_interrupted(self, checkpoint_written: bool = False) -> None:
        """Write ``model.pt`` at this step boundary (unless just written) and raise :class:`TrainingInterrupted`."""
        if not checkpoint_written:
            self._write_checkpoint()
        path = self.folder.model if self.folder is not None else None
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch}" if self.step_in_epoch else \
            f"the end of epoch {self.epoch}"
        logger.info("interrupted at %s (global step %d); checkpoint %s", where, self.global_step, path)
        raise TrainingInterrupted(f"interrupted at {where}: checkpoint at {path}", path, self.epoch,
                                  self.step_in_epoch)

    def _run_epoch(self, loader: Any, epoch: int, epochs: int) -> None:
        self._seed_step(epoch, -1)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
        try:
            total: int | None = len(loader)
        except TypeError:
            total = None
        it: Iterator[Any] = iter(loader)
        start = self.step_in_epoch
        for done in range(start):  # skip the batches already done, with the same seeds
            self._seed_step(epoch, done)
            try:
                next(it)
            except StopIteration:
                raise ValueError(
                    f"train_loader: the checkpoint has {start} batches done in epoch {epoch + 1}, "
                    f"but the loader now has only {done}; resume with the same data and batch size"
                ) from None
        bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not (self.progress and self.is_main), leave=False, dynamic_ncols=True)
        tick = time.perf_counter()
        try:
            step = start
            while True:
                self._seed_step(epoch, step)
                try:
                    batch = next(it)
                except StopIteration:
                    break
                x, y = split_batch(batch)
                trained = not (self._batchnorm and isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == 1)
                if trained:
                    self.train_step(x, y)
                    assert self._last_stats is not None
                    for key, value in zip(ACCUM_KEYS, self._last_stats.tolist()):
                        self._accum[key] += value
                else:
                    if not self._accum["dropped"] and self.is_main:
                        logger.warning("epoch %d: dropped a training batch of 1 example (batch norm cannot "
                                       "normalize a single example in train mode)", epoch + 1)
                    self._accum["dropped"] += 1
                now = time.perf_counter()
                self._accum["time_s"] += now - tick
                tick = now
                self.step_in_epoch = step = step + 1
                count = max(self._accum["count"], 1.0)
                bar.update(1)
                bar.set_postfix(loss=f"{self._accum['loss'] / count:.4f}",
                                acc=f"{self._accum['correct'] / count:.3f}", refresh=False)
                if trained and self.checkpoint_every is not None and self.global_step % self.checkpoint_every == 0:
                    self._write_checkpoint()
                if self._interrupt_requested:
                    self._stop_interrupted()
        finally:
            bar.close()

    def _finish_epoch(self, epoch: int, val_loader: Any | None) -> dict[str, Any]:
        acc = self._accum
        count = acc["count"]
        if count == 0:
            raise ValueError(f"train_loader: expected at least one batch to train on in epoch {epoch + 1}, got "
                             f"none ({int(acc['dropped'])} batch(es) of 1 example dropped for batch norm)")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_step": self.global_step,
            "steps": self.step_in_epoch - int(acc["dropped"]),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": acc["loss"] / count,
            "train_task_loss": acc["task_loss"] / count,
            "train_reg_loss": acc["reg_loss"] / count,
            "train_acc": acc["correct"] / count,
            "time_s": acc["time_s"],
        }
        if acc["dropped"]:
            record["dropped_batches"] = int(acc["dropped"])
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        if val_loader is not None:
            val = self.evaluate(val_loader)
            record.update({"val_loss": val["loss"], "val_acc": val["acc"]})
        self.history.append(record)
        self.epoch = epoch + 1
        self.step_in_epoch = 0
        self._accum = dict.fromkeys(ACCUM_KEYS, 0.0)
        staged = self._stage_best(record)  # best.pt: pending weights, then model.pt, then commit
        self._write_checkpoint()
        if staged:
            self._commit_best()
        self._write_log()
        return record
