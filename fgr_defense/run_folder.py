"""A training run's folder: the one owner of its file names, its log, ``best.pt``'s commit and repair.

timm's ``CheckpointSaver`` is the model: the :class:`~fgr_defense.trainer.Trainer` writes
through a :class:`RunFolder`, and the harness's resume planner
(:mod:`deform_robust.training.run`) reads, repairs and wipes through the same object.

Convention:
    ``model.pt`` (the last checkpoint, with the trainer state), ``best.pt`` (``keep_best``),
    ``.best.pt.pending`` (``best.pt``'s first commit phase), ``log.json``
    (``{"format": "deform-robust-log/1", "meta", "epochs"}``) and ``train.log`` (the
    harness's log). See :mod:`fgr_defense.trainer_io` for what they hold and the two-phase
    commit of ``best.pt``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .files import atomic_write_text

__all__ = ["LOG_FORMAT", "RunFolder"]

logger = logging.getLogger("fgr_defense.trainer")

LOG_FORMAT = "deform-robust-log/1"


class RunFolder:
    """The files of one training run's output folder.

    Example:
        >>> import tempfile
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> run.model.name, run.best.name, run.log.name, run.has_checkpoint()
        ('model.pt', 'best.pt', 'log.json', False)
        >>> run.write_log({"epoch": 1}, [{"epoch": 1, "train_loss": 0.5}])
        >>> json.loads(run.log.read_text())["epochs"]
        [{'epoch': 1, 'train_loss': 0.5}]
    """

    MODEL = "model.pt"
    BEST = "best.pt"
    PENDING_BEST = ".best.pt.pending"
    LOG = "log.json"
    TRAIN_LOG = "train.log"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.model = self.path / self.MODEL
        self.best = self.path / self.BEST
        self.pending_best = self.path / self.PENDING_BEST
        self.log = self.path / self.LOG
        self.train_log = self.path / self.TRAIN_LOG

    def has_checkpoint(self) -> bool:
        """True when ``model.pt`` or ``best.pt`` exists."""
        return self.model.exists() or self.best.exists()

    def best_missing(self) -> bool:
        """True when neither ``best.pt`` nor its pending first phase is there."""
        return not self.best.is_file() and not self.pending_best.is_file()

    def wipe(self) -> None:
        """Remove the run's checkpoints and log (before training again from scratch)."""
        for path in (self.model, self.best, self.pending_best, self.log):
            path.unlink(missing_ok=True)

    def write_log(self, meta: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Write ``log.json`` (``{"format", "meta", "epochs"}``) atomically."""
        log = {"format": LOG_FORMAT, "meta": meta, "epochs": history}
        atomic_write_text(self.log, json.dumps(log, indent=2, default=str) + "\n")

    def repair_log(self) -> bool:
        """Rewrite ``log.json`` from ``model.pt`` when it is missing or behind; True when rewritten.

        A kill between the checkpoint and the log writes leaves the log one epoch behind; the
        checkpoint's history is the truth.
        """
        obj = load_checkpoint(self.model)
        history = list(obj.get("trainer", {}).get("history", []))
        try:
            current = json.loads(self.log.read_text())["epochs"]
        except (OSError, ValueError, KeyError, TypeError):
            current = None
        if current == json.loads(json.dumps(history, default=str)):
            return False
        self.write_log(dict(obj.get("meta", {})), history)
        logger.info("rewrote %s from the checkpoint's history (%d epochs)", self.log, len(history))
        return True

    def commit_best(self) -> None:
        """The second phase of ``best.pt``'s commit: the pending file becomes ``best.pt``."""
        os.replace(self.pending_best, self.best)

    def reconcile_best(self, best: dict[str, Any] | None) -> None:
        """Finish or drop a ``best.pt`` commit that a crash interrupted.

        ``best`` is the best epoch recorded in ``model.pt``'s trainer state: the pending file is
        committed when it holds that epoch, else dropped (its epoch is trained again).
        """
        if not self.pending_best.is_file():
            return
        try:
            staged = load_checkpoint(self.pending_best).get("meta", {}).get("best")
        except (ValueError, FileNotFoundError):
            staged = None
        if best is not None and staged == best:
            self.commit_best()
            logger.info("committed %s (epoch %d) after an interrupted run", self.best, best["epoch"])
        else:
            self.pending_best.unlink()
            logger.info("dropped an uncommitted %s (its epoch is trained again)", self.pending_best)
