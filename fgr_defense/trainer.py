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

Convention:
    **Checkpoints and logs** (``out_dir``):

    - ``out_dir/model.pt``: :func:`fgr_defense.checkpoint.save_model` format (loadable with
      ``load_model`` / ``torch.load(weights_only=True)``) plus ``"trainer"``: optimizer and
      scheduler state, ``epoch`` (completed epochs), ``step_in_epoch``, ``global_step``
      (optimizer steps), ``seed``, ``history`` (one record per completed epoch) and the
      running sums of the current epoch. ``meta`` holds ``epoch``, ``global_step``,
      ``complete`` and the last epoch's metrics plus whatever the caller put there. Written
      atomically (temporary file + rename) at the end of every epoch and every
      ``checkpoint_every`` optimizer steps; a crash leaves the previous file intact.
    - ``out_dir/log.json``: ``{"format": "deform-robust-log/1", "meta": {...},
      "epochs": [record, ...]}``, rewritten atomically from the checkpoint's history after
      every epoch, so a resumed run neither loses nor duplicates epochs. A record has
      ``epoch`` (1-based), ``global_step``, ``steps``, ``lr``, ``train_loss``,
      ``train_task_loss``, ``train_reg_loss``, ``train_acc``, ``time_s`` and, with a
      validation loader, ``val_loss``, ``val_acc``.

    **Determinism and resume.** Before creating each epoch's iterator and before fetching
    each batch, the trainer seeds ``torch``, ``random`` and ``numpy`` with a seed derived
    from ``(seed, epoch, step, rank)``. A resumed run re-creates the epoch's iterator, skips
    (fetches and drops) the batches already done and continues with the same random numbers,
    so an interrupted-and-resumed run takes the same optimizer steps as an uninterrupted
    one (bit for bit on CPU with a deterministic loader). ``fit(loader, epochs)`` trains up
    to ``epochs`` epochs in total.

    **Distributed.** Under ``torchrun`` (or an initialized process group) the model is
    wrapped in ``DistributedDataParallel`` and the training loader gets a
    ``DistributedSampler`` (its ``batch_size`` is per process); metrics are summed over
    processes; rank 0 writes checkpoints and logs; ``evaluate`` runs the full loader on every
    rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .checkpoint import atomic_write_text, load_checkpoint, save_model
from .distributed import DistContext, all_reduce_sum, distributed_loader, init_distributed
from .regularizers import GradientRegularizer, LossFn, check_logits, per_example_cross_entropy

