"""Checks of flows and of the images they warp (shapes, dtypes, finiteness) for :mod:`.flow`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_flow"]


def check_flow(flow: Tensor, images: Tensor | None = None, name: str = "flow") -> None:
    """Raise a clear error unless ``flow`` follows the repository's flow convention.

    Args:
        flow: candidate flow, expected ``(B, 2, H, W)`` floating point.
        images: if given, the ``(B, C, H, W)`` images the flow will be applied to.
        name: the argument name to use in error messages.

    Raises:
        TypeError: ``flow`` is not a floating-point tensor.
        ValueError: the shape does not match the convention or the images.

    Example:
        >>> check_flow(torch.zeros(2, 2, 8, 8), torch.rand(2, 3, 8, 8))
        >>> check_flow(torch.zeros(2, 3, 8, 8))
        Traceback (most recent call last):
        ...
        ValueError: flow: expected shape (B, 2, H, W), got (2, 3, 8, 8)
    """
    if not isinstance(flow, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(flow).__name__}")
    if not flow.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {flow.dtype}")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (B, 2, H, W), got {tuple(flow.shape)}")
    if flow.shape[2] < 1 or flow.shape[3] < 1:
        raise ValueError(f"{name}: expected shape (B, 2, H, W) with H, W >= 1, got {tuple(flow.shape)}")
    if images is not None:
        b, _, h, w = images.shape
        if flow.shape[0] != b or flow.shape[2:] != images.shape[2:]:
            raise ValueError(
                f"{name}: expected shape ({b}, 2, {h}, {w}) to match images "
                f"{tuple(images.shape)}, got {tuple(flow.shape)}"
            )


def _max_displacement(dtype: torch.dtype) -> float:
    """The largest flow component (pixels) whose sampling position ``grid_sample`` can hold.

    The normalized grid is ``(p + v) * s - 1`` with ``s <= 2`` and ``grid_sample``
    unnormalizes it again; an eighth of the dtype's range keeps every intermediate finite.
    Beyond it (and for NaN or inf, which crash PyTorch's CPU ``grid_sample`` backward with
    border padding) :func:`warp` refuses the flow.
    """
    return float(torch.finfo(dtype).max) / 8


def _check_finite(images: Tensor, flow: Tensor) -> bool:
    """Raise unless ``images`` are finite and every flow component is finite and representable.

    Returns whether some flow component is exactly zero (the identity patch of :func:`warp`
    is needed). Costs one ``aminmax`` pass over the flow's magnitude (which the identity patch
    needs anyway), one over the images, and one host transfer (a device sync on CUDA).
    ``aminmax`` propagates NaN, and is several times faster on CPU than ``isfinite().all()``.
    """
    limit = _max_displacement(flow.dtype)
    if flow.numel() == 0:
        return False
    with torch.no_grad():
        magnitude = flow.detach().abs()
        lo, hi = magnitude.aminmax()
        images_lo, images_hi = images.detach().aminmax()
        low, high, img_low, img_high = torch.stack([lo, hi, images_lo, images_hi]).tolist()
    flow_ok = high <= limit  # False for NaN
    images_ok = math.isfinite(img_low) and math.isfinite(img_high)
    has_zero = low == 0
    if not flow_ok:
        bad = int((~torch.isfinite(flow.detach())).sum())
        if bad:
            raise ValueError(f"flow: expected finite values, got NaN or inf in {bad} of {flow.numel()} components")
        raise ValueError(
            f"flow: expected displacements of at most {limit:.3g} px (sampling positions must stay "
            f"finite in {flow.dtype}), got {float(magnitude.max()):.3g} px"
        )
    if not images_ok:
        bad = int((~torch.isfinite(images.detach())).sum())
        raise ValueError(f"images: expected finite values, got NaN or inf in {bad} of {images.numel()} values")
    return has_zero
