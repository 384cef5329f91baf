r"""A drop-in trainer for gradient-regularized and adversarial training (eqs. (5), (6), (16), (18)).

``Trainer(model, optimizer, regularizer=..., adversary=...)`` trains any ``nn.Module``
classifier with any optimizer on any ``DataLoader`` of ``(images, labels)`` batches:

- **Standard**: ``loss = mean_b l_b(x)``.
- **Regularized** (``regularizer=IGR(...)/FGR(...)/GradientRegularizer(...)``):
  ``loss = task_loss + penalty`` as returned by ``regularizer.compute`` (see
  :mod:`fgr_defense.regularizers`); a plain callable ``regularizer(model, x, y) -> Tensor``
  works too (its value is added to the trainer's own task loss).
- **Adversarial** (``adversary=`` any ``torchattacks.Attack`` or flow attack, or any
  callable ``(x, y) -> x_adv``): eq. (6), the batch is replaced by ``adversary(x, y)``
  (computed with the model in eval mode, train mode restored afterwards, detached, and with
  the parameters' ``.grad`` cleared after the attack so that nothing leaks into the step).
  With a regularizer too (FGR+RS+AT-PGD) the regularizer is applied to the adversarial batch:
  ``L(x_adv) + weight * R(x_adv)``.

The Trainer holds three parts: a :class:`~fgr_defense.trainer_step.TrainStep` (one optimizer
step and the evaluation pass), a :class:`~fgr_defense.trainer_io.TrainState` (counters, history,
best epoch) and a :class:`~fgr_defense.trainer_io.Checkpointer` (its files through one
:class:`~fgr_defense.run_folder.RunFolder`); :meth:`Trainer.fit` runs the epoch loop of
:mod:`fgr_defense.trainer_loop` over them.

Convention:
    - **Files** (``out_dir``): ``model.pt`` (weights + trainer state, every epoch and every
      ``checkpoint_every`` steps, never with NaN/inf weights), ``log.json`` (one record per
      epoch) and, with ``keep_best``, ``best.pt``: formats in :mod:`fgr_defense.trainer_io`.
    - **Determinism, resume, batch norm**: :mod:`fgr_defense.trainer_loop` (per-step seeds
      from :func:`~fgr_defense.naming.derive_seed`; a resumed run takes the same steps; a
      batch of one example is dropped for batch-norm models).

    - **Distributed.** Under ``torchrun`` (or an initialized process group) the model is
      wrapped in ``DistributedDataParallel`` and the training loader gets a
      ``DistributedSampler`` (its ``batch_size`` is per process); metrics are summed over
      processes; rank 0 writes checkpoints and logs; ``evaluate`` runs the full loader on
      every rank.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchattacks_deform.validation import check_bool, check_number

from .checkpoint import load_checkpoint
from .device import resolve_device
from .distributed import DistContext, distributed_loader, init_distributed
from .regularizers import LossFn, per_example_cross_entropy
from .run_folder import LOG_FORMAT, RunFolder
from .trainer_io import (
    Checkpointer,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainState,
    check_trainer_state,
    load_weights,
)
from .trainer_loop import StopRequest, epoch_record, interrupted, run_epoch
from .trainer_step import TrainStep

__all__ = ["LOG_FORMAT", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _step_part(name: str) -> property:
    """A Trainer attribute that is its step's (one object holds it)."""
    return property(lambda self: getattr(self.step, name), lambda self, value: setattr(self.step, name, value),
                    doc=f"The step's ``{name}`` (:class:`~fgr_defense.trainer_step.TrainStep`).")


def _state_part(name: str) -> property:
    return property(lambda self: getattr(self.state, name), doc=f"``state.{name}`` (read-only).")


