"""What users have (tensors, numpy arrays, DataLoaders) turned into checked ``(images, labels)`` batches."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .validation import check_images, check_labels

__all__ = ["as_images", "as_labels", "batches"]

_DIVIDE = "divide by 255 first, e.g. images.float() / 255 or images.astype('float32') / 255"


def as_images(value: Any, name: str = "images") -> Tensor:
    """A checked float ``(N, C, H, W)`` tensor in ``[0, 1]`` from a tensor or a numpy array.

    Example:
        >>> as_images(np.zeros((2, 1, 4, 4), dtype=np.float32)).shape
        torch.Size([2, 1, 4, 4])
        >>> as_images(np.zeros((2, 1, 4, 4), dtype=np.uint8))
        Traceback (most recent call last):
        ...
        TypeError: images: expected floating-point values in [0, 1], got integer dtype uint8 (divide by 255 ...)
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "uib":
            raise TypeError(f"{name}: expected floating-point values in [0, 1], got integer dtype {value.dtype} "
                            f"({_DIVIDE})")
        if value.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float array (N, C, H, W) in [0, 1], got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor) and not value.is_floating_point() and not value.is_complex():
        raise TypeError(f"{name}: expected floating-point values in [0, 1], got integer dtype {value.dtype} "
                        f"({_DIVIDE})")
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a float tensor or numpy array (N, C, H, W) in [0, 1], or a "
                        f"DataLoader / iterable of (images, labels) batches, got {type(value).__name__}")
    check_images(value, name)
    return value


def as_labels(value: Any, n: int, name: str = "labels") -> Tensor:
    """Checked ``(n,)`` int64 class indices from a tensor, a numpy array or a list of ints.

    Example:
        >>> as_labels(np.array([1, 2], dtype=np.uint8), 2)
        tensor([1, 2])
    """
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "ui":
            raise TypeError(f"{name}: expected integer class indices, got dtype {value.dtype}")
        value = torch.from_numpy(value.astype(np.int64))
    check_labels(value, n, name=name)
    return value.long()  # type: ignore[no-any-return]


def batches(images: Any, labels: Any, batch_size: int) -> tuple[Iterator[tuple[Tensor, Tensor]], Optional[int]]:
    """Checked batches of at most ``batch_size`` examples, and their number when it is known.

    ``images`` is a tensor/array with ``labels``, or an iterable of ``(images, labels)``
    batches (a DataLoader) with ``labels=None``; larger batches are split.

    Example:
        >>> it, n = batches(torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), 2)
        >>> n, [x.shape[0] for x, _ in it]
        (3, [2, 2, 1])
    """
    if isinstance(images, (Tensor, np.ndarray)):
        if labels is None:
            raise ValueError("labels: required with a tensor or array of images (or pass a DataLoader of "
                             "(images, labels) batches as images)")
        x = as_images(images)
        y = as_labels(labels, x.shape[0])
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)), \
            math.ceil(x.shape[0] / batch_size)
    if labels is not None:
        raise ValueError(f"labels: expected None when images is a DataLoader or iterable of (images, labels) "
                         f"batches, got {type(labels).__name__}")
    if isinstance(images, (str, bytes, Mapping)) or not isinstance(images, Iterable):
        raise TypeError(f"images: expected a float tensor or numpy array (N, C, H, W) in [0, 1], or a DataLoader"
                        f" / iterable of (images, labels) batches, got {type(images).__name__}")
    try:
        total: Optional[int] = len(images)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return _iterate(images, batch_size), total


def _iterate(loader: Iterable[Any], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"images: expected batches of (images, labels) pairs, got batch {i} of type "
                            f"{type(batch).__name__}")
        x = as_images(batch[0], f"images (batch {i})")
        y = as_labels(batch[1], x.shape[0], f"labels (batch {i})")
        for j in range(0, x.shape[0], batch_size):
            yield x[j : j + batch_size], y[j : j + batch_size]
