"""One optimizer step of the :class:`~fgr_defense.trainer.Trainer`, and its evaluation pass.

:class:`TrainStep` holds what a step needs (the model and its DDP wrapper, optimizer,
regularizer, adversary, loss, clipping, precision) and nothing of the run around it: the
counters, files and epoch loop are the Trainer's (:mod:`fgr_defense.trainer_io`,
:mod:`fgr_defense.trainer_loop`). The Trainer validates the arguments and builds it.

Convention:
    ``loss = task_loss + reg_loss``, where ``reg_loss`` is the weighted penalty of the
    regularizer (0 without one) and ``task_loss`` the mean per-example loss of the batch the
    step trains on (the adversarial batch with an adversary, eq. (6)). A step that would
    use a NaN/inf loss or gradient is not taken (:class:`~fgr_defense.trainer_io.NonFiniteLossError`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from torchattacks_deform.modes import preserve_modes
from torchattacks_deform.validation import (
    check_bool,
    check_choice,
    check_labels,
    check_logits,
    check_number,
)

from .distributed import DistContext, all_reduce_sum
from .regularizers import GradientRegularizer, LossFn
from .trainer_io import NonFiniteLossError
from .trainer_loop import split_batch

__all__ = ["TrainStep"]

logger = logging.getLogger("fgr_defense.trainer")


class TrainStep:
    """One optimizer step on a batch (:meth:`__call__`) and the mean loss and accuracy over a loader.

    Args:
        model: the classifier; moved to ``device`` (``module``), and wrapped in
            ``DistributedDataParallel`` under ``ctx`` (``model``: what the forward passes call).
        optimizer, regularizer, adversary, scheduler, scheduler_interval, loss_fn, grad_clip,
        autocast_dtype, channels_last, split_backward: as :class:`~fgr_defense.trainer.Trainer`.
        device, ctx: the device and the distributed context (None: one process).
        where: the step being taken, for error messages. kept: where the last good checkpoint is.

    After each step, ``last_stats`` holds the global sums ``(loss * n, task * n, reg * n,
    correct, n)`` of the batch (one tensor; summed over processes).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 regularizer: Callable[..., Any] | None, adversary: Callable[..., Tensor] | None, scheduler: Any,
                 scheduler_interval: str, loss_fn: LossFn, grad_clip: float | None,
                 autocast_dtype: torch.dtype | None, channels_last: bool, split_backward: bool,
                 device: torch.device, ctx: DistContext | None, where: Callable[[], str],
                 kept: Callable[[], str]) -> None:
        self.check_arguments(model, optimizer, regularizer, adversary, grad_clip, scheduler_interval, autocast_dtype,
                             channels_last)
        self.module = model.to(device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.module
        if ctx is not None:
            ids = [ctx.local_rank] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        if adversary is not None and hasattr(adversary, "device") and hasattr(adversary, "model"):
            adversary.device = device  # torchattacks fixes its device at construction
        self.optimizer = optimizer
        self.regularizer, self.adversary = regularizer, adversary
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.loss_fn, self.grad_clip = loss_fn, grad_clip
        self.autocast_dtype, self.channels_last, self.split_backward = autocast_dtype, channels_last, split_backward
        self.device, self.ctx = device, ctx
        self._where, self._kept = where, kept
        self.last_stats: Tensor | None = None
        self._num_classes: int | None = None
        self._dtype_noted = False  # the conversion of batches to the model's dtype is logged once

    @staticmethod
    def check_arguments(model: Any, optimizer: Any, regularizer: Any, adversary: Any, grad_clip: Any,
                        scheduler_interval: Any, autocast_dtype: Any, channels_last: Any) -> None:
        """The step's arguments (TypeError/ValueError naming the argument)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if regularizer is not None and not callable(regularizer):
            raise TypeError(f"regularizer: expected a regularizer object or callable, got {type(regularizer).__name__}")
        if adversary is not None and not callable(adversary):
            raise TypeError(f"adversary: expected an attack (callable (x, y) -> x_adv), got {type(adversary).__name__}")
        check_number(grad_clip, "grad_clip", minimum=0, exclusive_minimum=True, allow_none=True)
        check_choice(scheduler_interval, "scheduler_interval", ("epoch", "step"))
        if autocast_dtype not in (None, torch.bfloat16):
            raise ValueError(f"autocast_dtype: expected None or torch.bfloat16, got {autocast_dtype!r}")
        check_bool(channels_last, "channels_last")

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-example losses ``(B,)`` of ``loss_fn`` (the logits and, once, the labels' range checked)."""
        check_logits(logits, y.shape[0])
        if logits.shape[1] != self._num_classes:  # the first logits: check the labels' range once here
            check_labels(y, y.shape[0], num_classes=logits.shape[1])
            self._num_classes = int(logits.shape[1])
        losses = self.loss_fn(logits, y)
        if not isinstance(losses, Tensor) or losses.shape != (y.shape[0],):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"loss_fn: expected per-example losses of shape ({y.shape[0]},), got {got} "
                             "(use reduction='none')")
        return losses

    def to_device(self, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """The batch on the device, images in the model's floating dtype (a copy; the inputs are not modified)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
            raise TypeError(f"x: expected a floating-point tensor batch, got "
                            f"{type(x).__name__}{' of dtype ' + str(x.dtype) if isinstance(x, Tensor) else ''}")
        # Before the transfer (no device sync for CPU labels); the class range once it is known.
        check_labels(y, x.shape[0], num_classes=self._num_classes)
        dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), x.dtype)
        if x.dtype != dtype and not self._dtype_noted:  # e.g. float64 numpy images, float32 model
            logger.info("x: converting %s batches to the model's %s", x.dtype, dtype)
            self._dtype_noted = True
        return x.to(self.device, dtype, non_blocking=True), y.to(self.device, non_blocking=True)

    def _attack(self, x: Tensor, y: Tensor) -> Tensor:
        assert self.adversary is not None
        with preserve_modes(self.model):  # each module's own mode comes back
            self.model.eval()  # batch norm / dropout in inference mode while crafting the attack
            if self._num_classes is None:  # check the labels before the attack uses them
                with torch.no_grad():
                    self.loss(self.module(x), y)
            with torch.enable_grad():
                x_adv = self.adversary(x, y)
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
            raise ValueError(f"adversary: expected adversarial images of shape {tuple(x.shape)}, got {got}")
        return x_adv.detach().to(self.device)

    def __call__(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One optimizer step (:meth:`fgr_defense.trainer.Trainer.train_step`)."""
        x, y = self.to_device(x, y)
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
                res = reg.compute(self.model, inputs, y, self.loss, **split)
                reg_loss, task, output = res.penalty, res.task_loss, res.output
                done = bool(getattr(res, "backpropagated", False))
            else:
                reg_loss = reg(self.model, inputs, y)
            if task is None or output is None:
                output = self.model(inputs)
                task = self.loss(output, y).mean()
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
        self._check_gradients(loss)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return {"loss": loss.detach(), "task_loss": task.detach(), "reg_loss": reg_loss.detach(),
                "output": output.detach()}

    def _early_backward(self, term: Tensor) -> None:
        with torch.autocast(device_type=self.device.type, enabled=False):
            term.float().backward()

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _stop(self, what: str, detail: str, advice: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        msg = (f"{what} at {self._where()} ({detail}). The optimizer step was skipped, the gradients "
               f"cleared and training stopped; {self._kept()}. {advice}")
        logger.error(msg)
        raise NonFiniteLossError(msg)

    def _check_finite(self, loss: Tensor, task: Tensor, reg: Tensor, output: Tensor, y: Tensor) -> None:
        n = float(y.shape[0])
        correct = (output.detach().argmax(dim=1) == y).sum().to(loss.dtype)
        stats = torch.stack([loss.detach() * n, task.detach() * n, reg.detach() * n, correct,
                             loss.new_tensor(n)])
        stats = all_reduce_sum(stats)  # global sums; NaN on any rank is NaN on all ranks
        self.last_stats = stats
        if not bool(torch.isfinite(stats[0])):
            self._stop("loss is not finite",
                       f"task_loss={float(task.detach()):.4g}, reg_loss={float(reg.detach()):.4g}",
                       "Lower the learning rate or the regularizer weight, or set grad_clip.")

    def _check_gradients(self, loss: Tensor) -> None:
        """Refuse a step whose gradient is NaN/inf although the loss is finite (DDP: same on all ranks)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self._stop("the gradient is not finite although the loss is",
                       f"loss={float(loss.detach()):.4g}",
                       "Look for operations without a finite derivative in the model or loss (sqrt or "
                       "log at 0, division by 0), or lower the learning rate or regularizer weight.")

    @torch.no_grad()
    def _eval_forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def evaluate(self, loader: Any, attack: Callable[..., Tensor] | None = None) -> dict[str, float]:
        """:meth:`fgr_defense.trainer.Trainer.evaluate`."""
        loss_sum, correct, count = 0.0, 0, 0
        with preserve_modes(self.module):  # each module's own mode comes back
            self.module.eval()
            for batch in loader:
                x, y = self.to_device(*split_batch(batch))
                if attack is not None:
                    if self._num_classes is None:
                        self.loss(self._eval_forward(x), y)
                    with torch.enable_grad():
                        x = attack(x, y).detach()
                out = self._eval_forward(x)
                loss_sum += float(self.loss(out, y).sum())
                correct += int((out.argmax(dim=1) == y).sum())
                count += int(y.shape[0])
        if count == 0:
            raise ValueError("loader: expected at least one batch to evaluate, got an empty loader")
        return {"loss": loss_sum / count, "acc": correct / count, "n": count}
