"""What the :class:`~fgr_defense.trainer.Trainer` writes and reads: checkpoints, logs, ``best.pt``.

Two objects the Trainer holds: :class:`TrainState` (where a run stands: its counters, history and
best epoch; the trainer state of a checkpoint) and :class:`Checkpointer` (its writes through one
:class:`~fgr_defense.run_folder.RunFolder`, as timm's ``CheckpointSaver``); plus
:class:`NonFiniteLossError` and :class:`TrainingInterrupted`.

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
      so a kept checkpoint is always usable (:meth:`Checkpointer.save`).
    - ``best.pt`` (``keep_best=True``) is committed in two phases: the weights go to
      ``.best.pt.pending`` first, then ``model.pt`` records the new best, then the pending
      file is renamed to ``best.pt``. A crash between the steps is repaired at the next
      :meth:`~fgr_defense.trainer.Trainer.fit`: the pending file is committed when
      ``model.pt`` knows it, else dropped (its epoch is trained again). So ``best.pt``
      always holds the epoch that ``model.pt``'s trainer state names as best.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import save_model
from .run_folder import RunFolder

__all__ = ["ACCUM_KEYS", "Checkpointer", "NonFiniteLossError", "Snapshot", "TrainState", "TrainingInterrupted",
           "check_trainer_state", "load_weights"]

logger = logging.getLogger("fgr_defense.trainer")

_STATE_VERSION = 1
_STATE_KEYS = ("version", "epoch", "step_in_epoch", "global_step", "seed", "history", "accum", "optimizer")
#: The running sums of an epoch (``TrainState.accum``).
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


def _zero_accum() -> dict[str, float]:
    return dict.fromkeys(ACCUM_KEYS, 0.0)


@dataclasses.dataclass
class TrainState:
    """Where a run stands: completed epochs, batches done in the current one, optimizer steps, the
    history (one record per completed epoch), the running sums of the current epoch and the best
    epoch (``keep_best``).

    Example:
        >>> s = TrainState(seed=3)
        >>> s.where(), s.accum["count"]
        ('epoch 1, step 1 (global step 1)', 0.0)
    """

    seed: int
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    accum: dict[str, float] = dataclasses.field(default_factory=_zero_accum)
    best: dict[str, Any] | None = None

    def where(self) -> str:
        """The step being taken, for error messages."""
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step {self.global_step + 1})"

    def record_best(self, record: dict[str, Any]) -> bool:
        """Make the epoch of ``record`` the best when its ``val_acc`` is strictly better (the authors'
        ``if best_val_acc < val_acc``; the first validated epoch always counts); True when it is.

        Example:
            >>> s = TrainState(seed=0, epoch=1)
            >>> s.record_best({"val_acc": 0.5}), s.record_best({"val_acc": 0.5}), s.best["val_acc"]
            (True, False, 0.5)
        """
        if "val_acc" not in record:
            return False
        val_acc = float(record["val_acc"])
        if self.best is not None and not val_acc > float(self.best["val_acc"]):
            return False
        self.best = {"epoch": self.epoch, "global_step": self.global_step, "val_acc": val_acc}
        return True

    def meta(self, base: dict[str, Any], target_epochs: int | None, regularizer: Any, adversary: Any,
             keep_best: bool) -> dict[str, Any]:
        """A checkpoint's and the log's ``meta``: ``base`` (the caller's) plus where the run stands."""
        cfg = getattr(regularizer, "config", None)
        meta = {**base, "epoch": self.epoch, "global_step": self.global_step,
                "complete": target_epochs is not None and self.epoch >= target_epochs and self.step_in_epoch == 0,
                "metrics": dict(self.history[-1]) if self.history else {},
                "regularizer": cfg() if callable(cfg) else (repr(regularizer) if regularizer else None),
                "adversary": repr(adversary).splitlines()[0] if adversary is not None else None}
        if keep_best:
            meta["best"] = dict(self.best) if self.best is not None else None
        return meta

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Append the epoch's record and start the next epoch's counters."""
        self.history.append(record)
        self.epoch = int(record["epoch"])
        self.step_in_epoch = 0
        self.accum = _zero_accum()

    def to_dict(self, optimizer: torch.optim.Optimizer, scheduler: Any, world_size: int) -> dict[str, Any]:
        """The checkpoint's trainer state (weights_only-loadable): this, the optimizer's and the scheduler's."""
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "seed": self.seed,
            "world_size": world_size,
            "history": [dict(r) for r in self.history],
            "accum": dict(self.accum),
            "best": dict(self.best) if self.best is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        }

    def load_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                  world_size: int) -> None:
        """Restore what :meth:`to_dict` returned into this state, ``optimizer`` and ``scheduler``."""
        check_trainer_state(state, "state")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.seed = int(state["seed"])
        self.history = [dict(r) for r in state["history"]]
        self.accum = {k: float(state["accum"].get(k, 0.0)) for k in ACCUM_KEYS}
        self.best = dict(state["best"]) if state.get("best") is not None else None
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state.get("scheduler") is None:
                warnings.warn("scheduler: the checkpoint has no scheduler state; the scheduler starts fresh",
                              stacklevel=3)
            else:
                scheduler.load_state_dict(state["scheduler"])
        if int(state.get("world_size", 1)) != world_size:
            warnings.warn(f"resuming a run of world size {state.get('world_size')} on {world_size} process(es): "
                          "the remaining batches of the current epoch will differ", stacklevel=3)


