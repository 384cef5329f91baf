"""What the :class:`~fgr_defense.trainer.Trainer` writes and reads: checkpoints, logs, ``best.pt``.

The code is a mixin of the Trainer, plus :class:`NonFiniteLossError` and :class:`TrainingInterrupted`.

Convention:
    **Checkpoints and logs** (``out_dir``):

    - ``out_dir/model.pt``: :func:`fgr_defense.checkpoint.save_model` format (loadable with
      ``load_model`` / ``torch.load(weights_only=True)``) plus ``"trainer"``: optimizer and
      scheduler state, ``epoch`` (completed epochs), ``step_in_epoch``, ``global_step``
      (optimizer steps), ``seed``, ``history`` (one record per completed epoch) and the
      running sums of the current epoch. ``meta`` holds ``epoch``, ``global_step``,
      ``complete`` and the last epoch's metrics plus whatever the caller put there. Written
      atomically (temporary file + rename) at the end of every epoch and every
      ``checkpoint_every`` optimizer steps; a crash leaves the previous file intact. Never
      written with NaN/inf weights (:class:`NonFiniteLossError` instead).
    - ``out_dir/log.json``: ``{"format": "deform-robust-log/1", "meta": {...},
      "epochs": [record, ...]}``, rewritten atomically from the checkpoint's history after
      every epoch and at the start of every :meth:`Trainer.fit` (so a kill between the two
      writes is repaired, even when there is nothing left to train), so a resumed run
      neither loses nor duplicates epochs. A record has ``epoch`` (1-based),
      ``global_step``, ``steps`` (optimizer steps), ``lr``, ``train_loss``,
      ``train_task_loss``, ``train_reg_loss``, ``train_acc``, ``time_s``, with a validation
      loader ``val_loss``, ``val_acc``, and ``dropped_batches`` when batches were dropped.
    - ``out_dir/best.pt`` (``keep_best=True``): the checkpoint of the epoch with the best
      ``val_acc`` so far (strictly better than every earlier epoch, as the authors'
      ``if best_val_acc < val_acc``; the first validated epoch always counts), same format,
      ``meta["best"] = {"epoch", "global_step", "val_acc"}``; the choice is part of the
      trainer state, so it survives resume (below).

    **Consistency.**

    - A checkpoint is only written when every floating-point weight and buffer is finite,
      so a kept checkpoint is always usable (:meth:`CheckpointMixin.save`).
    - ``best.pt`` (``keep_best=True``) is committed in two phases: the weights go to
      ``.best.pt.pending`` first, then ``model.pt`` records the new best, then the pending
      file is renamed to ``best.pt``. A crash between the steps is repaired at the next
      :meth:`~fgr_defense.trainer.Trainer.fit`: the pending file is committed when
      ``model.pt`` knows it, else dropped (its epoch is trained again). So ``best.pt``
      always holds the epoch that ``model.pt``'s trainer state names as best.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_model
from .run_folder import RunFolder

__all__ = ["CheckpointMixin", "NonFiniteLossError", "TrainingInterrupted"]

logger = logging.getLogger("fgr_defense.trainer")

_STATE_VERSION = 1
_STATE_KEYS = ("version", "epoch", "step_in_epoch", "global_step", "seed", "history", "accum", "optimizer")
ACCUM_KEYS = ("loss", "task_loss", "reg_loss", "correct", "count", "time_s", "dropped")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN/inf, or the weights did; the step was not taken and training stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :meth:`~fgr_defense.trainer.Trainer.fit` between two optimizer steps.

    A ``KeyboardInterrupt``, so code that does not know it still stops. ``checkpoint`` is the
    resumable ``model.pt`` written at that step (None without ``out_dir``); ``epoch`` and
    ``step_in_epoch`` are the trainer's counters there.
    """

    def __init__(self, message: str, checkpoint: Path | None, epoch: int, step_in_epoch: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch


def check_trainer_state(state: Any, path: str | Path) -> None:
    """Raise ``ValueError`` naming what is missing unless ``state`` is a Trainer state."""
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r}: has no trainer state (not written by Trainer.save); "
                         "load it with load_model() instead of resuming from it")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: the trainer state is missing keys {missing}")
    if state["version"] != _STATE_VERSION:
        raise ValueError(f"checkpoint {str(path)!r}: expected a Trainer state of version {_STATE_VERSION}, "
                         f"got {state['version']!r}")