__all__ = ["LOG_FORMAT", "NonFiniteLossError", "Trainer"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "deform-robust-log/1"
_STATE_VERSION = 1
_ACCUM_KEYS = ("loss", "task_loss", "reg_loss", "correct", "count", "time_s")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the optimizer step was skipped and training stopped."""


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "image" in batch and "label" in batch:
        return batch["image"], batch["label"]
    raise TypeError(
        f"batch: expected (images, labels) from the DataLoader, got {type(batch).__name__}"
    )


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
        device: where to train; default: the process's CUDA device under torchrun, else
            ``"cuda"`` when available, else ``"cpu"``. The model is moved there.
        loss_fn: per-example loss ``(logits, y) -> (B,)``; default cross-entropy.
        grad_clip: clip the global gradient norm to this value before each step.
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if regularizer is not None and not callable(regularizer):
            raise TypeError(f"regularizer: expected a regularizer object or callable, got {type(regularizer).__name__}")
        if adversary is not None and not callable(adversary):
            raise TypeError(f"adversary: expected an attack (callable (x, y) -> x_adv), got {type(adversary).__name__}")
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                      or not grad_clip > 0 or not math.isfinite(grad_clip)):
            raise ValueError(f"grad_clip: expected a positive finite number or None, got {grad_clip!r}")
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool)
                                             or not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every: expected a positive int (optimizer steps) or None, got {checkpoint_every!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval: expected 'epoch' or 'step', got {scheduler_interval!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if autocast_dtype not in (None, torch.bfloat16):
            raise ValueError(f"autocast_dtype: expected None or torch.bfloat16, got {autocast_dtype!r}")
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
        if checkpoint_every is not None and out_dir is None:
            warnings.warn("checkpoint_every is set but out_dir is None: no checkpoints will be written",
                          stacklevel=2)

        self.ctx: DistContext | None = init_distributed() if distributed is not False else None
        if self.ctx is not None:
            self.device = self.ctx.device
        elif device is not None:
            self.device = torch.device(device)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.split_backward = bool(split_backward)
        self.module = model.to(self.device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.module
        if self.ctx is not None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.local_rank] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.adversary = adversary
        if adversary is not None and hasattr(adversary, "device") and hasattr(adversary, "model"):
            adversary.device = self.device  # torchattacks fixes its device at construction
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_fn: LossFn = loss_fn or per_example_cross_entropy
        self.grad_clip = float(grad_clip) if grad_clip is not None else None
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
            logger.info("no seed given; using seed %d", seed)
        self.seed = int(seed)
        self.progress = progress
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.arch = dict(arch) if arch is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._accum = dict.fromkeys(_ACCUM_KEYS, 0.0)
        self._target_epochs: int | None = None
        self._last_stats: Tensor | None = None
        if self.ctx is not None and self.ctx.is_main:
            logger.info("distributed training on %d processes", self.ctx.world_size)

    # ------------------------------------------------------------------ one step
    @property
    def is_main(self) -> bool:
        """True on rank 0 (or without distributed training)."""
        return self.ctx is None or self.ctx.is_main

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        check_logits(logits, y.shape[0])
        losses = self.loss_fn(logits, y)
        if not isinstance(losses, Tensor) or losses.shape != (y.shape[0],):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"loss_fn: expected per-example losses of shape ({y.shape[0]},), got {got} "
                             "(use reduction='none')")
        return losses

    def _to_device(self, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor batch, got "
                            f"{type(x).__name__}{' of dtype ' + str(x.dtype) if isinstance(x, Tensor) else ''}")
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: expected {x.shape[0]} labels (one per example), got {got}")
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _attack(self, x: Tensor, y: Tensor) -> Tensor:
        assert self.adversary is not None
        was_training = self.model.training
        self.model.eval()  # batch norm / dropout in inference mode while crafting the attack
        try:
            with torch.enable_grad():
                x_adv = self.adversary(x, y)
        finally:
            self.model.train(was_training)
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
            raise ValueError(f"adversary: expected adversarial images of shape {tuple(x.shape)}, got {got}")
        return x_adv.detach().to(self.device)

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One optimizer step on a batch; returns detached ``loss``, ``task_loss``, ``reg_loss``, ``output``.

        ``loss = task_loss + reg_loss``; ``reg_loss`` is the weighted penalty (0 without a
        regularizer); ``output`` are the logits of the task loss's forward pass. The inputs
        are not modified.

        Raises:
            NonFiniteLossError: the loss is NaN/inf (the step is skipped, gradients cleared).
        """
        x, y = self._to_device(x, y)
        self.model.train()
        inputs = self._attack(x, y) if self.adversary is not None else x
        self.optimizer.zero_grad(set_to_none=True)  # also drops anything an attack accumulated
        reg = self.regularizer
        output: Tensor | None = None
        task: Tensor | None = None
        done = False  # every gradient is already accumulated (split_backward)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            if reg is None:
                reg_loss: Tensor | None = None
            elif hasattr(reg, "compute") and getattr(reg, "computes_task_loss", False):
                split = {"backward": self._early_backward} if (
                    self.split_backward and self.ctx is None and isinstance(reg, GradientRegularizer)) else {}
                res = reg.compute(self.model, inputs, y, self._loss, **split)
                reg_loss, task, output = res.penalty, res.task_loss, res.output
                done = bool(getattr(res, "backpropagated", False))
            else:
                reg_loss = reg(self.model, inputs, y)
            if task is None or output is None:
                output = self.model(inputs)
                task = self._loss(output, y).mean()
        if self.autocast_dtype is not None:  # report and step in float32, whatever autocast chose
            output, task = output.float(), task.float()
            if reg_loss is not None:
                reg_loss = reg_loss.float()
        if reg_loss is None:
            reg_loss = task.new_zeros(())
        if not isinstance(reg_loss, Tensor) or reg_loss.numel() != 1:
            got = tuple(reg_loss.shape) if isinstance(reg_loss, Tensor) else type(reg_loss).__name__
            raise ValueError(f"regularizer: expected a scalar penalty tensor, got {got}")
        reg_loss = reg_loss.reshape(())
        loss = task + reg_loss
        self._check_finite(loss, task, reg_loss, output, y)
        if not done:
            loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1
        return {"loss": loss.detach(), "task_loss": task.detach(), "reg_loss": reg_loss.detach(),
                "output": output.detach()}

    def _early_backward(self, term: Tensor) -> None:
        with torch.autocast(device_type=self.device.type, enabled=False):
            term.float().backward()

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _check_finite(self, loss: Tensor, task: Tensor, reg: Tensor, output: Tensor, y: Tensor) -> None:
        n = float(y.shape[0])
        correct = (output.detach().argmax(dim=1) == y).sum().to(loss.dtype)
        stats = torch.stack([loss.detach() * n, task.detach() * n, reg.detach() * n, correct,
                             loss.new_tensor(n)])
        stats = all_reduce_sum(stats)  # global sums; NaN on any rank is NaN on all ranks
        self._last_stats = stats
        if not bool(torch.isfinite(stats[0])):
            self.optimizer.zero_grad(set_to_none=True)
            where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step {self.global_step + 1})"
            kept = (f"; the last good checkpoint is kept at {str(self.out_dir / 'model.pt')!r}"
                    if self.out_dir is not None else "")
            msg = (f"loss is not finite at {where}: task_loss={float(task.detach()):.4g}, reg_loss={float(reg.detach()):.4g}. "
                   f"The optimizer step was skipped and training stopped{kept}. Lower the learning "
                   "rate or the regularizer weight, or set grad_clip.")
            logger.error(msg)
            raise NonFiniteLossError(msg)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _eval_forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def evaluate(self, loader: Any, attack: Callable[..., Tensor] | None = None) -> dict[str, float]:
        """Mean loss and accuracy over a loader (model in eval mode; mode restored afterwards).

        Args:
            loader: iterable of ``(images, labels)`` batches.
            attack: optional attack ``(x, y) -> x_adv`` applied to each batch first.

        Returns:
            ``{"loss": float, "acc": float, "n": int}``.
        """
        was_training = self.module.training
        self.module.eval()
        loss_sum, correct, count = 0.0, 0, 0
        try:
            for batch in loader:
                x, y = self._to_device(*_split_batch(batch))
                if attack is not None:
                    with torch.enable_grad():
                        x = attack(x, y).detach()
                out = self._eval_forward(x)
                loss_sum += float(self._loss(out, y).sum())
                correct += int((out.argmax(dim=1) == y).sum())
                count += int(y.shape[0])
        finally:
            self.module.train(was_training)
        if count == 0:
            raise ValueError("loader: expected at least one batch to evaluate, got an empty loader")
        return {"loss": loss_sum / count, "acc": correct / count, "n": count}

    # ------------------------------------------------------------------ fit
    def _seed_step(self, epoch: int, step: int) -> None:
        rank = self.ctx.rank if self.ctx is not None else 0
        _seed_all(_derive_seed(self.seed, epoch, step + 1, rank))

    def fit(self, train_loader: Any, epochs: int, val_loader: Any | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete in total; returns the history.

        Continues a resumed run where it stopped (skipping the batches already done).
        Writes ``out_dir/model.pt`` and ``out_dir/log.json`` after every epoch (and
        ``model.pt`` every ``checkpoint_every`` steps).

        Raises:
            NonFiniteLossError: NaN/inf loss (the last good checkpoint is kept).
            ValueError: ``epochs`` is not a non-negative int, or the loader changed length.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs: expected a non-negative int (total epochs), got {epochs!r}")
        self._target_epochs = epochs
        if self.ctx is not None:
            if isinstance(train_loader, DataLoader):
                train_loader = distributed_loader(train_loader, self.ctx, seed=self.seed)
            else:
                warnings.warn("train_loader is not a torch DataLoader: it is not sharded, every process "
                              "trains on all of its batches", stacklevel=2)
        if self.epoch >= epochs:
            logger.info("already trained %d of %d epochs; nothing to do", self.epoch, epochs)
            return self.history
        for epoch in range(self.epoch, epochs):
            self._run_epoch(train_loader, epoch, epochs)
            record = self._finish_epoch(epoch, val_loader)
            if self.is_main:
                logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in record.items() if k != "epoch"))
        return self.history

    def _run_epoch(self, loader: Any, epoch: int, epochs: int) -> None:
        from tqdm.auto import tqdm

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
                x, y = _split_batch(batch)
                self.train_step(x, y)
                assert self._last_stats is not None
                s = self._last_stats.tolist()
                for key, value in zip(_ACCUM_KEYS, s):
                    self._accum[key] += value
                now = time.perf_counter()
                self._accum["time_s"] += now - tick
                tick = now
                self.step_in_epoch = step = step + 1
                count = max(self._accum["count"], 1.0)
                bar.update(1)
                bar.set_postfix(loss=f"{self._accum['loss'] / count:.4f}",
                                acc=f"{self._accum['correct'] / count:.3f}", refresh=False)
                if self.checkpoint_every is not None and self.global_step % self.checkpoint_every == 0:
                    self._write_checkpoint()
        finally:
            bar.close()

    def _finish_epoch(self, epoch: int, val_loader: Any | None) -> dict[str, Any]:
        acc = self._accum
        count = acc["count"]
        if count == 0:
            raise ValueError("train_loader: expected at least one batch per epoch, got none")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_step": self.global_step,
            "steps": self.step_in_epoch,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": acc["loss"] / count,
            "train_task_loss": acc["task_loss"] / count,
            "train_reg_loss": acc["reg_loss"] / count,
            "train_acc": acc["correct"] / count,
            "time_s": acc["time_s"],
        }
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        if val_loader is not None:
            val = self.evaluate(val_loader)
            record.update({"val_loss": val["loss"], "val_acc": val["acc"]})
        self.history.append(record)
        self.epoch = epoch + 1
        self.step_in_epoch = 0
        self._accum = dict.fromkeys(_ACCUM_KEYS, 0.0)
        self._write_checkpoint()
        self._write_log()
        return record

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
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the weights are restored by :meth:`load`)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"state: expected a Trainer state of version {_STATE_VERSION}, got "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.seed = int(state["seed"])
        self.history = [dict(r) for r in state["history"]]
        self._accum = {k: float(state["accum"].get(k, 0.0)) for k in _ACCUM_KEYS}
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
        return meta

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (weights + trainer state) atomically to ``path`` (rank 0 only)."""
        if not self.is_main:
            return
        save_model(self.module, path, self.arch, self._checkpoint_meta(), extra={"trainer": self.state_dict()})
        logger.debug("checkpoint: %s (epoch %d, step %d)", path, self.epoch, self.step_in_epoch)

    def load(self, path: str | Path) -> None:
        """Load weights and trainer state from a checkpoint written by :meth:`save`."""
        obj = load_checkpoint(path, map_location="cpu")
        if "trainer" not in obj:
            raise ValueError(f"checkpoint: {str(path)!r} has no trainer state (not written by Trainer.save)")
        self.module.load_state_dict(obj["state_dict"])
        self.load_state_dict(obj["trainer"])
        if self.is_main:
            logger.info("resumed from %s: epoch %d, step %d in epoch, global step %d",
                        path, self.epoch, self.step_in_epoch, self.global_step)

    @classmethod
    def resume(cls, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Trainer:
        """A Trainer restored from a checkpoint: ``Trainer.resume(path, model, optimizer, **same_kwargs)``.

        ``model`` and ``optimizer`` must be built as for the original run (weights and
        optimizer state are loaded into them); pass the same scheduler, regularizer and
        adversary. Then call :meth:`fit` with the same loaders and total ``epochs``.
        """
        obj = load_checkpoint(path, map_location="cpu")
        model.load_state_dict(obj["state_dict"])  # before a DDP wrapper broadcasts rank 0's weights
        trainer = cls(model, optimizer, **kwargs)
        if "trainer" not in obj:
            raise ValueError(f"checkpoint: {str(path)!r} has no trainer state (not written by Trainer.save)")
        trainer.load_state_dict(obj["trainer"])
        if trainer.is_main:
            logger.info("resumed from %s: epoch %d, step %d in epoch, global step %d",
                        path, trainer.epoch, trainer.step_in_epoch, trainer.global_step)
        return trainer

    def _write_checkpoint(self) -> None:
        if self.out_dir is not None:
            self.save(self.out_dir / "model.pt")

    def _write_log(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
        log = {"format": LOG_FORMAT, "meta": self._checkpoint_meta(), "epochs": self.history}
        atomic_write_text(self.out_dir / "log.json", json.dumps(log, indent=2, default=str) + "\n")
