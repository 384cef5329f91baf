"""Shared plumbing of the flow attacks: input checks, mode handling, flow to image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._compat import TorchattacksAttack
from .flow import NORMS, warp

__all__ = ["FlowAttack", "check_images", "check_labels", "check_non_negative", "check_norm", "margin_loss"]

# Images coming back from torchattacks' inverse normalization can overshoot [0, 1] by float
# rounding; accept that much and clamp.
_RANGE_TOL = 1e-5


def check_images(images: Any, name: str = "images") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``images`` is a finite (B, C, H, W) batch in [0, 1].

    Example:
        >>> check_images(torch.rand(2, 1, 4, 4))
        >>> check_images(torch.rand(2, 1, 4, 4) * 2)
        Traceback (most recent call last):
        ...
        ValueError: images: expected values in [0, 1], got range [...] (with set_normalization_used, ...)
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor in [0, 1], got dtype {images.dtype}"
        )
    if images.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(images.shape)}")
    if images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f"{name}: expected H >= 2 and W >= 2, got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
            " (with set_normalization_used, pass normalized images to the attack's __call__)"
        )


def check_labels(labels: Any, batch_size: int, name: str = "labels") -> None:
    """Raise unless ``labels`` is an integer tensor of shape ``(batch_size,)``.

    Example:
        >>> check_labels(torch.tensor([1, 2]), 2)
        >>> check_labels(torch.tensor([1, 2]), 3)
        Traceback (most recent call last):
        ...
        ValueError: labels: expected 3 labels (one per image), got shape (2,)
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name}: expected an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"{name}: expected {batch_size} labels (one per image), got shape {tuple(labels.shape)}"
        )


def check_non_negative(value: Any, name: str, integer: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a non-negative number."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    if value != value or value < 0:  # NaN or negative
        raise ValueError(f"{name}: expected a non-negative value, got {value}")


def check_norm(norm: Any) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")


class FlowAttack(TorchattacksAttack):
    """Base class of the flow attacks: a torchattacks ``Attack`` that searches a flow.

    Subclasses implement :meth:`find_flow`, which gets validated ``[0, 1]`` images on the
    attack's device and the labels to attack (the target labels in targeted mode) and returns
    a flow in pixels. This class turns the flow into images with :func:`warp`, exposes
    :meth:`get_flow`, and makes ``__call__`` restore the model's mode and the normalization
    state even when the attack raises.

    Args:
        name: attack name, as in torchattacks.
        model: classifier returning logits.
        padding_mode: padding of :func:`warp`.
    """

    def __init__(self, name: str, model: nn.Module, padding_mode: str = "border") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        super().__init__(name, model)
        self.supported_mode = ["default", "targeted"]
        self.padding_mode = padding_mode
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False

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
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last

    def get_logits(self, inputs: Tensor, labels: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        """torchattacks' ``get_logits`` with the precision settings of :meth:`set_precision`."""
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return super().get_logits(inputs, labels, *args, **kwargs)  # type: ignore[no-any-return]
        with torch.autocast(device_type=inputs.device.type, dtype=self.autocast_dtype):
            logits = super().get_logits(inputs, labels, *args, **kwargs)
        return logits.to(inputs.dtype)  # type: ignore[no-any-return]

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

    def __call__(self, inputs: Tensor, labels: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        given_training = self.model.training
        normalization_applied = self._normalization_applied
        try:
            return super().__call__(inputs, labels, *args, **kwargs)
        finally:
            self.model.train(given_training)
            if normalization_applied is not None and self._normalization_applied != normalization_applied:
                self._set_normalization_applied(normalization_applied)

    def get_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        """Run the attack and return the flow it found, in pixels, detached.

        ``images`` are given as to ``__call__`` (normalized if ``set_normalization_used`` was
        called). ``warp(images01, flow)`` reproduces the adversarial images, where
        ``images01`` are the ``[0, 1]`` images.
        """
        given_training = self.model.training
        normalization_applied = self._normalization_applied
        self._change_model_mode(given_training)
        try:
            if normalization_applied is True:
                # As torchattacks' __call__ does: attack [0, 1] images, and let get_logits
                # normalize them for the model.
                images = self.inverse_normalize(images)
                self._set_normalization_applied(False)
            images, labels = self._prepare(images, labels)
            return self.find_flow(images, labels).detach()
        finally:
            self.model.train(given_training)
            if normalization_applied is not None and self._normalization_applied != normalization_applied:
                self._set_normalization_applied(normalization_applied)

    # -- helpers ----------------------------------------------------------------------
    def _prepare(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_images(images)
        check_labels(labels, images.shape[0])
        device = self.device if self.device is not None else images.device
        images = images.detach().to(device).clone().clamp_(0, 1)
        labels = labels.detach().to(device).long().clone()
        if self.targeted:
            labels = self.get_target_label(images, labels).long()
        return images, labels

    def loss_sign(self) -> float:
        """+1 to ascend the loss of the true label, -1 to descend the loss of the target."""
        return -1.0 if self.targeted else 1.0

    def warp(self, images: Tensor, flow: Tensor) -> Tensor:
        """:func:`warp` with this attack's padding mode (no clamping, differentiable)."""
        return warp(images, flow, padding_mode=self.padding_mode)

    def is_successful(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean ``(B,)``: misclassified (default mode) or classified as the target (targeted)."""
        pred = logits.argmax(dim=1)
        return pred == labels if self.targeted else pred != labels

    def ce_flow_gradient(self, images: Tensor, flow: Tensor, labels: Tensor) -> Tensor:
        """Gradient w.r.t. ``flow`` of the attack's cross-entropy objective.

        One warp, one forward and one backward of the model, through
        :func:`torch.autograd.grad` w.r.t. the flow only (parameters' ``.grad`` untouched).
        The objective is the summed cross-entropy of ``labels`` (ascended in default mode)
        or minus that of the targets (targeted mode), so ascending it attacks the model.
        """
        flow = flow.detach().requires_grad_(True)
        logits = self.get_logits(self.warp(images, flow))
        loss = F.cross_entropy(logits, labels, reduction="sum") * self.loss_sign()
        (grad,) = torch.autograd.grad(loss, flow)
        return grad


def margin_loss(logits: Tensor, labels: Tensor, targeted: bool = False, kappa: float = 0.0) -> Tensor:
    r"""The Carlini-Wagner margin loss (their :math:`f_6`) per example; an attack minimizes it.

    .. math::
        \text{default: } \max(Z_y - \max_{j \ne y} Z_j, -\kappa), \qquad
        \text{targeted: } \max(\max_{j \ne t} Z_j - Z_t, -\kappa)

    It is negative exactly when the attack succeeds (ties aside); ``kappa`` is the confidence
    beyond which success is no longer rewarded (``float("inf")``: never clamped, as in PAT).

    Args:
        logits: ``(B, K)`` logits, ``K >= 2``.
        labels: ``(B,)`` true labels (default) or targets (targeted).
        targeted: which of the two forms.
        kappa: non-negative confidence.

    Example:
        >>> z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
        >>> margin_loss(z, torch.tensor([0, 1]), kappa=10.0)
        tensor([ 2., -3.])
        >>> margin_loss(z, torch.tensor([0, 1]))
        tensor([2., 0.])
        >>> margin_loss(z, torch.tensor([2, 2]), targeted=True, kappa=10.0)
        tensor([ 3., -3.])
    """
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    best_other = others.amax(dim=1)
    margin = best_other - picked if targeted else picked - best_other
    return margin.clamp_min(-float(kappa) if kappa else 0.0)  # 0.0, not -0.0
