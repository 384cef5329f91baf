"""Per-example losses and gradient norms shared by the regularizers and the trainer."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torchattacks_deform.validation import check_logits

__all__ = ["LossFn", "gradient_norm_sq", "per_example_cross_entropy"]

#: ``loss_fn(logits, targets) -> per-example losses (B,)``.
LossFn = Callable[[Tensor, Tensor], Tensor]


def per_example_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each example, shape ``(B,)``, after checking the logits' shape.

    Example:
        >>> per_example_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor([1.3863, 1.3863])
    """
    check_logits(logits, targets.shape[0] if isinstance(targets, Tensor) and targets.dim() > 0 else None)
    return F.cross_entropy(logits, targets, reduction="none")


def gradient_norm_sq(grad: Tensor, q: float = 2.0) -> Tensor:
    r"""Squared q-norm of each example's gradient, :math:`\|g_b\|_q^2`, shape ``(B,)``.

    Convention:
        The norm runs over all non-batch dimensions. ``q = 2`` is ``sum(g**2)`` (smooth at
        zero), ``q = inf`` is ``max|g|**2``, other ``q >= 1`` use ``(sum |g|^q)^(2/q)``.

    Example:
        >>> g = torch.tensor([[3.0, -4.0], [1.0, 1.0]])
        >>> gradient_norm_sq(g, 2), gradient_norm_sq(g, 1), gradient_norm_sq(g, float("inf"))
        (tensor([25.,  2.]), tensor([49.,  4.]), tensor([16.,  1.]))
    """
    _check_q(q)
    flat = grad.flatten(1)
    if q == 2:
        return flat.pow(2).sum(dim=1)
    if math.isinf(q):
        return flat.abs().amax(dim=1).pow(2)
    if q == 1:
        return flat.abs().sum(dim=1).pow(2)
    total = flat.abs().pow(q).sum(dim=1)
    return total.clamp_min(torch.finfo(total.dtype).tiny).pow(2.0 / q)


def _check_q(q: Any) -> float:
    """``q`` as a float: a finite norm order >= 1, or ``float("inf")`` (the documented L-inf norm)."""
    if isinstance(q, float) and math.isinf(q) and q > 0:
        return q
    if isinstance(q, bool) or not isinstance(q, (int, float)):
        raise TypeError(f"q: expected a norm order >= 1 or float('inf') (the L-inf norm), "
                        f"got {type(q).__name__} {q!r}")
    if not math.isfinite(q) or q < 1:
        raise ValueError(f"q: expected a norm order >= 1 or float('inf') (the L-inf norm), got {q!r}")
    return float(q)
