"""Shared plumbing of the flow attacks: self-description, checks of the model's output, mode
handling, flow to image.

Input validation lives in :mod:`torchattacks_deform.validation` (``check_non_negative`` and
``check_norm`` of earlier versions are gone: use ``check_number`` and ``check_choice``), the
losses in :mod:`torchattacks_deform.losses` (``margin_loss`` stays importable from here).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn

from ._compat import TorchattacksAttack
from .flow import _PADDING_MODES, NORMS, warp
from .losses import attack_loss, margin_loss
from .modes import restore_modes, save_modes
from .validation import (
    check_bool,
    check_choice,
    check_images,
    check_labels,
    check_logits,
    check_member_budget,
    check_number,
)

__all__ = [
    "ATTACK_KINDS",
    "AttackInfo",
    "FlowAttack",
    "SPACES",
    "check_model_dtype",
    "margin_loss",
    "seeded_generator",
]

#: The categories of :class:`AttackInfo`: the paper's four, suites of attacks, and "custom" for
#: attacks from elsewhere that do not say.
ATTACK_KINDS = ("single-step", "multi-step", "optimization", "gradient-free", "suite", "custom")
#: What an attack perturbs: a flow (every attack here) or the pixel values (torchattacks').
SPACES = ("flow", "pixel")


@dataclass(frozen=True)
class AttackInfo:
    """What an attack class is, in the terms of the evaluation harness (one per class).

    Attributes:
        kind: one of :data:`ATTACK_KINDS`.
        uses_gradients: False for attacks that only query model outputs.
        budget_arg: the constructor argument that receives the budget (pixels for flows).
        space: what the attack perturbs: ``"flow"`` (every attack here) or ``"pixel"``.

    Example:
        >>> AttackInfo("multi-step", True, "eps")
        AttackInfo(kind='multi-step', uses_gradients=True, budget_arg='eps', space='flow')
        >>> AttackInfo("iterative", True, "eps")
        Traceback (most recent call last):
        ...
        ValueError: kind: expected one of ('single-step', ..., 'custom'), got 'iterative'
    """

    kind: str
    uses_gradients: bool
    budget_arg: str
    space: str = "flow"

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", ATTACK_KINDS)
        check_bool(self.uses_gradients, "uses_gradients")
        if not isinstance(self.budget_arg, str) or not self.budget_arg.isidentifier():
            raise ValueError(f"budget_arg: expected an argument name, got {self.budget_arg!r}")
        check_choice(self.space, "space", SPACES)


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """An attack's own generator on ``device`` seeded with ``seed`` (None: draw from the global RNG)."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def check_model_dtype(model: nn.Module, images: Tensor, autocast_dtype: torch.dtype | None = None) -> None:
    """Raise ``TypeError`` unless ``images`` have the dtype of the model's floating parameters.

    Under autocast (``set_precision``) images in the autocast dtype are accepted too. Models
    without floating-point parameters are not checked.

    Example:
        >>> check_model_dtype(torch.nn.Linear(4, 2), torch.rand(2, 1, 2, 2, dtype=torch.float64))
        Traceback (most recent call last):
        ...
        TypeError: images: expected dtype torch.float32 like the model's parameters, got torch.float64 ...
    """
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and images.dtype not in (param.dtype, autocast_dtype):
        raise TypeError(f"images: expected dtype {param.dtype} like the model's parameters, got {images.dtype} "
                        "(convert the images, or use set_precision for mixed precision)")