#: What a checkpoint holds, taken when it is written: ``(module, arch, meta, trainer state)``.
Snapshot = Callable[[], "tuple[nn.Module, dict[str, Any] | None, dict[str, Any], dict[str, Any]]"]


class Checkpointer:
    """What a Trainer writes into its run folder: ``model.pt``, ``best.pt`` in two phases, ``log.json``.

    timm's ``CheckpointSaver`` is the model. ``snapshot()`` gives what a checkpoint holds at the
    moment it is written. Writes happen on rank 0 only (``is_main``), never with non-finite
    weights, and the last good checkpoint is remembered for error messages. ``folder=None`` (no
    ``out_dir``) writes nothing.

    Example:
        >>> import tempfile
        >>> net = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> state = TrainState(seed=0, epoch=1, global_step=4)
        >>> files = Checkpointer(RunFolder(tempfile.mkdtemp()), lambda: (net, None, {}, state.to_dict(opt, None, 1)))
        >>> files.write_model()
        >>> files.folder.model.is_file(), files.kept_message().startswith("the last good checkpoint (epoch 1")
        (True, True)
    """

    def __init__(self, folder: RunFolder | None, snapshot: Snapshot, is_main: bool = True) -> None:
        self.folder = folder
        self.snapshot = snapshot
        self.is_main = is_main
        self.last: dict[str, Any] | None = None

    def kept_message(self) -> str:
        """Where the last good checkpoint is, or that there is none (for error messages)."""
        if self.folder is None:
            return "no out_dir was given, so no checkpoint was written"
        if self.last is None:
            return f"no checkpoint was written yet (out_dir {str(self.folder.path)!r})"
        return (f"the last good checkpoint (epoch {self.last['epoch']}, global step {self.last['global_step']}) "
                f"is kept at {str(self.last['path'])!r}")

    def remember(self, path: str | Path, state: dict[str, Any]) -> None:
        """Record ``path`` (holding trainer state ``state``) as the last good checkpoint."""
        self.last = {"path": Path(path), "epoch": state["epoch"], "global_step": state["global_step"]}

    def _check_finite(self, module: nn.Module, path: str | Path, global_step: int) -> None:
        floats = {name: t for name, t in module.state_dict().items() if t.is_floating_point()}
        if not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats.values()]).all()):
            return  # one device sync for all tensors
        bad = [name for name, t in floats.items() if not bool(torch.isfinite(t).all())]
        if bad:
            msg = (f"the weights are not finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after "
                   f"global step {global_step}: checkpoint {str(path)!r} was not written and training "
                   f"stopped; {self.kept_message()}. Lower the learning rate or the regularizer weight, or "
                   "set grad_clip.")
            logger.error(msg)
            raise NonFiniteLossError(msg)

    def save(self, path: str | Path) -> dict[str, Any] | None:
        """Write the snapshot atomically to ``path`` (rank 0 only); returns its trainer state (None: not written).

        Raises:
            NonFiniteLossError: a weight or buffer is NaN/inf (nothing is written).
        """
        if not self.is_main:
            return None
        module, arch, meta, state = self.snapshot()
        self._check_finite(module, path, state["global_step"])
        save_model(module, path, arch, meta, extra={"trainer": state})
        logger.debug("checkpoint: %s (epoch %d, step %d)", path, state["epoch"], state["step_in_epoch"])
        return state

    def write_model(self) -> None:
        """``model.pt``: the resumable checkpoint."""
        if self.folder is not None:
            state = self.save(self.folder.model)
            if state is not None:
                self.remember(self.folder.model, state)

    def stage_best(self) -> None:
        """``best.pt``'s first phase: the weights go to the pending file."""
        if self.folder is not None:
            self.save(self.folder.pending_best)

    def commit_best(self, best: dict[str, Any] | None) -> None:
        """``best.pt``'s second phase (after ``model.pt`` recorded ``best``)."""
        if self.folder is None or not self.is_main:
            return
        self.folder.commit_best()
        logger.info("best.pt: epoch %d, val_acc %.4f", best["epoch"] if best else -1,
                    best["val_acc"] if best else float("nan"))

    def reconcile_best(self, best: dict[str, Any] | None) -> None:
        """Finish or drop a ``best.pt`` commit that a crash interrupted (:meth:`RunFolder.reconcile_best`)."""
        if self.folder is not None and self.is_main:
            self.folder.reconcile_best(best)

    def write_log(self, meta: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``log.json`` from the history."""
        if self.folder is not None and self.is_main:
            self.folder.write_log(meta, history)


def load_weights(model: nn.Module, obj: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(obj["state_dict"])`` with a clear error when they do not fit."""
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint {str(path)!r}: its weights do not fit the model ({first}); build the "
                         "model as for the original run") from err