class CheckpointMixin:
    """State, checkpoints, ``log.json`` and ``best.pt`` of :class:`~fgr_defense.trainer.Trainer`."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ctx: Any
    out_dir: Path | None
    folder: RunFolder | None  # the out_dir's files (None without out_dir)
    arch: dict[str, Any] | None
    meta: dict[str, Any]
    regularizer: Any
    adversary: Any
    epoch: int
    step_in_epoch: int
    global_step: int
    seed: int
    history: list[dict[str, Any]]
    keep_best: bool
    best: dict[str, Any] | None
    _accum: dict[str, float]
    _target_epochs: int | None
    _last_checkpoint: dict[str, Any] | None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (or without distributed training)."""
        return self.ctx is None or self.ctx.is_main

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (weights_only-loadable): optimizer, scheduler, counters, history."""
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "seed": self.seed,
            "world_size": self.ctx.world_size if self.ctx is not None else 1,
            "history": [dict(r) for r in self.history],
            "accum": dict(self._accum),
            "best": dict(self.best) if self.best is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the weights are restored by :meth:`load`)."""
        check_trainer_state(state, "state")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.seed = int(state["seed"])
        self.history = [dict(r) for r in state["history"]]
        self._accum = {k: float(state["accum"].get(k, 0.0)) for k in ACCUM_KEYS}
        self.best = dict(state["best"]) if state.get("best") is not None else None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if state.get("scheduler") is None:
                warnings.warn("scheduler: the checkpoint has no scheduler state; the scheduler starts fresh",
                              stacklevel=2)
            else:
                self.scheduler.load_state_dict(state["scheduler"])
        world = self.ctx.world_size if self.ctx is not None else 1
        if int(state.get("world_size", 1)) != world:
            warnings.warn(f"resuming a run of world size {state.get('world_size')} on {world} process(es): "
                          "the remaining batches of the current epoch will differ", stacklevel=2)

    def _checkpoint_meta(self) -> dict[str, Any]:
        meta = dict(self.meta)
        cfg = getattr(self.regularizer, "config", None)
        meta.update({
            "epoch": self.epoch,
            "global_step": self.global_step,
            "complete": self._target_epochs is not None and self.epoch >= self._target_epochs
                        and self.step_in_epoch == 0,
            "metrics": dict(self.history[-1]) if self.history else {},
            "regularizer": cfg() if callable(cfg) else (repr(self.regularizer) if self.regularizer else None),
            "adversary": repr(self.adversary).splitlines()[0] if self.adversary is not None else None,
        })
        if self.keep_best:
            meta["best"] = dict(self.best) if self.best is not None else None
        return meta

    # ------------------------------------------------------------------ files
    def _where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step {self.global_step + 1})"

    def _kept_message(self) -> str:
        """Where the last good checkpoint is, or that there is none (for error messages)."""
        if self.out_dir is None:
            return "no out_dir was given, so no checkpoint was written"
        last = self._last_checkpoint
        if last is None:
            return f"no checkpoint was written yet (out_dir {str(self.out_dir)!r})"
        return (f"the last good checkpoint (epoch {last['epoch']}, global step {last['global_step']}) is kept "
                f"at {str(last['path'])!r}")

    def _check_parameters_finite(self, path: str | Path) -> None:
        floats = {name: t for name, t in self.module.state_dict().items() if t.is_floating_point()}
        if not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats.values()]).all()):
            return  # one device sync for all tensors
        bad = [name for name, t in floats.items() if not bool(torch.isfinite(t).all())]
        if bad:
            msg = (f"the weights are not finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after "
                   f"global step {self.global_step}: checkpoint {str(path)!r} was not written and training "
                   f"stopped; {self._kept_message()}. Lower the learning rate or the regularizer weight, or "
                   "set grad_clip.")
            logger.error(msg)
            raise NonFiniteLossError(msg)

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (weights + trainer state) atomically to ``path`` (rank 0 only).

        Raises:
            NonFiniteLossError: a weight or buffer is NaN/inf (nothing is written).
        """
        if not self.is_main:
            return
        self._check_parameters_finite(path)
        save_model(self.module, path, self.arch, self._checkpoint_meta(), extra={"trainer": self.state_dict()})
        logger.debug("checkpoint: %s (epoch %d, step %d)", path, self.epoch, self.step_in_epoch)

    @classmethod
    def resume(cls, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """A Trainer restored from a checkpoint: ``Trainer.resume(path, model, optimizer, **same_kwargs)``.

        ``model`` and ``optimizer`` must be built as for the original run (weights and
        optimizer state are loaded into them); pass the same scheduler, regularizer and
        adversary. Then call :meth:`fit` with the same loaders and total ``epochs``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: an unreadable checkpoint, one without trainer state, or weights that
                do not fit ``model`` (the message names the problem).
        """
        obj = load_checkpoint(path, map_location="cpu")
        check_trainer_state(obj.get("trainer"), path)
        load_weights(model, obj, path)  # before a DDP wrapper broadcasts rank 0's weights
        trainer = cls(model, optimizer, **kwargs)  # type: ignore[call-arg]  # the Trainer, which mixes this in
        trainer._restore(obj, path)
        return trainer

    def _restore(self, obj: dict[str, Any], path: str | Path) -> None:
        check_trainer_state(obj.get("trainer"), path)
        self.load_state_dict(obj["trainer"])
        self._last_checkpoint = {"path": Path(path), "epoch": self.epoch, "global_step": self.global_step}
        if self.is_main:
            logger.info("resumed from %s: epoch %d, step %d in epoch, global step %d",
                        path, self.epoch, self.step_in_epoch, self.global_step)

    def load(self, path: str | Path) -> None:
        """Load weights and trainer state from a checkpoint written by :meth:`save`."""
        obj = load_checkpoint(path, map_location="cpu")
        check_trainer_state(obj.get("trainer"), path)
        load_weights(self.module, obj, path)
        self._restore(obj, path)

    def _write_checkpoint(self) -> None:
        if self.folder is not None and self.is_main:
            path = self.folder.model
            self.save(path)
            self._last_checkpoint = {"path": path, "epoch": self.epoch, "global_step": self.global_step}

    def _write_log(self) -> None:
        if self.folder is None or not self.is_main:
            return
        self.folder.write_log(self._checkpoint_meta(), self.history)

    # ------------------------------------------------------------------ best.pt
    def _stage_best(self, record: dict[str, Any]) -> bool:
        """Record a strictly better ``val_acc`` and write its weights to the pending file."""
        if not self.keep_best or "val_acc" not in record:
            return False
        val_acc = float(record["val_acc"])
        if self.best is not None and not val_acc > float(self.best["val_acc"]):  # the authors: best < val_acc
            return False
        self.best = {"epoch": self.epoch, "global_step": self.global_step, "val_acc": val_acc}
        if self.folder is not None:
            self.save(self.folder.pending_best)
        return True

    def _commit_best(self) -> None:
        if self.folder is None or not self.is_main:
            return
        self.folder.commit_best()
        logger.info("best.pt: epoch %d, val_acc %.4f", self.best["epoch"] if self.best else -1,
                    self.best["val_acc"] if self.best else float("nan"))

    def _reconcile_best(self) -> None:
        if self.folder is not None and self.is_main:
            self.folder.reconcile_best(self.best)


def load_weights(model: nn.Module, obj: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(obj["state_dict"])`` with a clear error when they do not fit."""
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint {str(path)!r}: its weights do not fit the model ({first}); build the "
                         "model as for the original run") from err