def _stats(values: Any, name: str, positive: bool) -> list[float]:
    """``mean``/``std`` of ``set_normalization_used`` as a list of finite floats (std > 0)."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # tensors, numpy arrays and numpy scalars
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise TypeError(f"{name}: expected a non-empty sequence of numbers (one per channel, or one), "
                        f"got {type(values).__name__} {values!r}")
    return [float(check_number(v, f"{name}[{i}]", minimum=0 if positive else None, exclusive_minimum=positive))
            for i, v in enumerate(values)]


class FlowAttack(TorchattacksAttack):
    """Base class of the flow attacks: a torchattacks ``Attack`` that searches a flow.

    Subclasses implement :meth:`find_flow`, which gets validated ``[0, 1]`` images on the
    attack's device and the labels to attack (the target labels in targeted mode) and returns
    a flow in pixels, and declare ``info``, :meth:`cost` (and :meth:`budget_norm` where the
    budget is not measured in the ``norm`` argument). This class turns the flow into images
    with :func:`warp`, exposes :meth:`get_flow`, checks every model output (finite logits of
    shape ``(B, K)``, labels in ``[0, K)``), and makes ``__call__`` restore the model's mode and
    the normalization state even when the attack raises.

    Args:
        name: attack name, as in torchattacks.
        model: classifier returning logits.
        padding_mode: padding of :func:`warp`.

    Attributes:
        query_count: images the model has classified through this attack, over all calls
            (every forward, with or without a backward, counts its batch size).
    """

    info: ClassVar[AttackInfo]

    def __init__(self, name: str, model: nn.Module, padding_mode: str = "border") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        check_choice(padding_mode, "padding_mode", _PADDING_MODES)
        super().__init__(name, model)
        self.supported_mode = ["default", "targeted"]
        self.padding_mode = padding_mode
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False
        self.query_count = 0
        # A tuple, never a list: torchattacks' __setattr__ compares the items of a list with
        # ``==`` (ambiguous for tensors).
        self._pending_labels: tuple[tuple[Tensor, str], ...] = ()

    # -- self-description ---------------------------------------------------------------
    @classmethod
    def _param(cls, params: Mapping[str, Any], name: str) -> Any:
        """``params[name]``, else the constructor's default (None when it has none)."""
        if name in params:
            return params[name]
        p = inspect.signature(cls.__init__).parameters.get(name)
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    @classmethod
    def budget_norm(cls, params: Mapping[str, Any]) -> str:
        """The norm the budget is measured in: ``params["norm"]``, else the default ``norm``."""
        norm = cls._param(params, "norm")
        return str(check_choice("Linf" if norm is None else norm, "norm", NORMS))

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """Worst-case forward+backward-equivalents per example. Implemented by subclasses."""
        raise NotImplementedError

    def require_budget(self, eps: float, norm: str, name: str) -> None:
        """Raise ``ValueError`` (naming ``name``) unless this attack's budget is ``eps`` in ``norm``.

        The budget is the constructor argument ``info.budget_arg`` and its norm
        :meth:`budget_norm` (:func:`~torchattacks_deform.validation.check_member_budget`).
        """
        arg = type(self).info.budget_arg
        check_member_budget(getattr(self, arg, None), type(self).budget_norm(vars(self)), eps, norm, name, arg)

    # -- settings -----------------------------------------------------------------------
    def set_precision(self, autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        """Run the model in mixed precision and/or channels-last memory format (both off by default).

        Args:
            autocast_dtype: ``torch.bfloat16`` or ``torch.float16`` runs every model call of the
                attack under ``torch.autocast`` of the images' device type; None (default)
                runs it in the images' dtype.
            channels_last: pass the images to the model in ``torch.channels_last`` memory
                format (convert the model itself with ``model.to(memory_format=...)`` for
                the full benefit on CUDA).

        Convention:
            Only the model runs in reduced precision: the flow, the warp, the losses, the
            projection and the returned images stay in the images' dtype, and the logits are
            cast back to it before any loss.

        Example:
            >>> from torchattacks_deform import FlowFGSM
            >>> atk = FlowFGSM(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)))
            >>> atk.set_precision(torch.bfloat16)
            >>> atk(torch.rand(2, 1, 4, 4), torch.tensor([0, 1])).dtype
            torch.float32
        """
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"autocast_dtype: expected None, torch.bfloat16 or torch.float16, got {autocast_dtype!r}"
            )
        check_bool(channels_last, "channels_last")
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last

    def set_normalization_used(self, mean: Any, std: Any) -> None:
        """torchattacks' ``set_normalization_used`` with checked statistics.

        Args:
            mean: per-channel means (or one for all channels), finite.
            std: per-channel standard deviations (or one), finite and > 0.

        Raises:
            ValueError: non-finite values, ``std <= 0``, or ``mean`` and ``std`` of different
                lengths. At call time, statistics whose length is neither 1 nor the images'
                channel count are refused too.

        Example:
            >>> from torchattacks_deform import FlowFGSM
            >>> atk = FlowFGSM(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)))
            >>> atk.set_normalization_used([0.5], [0.0])
            Traceback (most recent call last):
            ...
            ValueError: std[0]: expected a finite number > 0, got 0.0
        """
        mean_l, std_l = _stats(mean, "mean", positive=False), _stats(std, "std", positive=True)
        if len(mean_l) != len(std_l):
            raise ValueError(f"set_normalization_used: expected mean and std of the same length, "
                             f"got {len(mean_l)} and {len(std_l)} values")
        super().set_normalization_used(mean_l, std_l)

    def _check_channels(self, images: Tensor, name: str = "images") -> None:
        if self.normalization_used is None or not isinstance(images, Tensor) or images.dim() != 4:
            return
        n = self.normalization_used["mean"].shape[1]
        if n not in (1, images.shape[1]):
            raise ValueError(
                f"set_normalization_used: mean/std have {n} values; expected 1 or one per channel of "
                f"{name} ({images.shape[1]} channels), got {name} of shape {tuple(images.shape)}"
            )

    # -- model calls ----------------------------------------------------------------------
    def get_logits(self, inputs: Tensor, labels: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        """torchattacks' ``get_logits`` with :meth:`set_precision` and checks of the output.

        Raises:
            TypeError, ValueError: the model did not return finite logits of shape ``(B, K)``,
                ``K >= 2``; or (first call of an attack call) labels outside ``[0, K)``.
        """
        if self._normalization_applied is False:
            self._check_channels(inputs)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            logits = super().get_logits(inputs, labels, *args, **kwargs)
        else:
            with torch.autocast(device_type=inputs.device.type, dtype=self.autocast_dtype):
                logits = super().get_logits(inputs, labels, *args, **kwargs)
            if isinstance(logits, Tensor):
                logits = logits.to(inputs.dtype)
        check_logits(logits, inputs.shape[0], finite=True)
        self.query_count += int(inputs.shape[0])
        if self._pending_labels:
            pending, self._pending_labels = self._pending_labels, ()
            for values, name in pending:
                check_labels(values, values.shape[0], num_classes=int(logits.shape[1]), name=name)
        return logits  # type: ignore[no-any-return]

    # -- subclasses -------------------------------------------------------------------
    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        """Return the adversarial flow ``(B, 2, H, W)`` in pixels. Implemented by subclasses."""
        raise NotImplementedError

    # -- torchattacks API -------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Return detached adversarial images in ``[0, 1]``, same shape and dtype as ``images``."""
        images, labels = self._prepare(images, labels)
        flow = self.find_flow(images, labels)
        return self.apply_flow(images, flow)

    def apply_flow(self, images: Tensor, flow: Tensor) -> Tensor:
        """Warp ``[0, 1]`` images by ``flow`` (pixels) and return detached images in [0, 1]."""
        return warp(images, flow.to(images.dtype), padding_mode=self.padding_mode).clamp(0, 1).detach()

    def _check_call_inputs(self, inputs: Any) -> None:
        if self._normalization_applied is True:  # inverse_normalize must get a (B, C, H, W) batch
            check_images(inputs, layout_only=True)
            self._check_channels(inputs)

    @contextlib.contextmanager
    def _restoring_state(self, inputs: Any) -> Iterator[tuple[bool, bool | None]]:
        """Check ``inputs``; on exit restore the model's mode and the normalization flag, and
        drop pending label checks. Yields the given ``(training, normalization_applied)``."""
        self._check_call_inputs(inputs)
        given_training = self.model.training
        normalization_applied = self._normalization_applied
        modes = save_modes(self.model)
        try:
            yield given_training, normalization_applied
        finally:
            self._pending_labels = ()
            restore_modes(modes)  # each module's own mode (a frozen batch norm stays in eval mode)
            if normalization_applied is not None and self._normalization_applied != normalization_applied:
                self._set_normalization_applied(normalization_applied)

    def __call__(self, inputs: Tensor, labels: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        with self._restoring_state(inputs):
            return super().__call__(inputs, labels, *args, **kwargs)  # type: ignore[no-any-return]

    def get_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        """Run the attack and return the flow it found, in pixels, detached.

        ``images`` are given as to ``__call__`` (normalized if ``set_normalization_used`` was
        called). ``warp(images01, flow)`` reproduces the adversarial images, where
        ``images01`` are the ``[0, 1]`` images.
        """
        with self._restoring_state(images) as (given_training, normalization_applied):
            self._change_model_mode(given_training)
            if normalization_applied is True:
                # As torchattacks' __call__ does: attack [0, 1] images, and let get_logits
                # normalize them for the model.
                images = self.inverse_normalize(images)
                self._set_normalization_applied(False)
            images, labels = self._prepare(images, labels)
            return self.find_flow(images, labels).detach()

    # -- helpers ----------------------------------------------------------------------
    def _prepare(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Checked copies on the attack's device; labels are checked against the number of
        classes at the first model call (:meth:`get_logits`), targets too in targeted mode."""
        check_images(images)
        check_labels(labels, images.shape[0])
        check_model_dtype(self.model, images, self.autocast_dtype)
        device = self.device if self.device is not None else images.device
        images = images.detach().to(device).clone().clamp_(0, 1)
        labels = labels.detach().to(device).long().clone()
        self._pending_labels = ((labels, "labels"),)
        if self.targeted:
            targets = self.get_target_label(images, labels)
            check_labels(targets, images.shape[0], name="target labels")
            labels = targets.detach().to(device).long()
            self._pending_labels = (*self._pending_labels, (labels, "target labels"))
        return images, labels

    def loss_sign(self) -> float:
        """+1 to ascend the loss of the true label, -1 to descend the loss of the target."""
        return -1.0 if self.targeted else 1.0

    def warp(self, images: Tensor, flow: Tensor) -> Tensor:
        """:func:`warp` with this attack's padding mode (no clamping, differentiable).

        A flow that became non-finite (a diverging iterate) is refused with a message that
        names the attack and the flow.
        """
        try:
            return warp(images, flow, padding_mode=self.padding_mode)
        except ValueError as err:
            if not str(err).startswith("flow:"):
                raise
            raise ValueError(f"{self.attack}: its iterate diverged ({err}); check the step sizes "
                             "and weights of the attack") from err

    def is_successful(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean ``(B,)``: misclassified (default mode) or classified as the target (targeted)."""
        pred = logits.argmax(dim=1)
        return pred == labels if self.targeted else pred != labels

    def attack_loss(self, logits: Tensor, labels: Tensor, loss: str = "ce") -> Tensor:
        """Per-example objective the attack ascends (:func:`~torchattacks_deform.losses.attack_loss`)."""
        return attack_loss(logits, labels, loss, self.targeted)

    def loss_flow_gradient(self, images: Tensor, flow: Tensor, labels: Tensor, loss: str = "ce") -> Tensor:
        """Gradient w.r.t. ``flow`` of the summed :meth:`attack_loss` (ascending it attacks).

        One warp, one forward and one backward of the model, through
        :func:`torch.autograd.grad` w.r.t. the flow only (parameters' ``.grad`` untouched).
        """
        flow = flow.detach().requires_grad_(True)
        logits = self.get_logits(self.warp(images, flow))
        (grad,) = torch.autograd.grad(self.attack_loss(logits, labels, loss).sum(), flow)
        return grad

    def ce_flow_gradient(self, images: Tensor, flow: Tensor, labels: Tensor) -> Tensor:
        """:meth:`loss_flow_gradient` with the cross-entropy (ascended; descended toward targets)."""
        return self.loss_flow_gradient(images, flow, labels, "ce")
