"""Unit conversions of flows and budgets between pixels and normalized grid units.

Convention:
    Normalized units span ``[-1, 1]`` across an axis. With ``align_corners=True`` (the authors'
    FGR code), 1 px = 2/(size-1); with ``align_corners=False`` (PAT, MultiRobustBench's
    StAdv), 1 px = 2/size. Channel 0 of a flow (x) scales with W, channel 1 (y) with H.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from ._flowcheck import check_flow
from .validation import check_bool, check_number

__all__ = ["flow_to_normalized", "flow_to_pixels", "normalized_to_pixels", "pixels_to_normalized"]

Number = Union[float, int]


def _pixel_size(size: int, align_corners: bool) -> float:
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size: expected an int >= 2 (pixels along the axis), got {size!r}")
    check_bool(align_corners, "align_corners")
    return 2.0 / (size - 1) if align_corners else 2.0 / size


def _check_value(value: Number | Tensor) -> None:
    if isinstance(value, Tensor):
        if not (value.is_floating_point() or value.dtype in _INT_DTYPES):
            raise TypeError(f"value: expected a real tensor of displacements, got dtype {value.dtype}")
    else:
        check_number(value, "value")


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def pixels_to_normalized(
    value: Number | Tensor, size: int, align_corners: bool = True
) -> Number | Tensor:
    """Convert a displacement or budget along one axis from pixels to normalized grid units.

    Convention:
        Normalized units span ``[-1, 1]`` across the axis. With ``align_corners=True`` (the
        authors' FGR code), 1 px = 2/(size-1); with ``align_corners=False`` (PAT,
        MultiRobustBench's StAdv), 1 px = 2/size.

    Args:
        value: displacement(s) in pixels: a finite number or a real tensor.
        size: number of pixels along the axis (W for x, H for y), an int >= 2.
        align_corners: the convention of the target units.

    Raises:
        ValueError: a non-finite number, or ``size`` not an int >= 2.
        TypeError: ``value`` neither a number nor a real tensor, ``align_corners`` not a bool.

    Example:
        >>> pixels_to_normalized(1.0, 32, align_corners=False)
        0.0625
        >>> round(pixels_to_normalized(1.0, 32, align_corners=True), 6)
        0.064516
    """
    _check_value(value)
    return value * _pixel_size(size, align_corners)


def normalized_to_pixels(
    value: Number | Tensor, size: int, align_corners: bool = True
) -> Number | Tensor:
    """Convert a displacement or budget along one axis from normalized grid units to pixels.

    Inverse of :func:`pixels_to_normalized`; see there for the convention.

    Example:
        >>> round(normalized_to_pixels(0.01, 32, align_corners=True), 4)  # the paper's sigma
        0.155
        >>> normalized_to_pixels(0.05, 32, align_corners=False)  # PAT's StAdv bound
        0.8
    """
    _check_value(value)
    return value / _pixel_size(size, align_corners)


def flow_to_normalized(flow: Tensor, align_corners: bool = True) -> Tensor:
    """Convert a ``(B, 2, H, W)`` pixel flow to normalized grid units, channel by channel.

    Channel 0 (x) is scaled with W, channel 1 (y) with H.

    Example:
        >>> v = torch.ones(1, 2, 5, 3)
        >>> flow_to_normalized(v)[0, :, 0, 0]
        tensor([1.0000, 0.5000])
    """
    check_flow(flow)
    h, w = flow.shape[2], flow.shape[3]
    scale = flow.new_tensor([_pixel_size(w, align_corners), _pixel_size(h, align_corners)])
    return flow * scale.reshape(1, 2, 1, 1)


def flow_to_pixels(flow: Tensor, align_corners: bool = True) -> Tensor:
    """Convert a ``(B, 2, H, W)`` flow in normalized grid units to pixels.

    Inverse of :func:`flow_to_normalized`.

    Example:
        >>> v = torch.ones(1, 2, 5, 3)
        >>> torch.allclose(flow_to_pixels(flow_to_normalized(v)), v)
        True
    """
    check_flow(flow)
    h, w = flow.shape[2], flow.shape[3]
    scale = flow.new_tensor([_pixel_size(w, align_corners), _pixel_size(h, align_corners)])
    return flow / scale.reshape(1, 2, 1, 1)