class Trainer:
    """Train a classifier with an optional gradient regularizer and/or adversary.

    Args:
        model: any ``nn.Module`` mapping a batch to logits ``(B, num_classes)``.
        optimizer: any ``torch.optim.Optimizer`` over ``model``'s parameters.
        regularizer: None, a :class:`~fgr_defense.regularizers.GradientRegularizer`
            (``IGR``, ``FGR``, ...), or a callable ``(model, x, y) -> scalar Tensor``.
        adversary: None, a ``torchattacks`` attack (``torchattacks.PGD(model, eps=0.1,
            steps=7)``), a flow attack, or a callable ``(x, y) -> x_adv``.
        scheduler: an LR scheduler, stepped every epoch (or step, see ``scheduler_interval``).
        device: where to train (:func:`~fgr_defense.device.resolve_device`: None or
            ``"auto"`` is ``cuda:LOCAL_RANK`` when available, else ``"cpu"``); under
            torchrun, the process's device. The model is moved there.
        loss_fn: per-example loss ``(logits, y) -> (B,)``; default cross-entropy.
        grad_clip: clip the global gradient norm to this value (finite, > 0) before each step.
        seed: seed of all randomness during ``fit`` (a random one is drawn and logged if None).
        progress: show a tqdm progress bar (rank 0 only).
        out_dir: folder of ``model.pt`` and ``log.json`` (module docstring); None: no files.
        checkpoint_every: also checkpoint every this many optimizer steps (mid-epoch).
        arch: ``{"name", "in_channels", "num_classes", "size"}`` so that
            :func:`~fgr_defense.checkpoint.load_model` can rebuild the model (optional).
        meta: JSON-able dict stored in checkpoints and the log (dataset, defense, ...).
        scheduler_interval: ``"epoch"`` (default) or ``"step"``.
        distributed: None = auto (torchrun/initialized process group), False = never.
        autocast_dtype: ``torch.bfloat16`` runs the training forward passes (task loss and
            penalty, including its double backprop) under ``torch.autocast`` of the device;
            None (default) trains in the model's dtype. bf16 needs no gradient scaling, so
            float16 is not offered. The adversary keeps its own precision (flow attacks:
            ``atk.set_precision(...)``).
        channels_last: convert the model and every batch to ``torch.channels_last`` memory
            format (faster convolutions on recent CUDA GPUs; same values).
        split_backward: for regularizers whose task loss needs its own clean forward pass
            (``FGR``/``GradientRegularizer`` with ``sigma > 0`` and ``variant="paper"``, eq.
            (16)), backpropagate the penalty before the clean forward pass, so that the two
            graphs never coexist: peak memory about that of an IGR step instead of IGR plus a
            standard step. Same values, gradients equal up to the summation order (float
            rounding). Not used under ``torch.distributed`` (DDP reduces gradients once per
            backward).
        keep_best: after every epoch with a validation loader, write ``out_dir/best.pt`` when
            ``val_acc`` strictly improves (:mod:`fgr_defense.trainer_io`); needs ``out_dir`` and a
            ``val_loader`` in :meth:`fit`.

    Raises:
        TypeError, ValueError: invalid arguments (the message names the argument).

    Example:
        >>> from fgr_defense.regularizers import FGR
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> trainer = Trainer(model, opt, regularizer=FGR(1.0), device="cpu", progress=False, seed=0)
        >>> out = trainer.train_step(torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,)))
        >>> sorted(out), out["output"].shape
        (['loss', 'output', 'reg_loss', 'task_loss'], torch.Size([8, 3]))
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        regularizer: Callable[..., Any] | None = None,
        adversary: Callable[..., Tensor] | None = None,
        scheduler: Any | None = None,
        device: str | torch.device | None = None,
        loss_fn: LossFn | None = None,
        grad_clip: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        out_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        arch: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        distributed: bool | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        split_backward: bool = True,
        keep_best: bool = False,
    ) -> None:
        check_number(checkpoint_every, "checkpoint_every", integer=True, minimum=1, allow_none=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        check_bool(keep_best, "keep_best")
        if keep_best and out_dir is None:
            raise ValueError("keep_best: True writes out_dir/best.pt, but out_dir is None; pass out_dir")
        if checkpoint_every is not None and out_dir is None:
            warnings.warn("checkpoint_every is set but out_dir is None: no checkpoints will be written",
                          stacklevel=2)

        ctx: DistContext | None = init_distributed() if distributed is not False else None
        dev = ctx.device if ctx is not None else resolve_device(device)
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
            logger.info("no seed given; using seed %d", seed)
        self.ctx = ctx
        self.state = TrainState(seed=int(seed))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.folder = RunFolder(self.out_dir) if self.out_dir is not None else None  # owns the file names
        self.files = Checkpointer(self.folder, self._snapshot, is_main=ctx is None or ctx.is_main)
        self.step = TrainStep(model, optimizer, regularizer=regularizer, adversary=adversary,
                              scheduler=scheduler, scheduler_interval=scheduler_interval,
                              loss_fn=loss_fn or per_example_cross_entropy,
                              grad_clip=float(grad_clip) if grad_clip is not None else None,
                              autocast_dtype=autocast_dtype, channels_last=channels_last,
                              split_backward=bool(split_backward), device=dev, ctx=ctx,
                              where=self.state.where, kept=self.files.kept_message)
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.arch = dict(arch) if arch is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.keep_best = keep_best
        self._target_epochs: int | None = None
        self._stop_request: StopRequest | None = None
        self._batchnorm = _has_batchnorm(self.step.module)
        if ctx is not None and ctx.is_main:
            logger.info("distributed training on %d processes", ctx.world_size)

    # One holder each: the step's parts (``model``: the module or its DDP wrapper) and the run's state.
    module, model, optimizer, scheduler, regularizer, adversary, device, grad_clip = map(_step_part, (
        "module", "model", "optimizer", "scheduler", "regularizer", "adversary", "device", "grad_clip"))
    epoch, step_in_epoch, global_step, history, best, seed = map(_state_part, (
        "epoch", "step_in_epoch", "global_step", "history", "best", "seed"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (or without distributed training)."""
        return self.ctx is None or self.ctx.is_main

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One optimizer step on a batch; returns detached ``loss``, ``task_loss``, ``reg_loss``, ``output``.

        ``loss = task_loss + reg_loss``; ``reg_loss`` is the weighted penalty (0 without a
        regularizer); ``output`` are the logits of the task loss's forward pass. The inputs
        are not modified; images of another floating dtype than the model's parameters
        (float64 numpy data and a float32 model, say) are converted to it (a copy).

        Raises:
            ValueError: ``labels`` are not class indices of the model (negative, e.g. the
                ignore index -100, or >= the number of logits).
            NonFiniteLossError: the loss or the gradient is NaN/inf (the step is skipped,
                the gradients cleared).
        """
        out = self.step(x, y)
        self.state.global_step += 1
        return out

    def evaluate(self, loader: Any, attack: Callable[..., Tensor] | None = None) -> dict[str, float]:
        """Mean loss and accuracy over a loader (model in eval mode; mode restored afterwards).

        Args:
            loader: iterable of ``(images, labels)`` batches.
            attack: optional attack ``(x, y) -> x_adv`` applied to each batch first.

        Returns:
            ``{"loss": float, "acc": float, "n": int}``.

        Raises:
            ValueError: an empty loader, or ``labels`` that are not class indices of the model.
        """
        return self.step.evaluate(loader, attack)

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
                the running step, see :mod:`fgr_defense.trainer_loop`).
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
                train_loader = distributed_loader(train_loader, self.ctx, seed=self.state.seed)
            else:
                warnings.warn("train_loader is not a torch DataLoader: it is not sharded, every process "
                              "trains on all of its batches", stacklevel=2)
        self.files.reconcile_best(self.state.best)
        self._write_log()  # the checkpoint's history is the truth (a kill may have left the log behind)
        if self.state.epoch >= epochs:
            logger.info("already trained %d of %d epochs; nothing to do", self.state.epoch, epochs)
            return self.history
        rank = self.ctx.rank if self.ctx is not None else 0
        with StopRequest(self.out_dir is not None and self.ctx is None) as stop:
            self._stop_request = stop
            try:
                for epoch in range(self.state.epoch, epochs):
                    run_epoch(train_loader, epoch, epochs, self.state, step=self._step_sums,
                              after_step=self._after_step, rank=rank, batchnorm=self._batchnorm,
                              progress=self.progress, is_main=self.is_main)
                    record = self._finish_epoch(epoch, val_loader)
                    if self.is_main:
                        logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in record.items() if k != "epoch"))
                    if stop.requested and epoch + 1 < epochs:
                        self._stop_interrupted(checkpoint_written=True)
            finally:
                self._stop_request = None
        return self.history

    def _step_sums(self, x: Tensor, y: Tensor) -> Tensor:
        self.train_step(x, y)
        assert self.step.last_stats is not None
        return self.step.last_stats

    def _after_step(self, trained: bool) -> None:
        every = self.checkpoint_every
        if trained and every is not None and self.state.global_step % every == 0:
            self.files.write_model()
        if self._stop_request is not None and self._stop_request.requested:
            self._stop_interrupted()

    def _stop_interrupted(self, checkpoint_written: bool = False) -> None:
        """Write ``model.pt`` at this step boundary (unless just written) and raise :class:`TrainingInterrupted`."""
        if not checkpoint_written:
            self.files.write_model()
        raise interrupted(self.state, self.folder.model if self.folder is not None else None)

    def _finish_epoch(self, epoch: int, val_loader: Any | None) -> dict[str, Any]:
        record = epoch_record(self.state, epoch, self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None and self.step.scheduler_interval == "epoch":
            self.scheduler.step()
        if val_loader is not None:
            val = self.evaluate(val_loader)
            record.update({"val_loss": val["loss"], "val_acc": val["acc"]})
        self.state.end_epoch(record)
        staged = self.keep_best and self.state.record_best(record)
        if staged:  # best.pt: the pending weights, then model.pt, then the commit
            self.files.stage_best()
        self.files.write_model()
        if staged:
            self.files.commit_best(self.state.best)
        self._write_log()
        return record

    # ------------------------------------------------------------------ state and files
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (weights_only-loadable): optimizer, scheduler, counters, history."""
        return self.state.to_dict(self.optimizer, self.scheduler, self.ctx.world_size if self.ctx else 1)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the weights are restored by :meth:`load`)."""
        self.state.load_dict(state, self.optimizer, self.scheduler, self.ctx.world_size if self.ctx else 1)

    def _checkpoint_meta(self) -> dict[str, Any]:
        return self.state.meta(self.meta, self._target_epochs, self.regularizer, self.adversary, self.keep_best)

    def _snapshot(self) -> tuple[nn.Module, dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
        return self.module, self.arch, self._checkpoint_meta(), self.state_dict()

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (weights + trainer state) atomically to ``path`` (rank 0 only).

        Raises:
            NonFiniteLossError: a weight or buffer is NaN/inf (nothing is written).
        """
        self.files.save(path)

    @classmethod
    def resume(cls, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Trainer:
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
        trainer = cls(model, optimizer, **kwargs)
        trainer._restore(obj, path)
        return trainer

    def load(self, path: str | Path) -> None:
        """Load weights and trainer state from a checkpoint written by :meth:`save`."""
        obj = load_checkpoint(path, map_location="cpu")
        check_trainer_state(obj.get("trainer"), path)
        load_weights(self.module, obj, path)
        self._restore(obj, path)

    def _restore(self, obj: dict[str, Any], path: str | Path) -> None:
        self.load_state_dict(obj["trainer"])
        self.files.remember(path, obj["trainer"])
        if self.is_main:
            s = self.state
            logger.info("resumed from %s: epoch %d, step %d in epoch, global step %d",
                        path, s.epoch, s.step_in_epoch, s.global_step)

    def _write_log(self) -> None:
        self.files.write_log(self._checkpoint_meta(), self.state.history)
