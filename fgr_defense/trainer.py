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

import contextlib
import logging
import os
import warnings
from pathlib import Path
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

from .device import resolve_device
from .distributed import DistContext, all_reduce_sum, init_distributed
from .regularizers import GradientRegularizer, LossFn, per_example_cross_entropy
from .run_folder import LOG_FORMAT, RunFolder
from .trainer_io import (
    ACCUM_KEYS,
    NonFiniteLossError,
    TrainingInterrupted,
)
from .trainer_loop import EpochLoopMixin, split_batch

__all__ = ["LOG_FORMAT", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Trainer(EpochLoopMixin):
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if regularizer is not None and not callable(regularizer):
            raise TypeError(f"regularizer: expected a regularizer object or callable, got {type(regularizer).__name__}")
        if adversary is not None and not callable(adversary):
            raise TypeError(f"adversary: expected an attack (callable (x, y) -> x_adv), got {type(adversary).__name__}")
        check_number(grad_clip, "grad_clip", minimum=0, exclusive_minimum=True, allow_none=True)
        check_number(checkpoint_every, "checkpoint_every", integer=True, minimum=1, allow_none=True)
        check_choice(scheduler_interval, "scheduler_interval", ("epoch", "step"))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if autocast_dtype not in (None, torch.bfloat16):
            raise ValueError(f"autocast_dtype: expected None or torch.bfloat16, got {autocast_dtype!r}")
        check_bool(channels_last, "channels_last")
        check_bool(keep_best, "keep_best")
        if keep_best and out_dir is None:
            raise ValueError("keep_best: True writes out_dir/best.pt, but out_dir is None; pass out_dir")
        if checkpoint_every is not None and out_dir is None:
            warnings.warn("checkpoint_every is set but out_dir is None: no checkpoints will be written",
                          stacklevel=2)

        self.ctx: DistContext | None = init_distributed() if distributed is not False else None
        self.device = self.ctx.device if self.ctx is not None else resolve_device(device)
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.split_backward = bool(split_backward)
        self.module = model.to(self.device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.module
        if self.ctx is not None:
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
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
            logger.info("no seed given; using seed %d", seed)
        self.seed = int(seed)
        self.progress = progress
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.folder = RunFolder(self.out_dir) if self.out_dir is not None else None  # owns the files
        self.checkpoint_every = checkpoint_every
        self.arch = dict(arch) if arch is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.keep_best = keep_best
        self.best: dict[str, Any] | None = None
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._accum = dict.fromkeys(ACCUM_KEYS, 0.0)
        self._target_epochs: int | None = None
        self._last_stats: Tensor | None = None
        self._last_checkpoint: dict[str, Any] | None = None
        self._num_classes: int | None = None
        self._dtype_noted = False  # the conversion of batches to the model's dtype is logged once
        self._batchnorm = _has_batchnorm(self.module)
        if self.ctx is not None and self.ctx.is_main:
            logger.info("distributed training on %d processes", self.ctx.world_size)

    # ------------------------------------------------------------------ one step
    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
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

    def _to_device(self, x: Any, y: Any) -> tuple[Tensor, Tensor]:
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
                    self._loss(self.module(x), y)
            with torch.enable_grad():
                x_adv = self.adversary(x, y)
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
            raise ValueError(f"adversary: expected adversarial images of shape {tuple(x.shape)}, got {got}")
        return x_adv.detach().to(self.device)

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
        self._check_gradients(loss)
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

    def _stop(self, what: str, detail: str, advice: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        msg = (f"{what} at {self._where()} ({detail}). The optimizer step was skipped, the gradients "
               f"cleared and training stopped; {self._kept_message()}. {advice}")
        logger.error(msg)
        raise NonFiniteLossError(msg)

    def _check_finite(self, loss: Tensor, task: Tensor, reg: Tensor, output: Tensor, y: Tensor) -> None:
        n = float(y.shape[0])
        correct = (output.detach().argmax(dim=1) == y).sum().to(loss.dtype)
        stats = torch.stack([loss.detach() * n, task.detach() * n, reg.detach() * n, correct,
                             loss.new_tensor(n)])
        stats = all_reduce_sum(stats)  # global sums; NaN on any rank is NaN on all ranks
        self._last_stats = stats
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

        Raises:
            ValueError: an empty loader, or ``labels`` that are not class indices of the model.
        """
        loss_sum, correct, count = 0.0, 0, 0
        with preserve_modes(self.module):  # each module's own mode comes back
            self.module.eval()
            for batch in loader:
                x, y = self._to_device(*split_batch(batch))
                if attack is not None:
                    if self._num_classes is None:
                        self._loss(self._eval_forward(x), y)
                    with torch.enable_grad():
                        x = attack(x, y).detach()
                out = self._eval_forward(x)
                loss_sum += float(self._loss(out, y).sum())
                correct += int((out.argmax(dim=1) == y).sum())
                count += int(y.shape[0])
        if count == 0:
            raise ValueError("loader: expected at least one batch to evaluate, got an empty loader")
        return {"loss": loss_sum / count, "acc": correct / count, "n": count}
