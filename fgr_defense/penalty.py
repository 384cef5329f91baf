"""The unified penalty of eq. (18) in as few passes as possible: :func:`gradient_penalty`.

The conventions (normalization, the ``"paper"`` and ``"authors"`` variants, the cost) are
described in :mod:`fgr_defense.regularizers`, whose classes call this function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from torchattacks_deform.validation import check_choice, check_images, check_number

from .constants import VARIANTS
from .losses import LossFn, _check_q, gradient_norm_sq, per_example_cross_entropy
from .transforms import Transform

__all__ = ["RegularizerOutput", "gradient_penalty"]


@dataclass
class RegularizerOutput:
    """What :meth:`GradientRegularizer.compute` hands to the trainer.

    Attributes:
        penalty: ``weight * raw_penalty``, a scalar with its graph (add it to the task loss).
        raw_penalty: the unweighted mean squared gradient norm ``R`` (with graph).
        task_loss: mean task loss of the forward pass the regularizer made (clean ``x`` for
            ``variant="paper"``, ``z`` for ``"authors"``), or None when it made none.
        output: the logits of that forward pass, or None.
        backpropagated: True when the ``backward`` callback of :func:`gradient_penalty` was
            called on both terms (their gradients are already accumulated; every tensor of
            the result is then detached).
    """

    penalty: Tensor
    raw_penalty: Tensor
    task_loss: Optional[Tensor] = None
    output: Optional[Tensor] = None
    backpropagated: bool = False


def gradient_penalty(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    transform: Transform,
    *,
    sigma: float = 0.0,
    q: float = 2.0,
    variant: str = "paper",
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    with_penalty: bool = True,
    backward: Callable[[Tensor], None] | None = None,
    backward_weight: float = 1.0,
) -> RegularizerOutput:
    r"""The unweighted eq. (18) penalty, the task loss and the logits, in as few passes as possible.

    .. math::
        R = \frac{1}{B}\sum_b \|\nabla_{n_b} \ell_b(\tau(x, n_0 + r), y)\|_q^2,
        \quad r \sim \mathcal{N}(0, \sigma^2)

    (``variant="authors"``: evaluated at ``n0`` on
    ``z = clamp(transform.random_start_images(x, n0 + r), 0, 1)``, and the task loss on ``z``).
    ``penalty`` and ``raw_penalty`` of the result are both ``R``.

    Convention:
        ``r = sigma * torch.randn(n0.shape)`` from ``generator`` (or the default generator),
        drawn once per call, before any forward pass. Inputs are never modified in place.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, K)``.
        x: images ``(B, C, H, W)``.
        y: targets ``(B,)``.
        transform: the modification function (:mod:`fgr_defense.transforms`).
        sigma: random-start std in the units of ``n`` (pixels for flows); 0 disables it.
        q: norm order of the gradient (the paper: 2; ``float("inf")`` is the L-inf norm).
        variant: ``"paper"`` or ``"authors"``.
        loss_fn: per-example loss ``(logits, y) -> (B,)``; default cross-entropy.
        generator: random generator for the random start.
        with_penalty: False skips the gradient (``R = 0``; the task loss is still computed).
        backward: optional ``loss -> None`` (e.g. ``Tensor.backward``). When the task loss
            needs a *separate* clean forward pass (``variant="paper"`` with ``sigma > 0``),
            it is called on ``backward_weight * R`` as soon as ``R`` is computed and then on
            the task loss, so that the penalty's double-backprop graph is freed before the
            clean pass builds its graph: the peak memory is that of the larger pass, not of
            both. Same values and gradients (summed in another order). Ignored (never called)
            when the task loss shares the penalty's forward.
        backward_weight: the factor of ``R`` passed to ``backward`` (the regularizer's weight).

    Returns:
        :class:`RegularizerOutput` with ``task_loss`` and ``output`` always set.

    Example:
        >>> from fgr_defense.transforms import Flow
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> out = gradient_penalty(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]), Flow())
        >>> out.raw_penalty.shape, out.output.shape, out.raw_penalty.requires_grad
        (torch.Size([]), torch.Size([2, 3]), True)
    """
    check_images(x, "x", layout_only=True)
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected {x.shape[0]} targets (one per image), got {got}")
    check_choice(variant, "variant", VARIANTS)
    sigma = float(check_number(sigma, "sigma", minimum=0))
    q = _check_q(q)
    loss_fn = loss_fn or per_example_cross_entropy
    x = x.detach()
    n0 = transform.identity(x)
    n = n0 + transform.random_start(n0, sigma, generator) if sigma > 0 else n0

    if variant == "authors":
        # their random start: warp with zeros padding, clamp to [0, 1], detach
        base = transform.random_start_images(x, n).clamp(0.0, 1.0).detach() if sigma > 0 else x
        point = n0 if sigma > 0 else n
        shared = True  # the task loss is taken on ``base`` = z, in the penalty's forward
    else:
        base, point = x, n
        shared = sigma == 0  # at n0 the modified batch is x itself: one forward for both

    if not with_penalty:
        output = model(base)
        task = loss_fn(output, y).mean()
        zero = task.new_zeros(())
        return RegularizerOutput(zero, zero, task, output)

    x_mod, pullback = transform.linearize(base, point)
    if point is n0:  # tau(x, n0) == x by the contract of Transform.identity: use x itself
        x_mod = base
    x_mod = x_mod.detach().requires_grad_(True)
    with torch.enable_grad():
        # The penalty's pass first, then (eq. 16) the separate clean pass for the task loss.
        mod_out = model(x_mod)
        losses = loss_fn(mod_out, y)
        (grad_x,) = torch.autograd.grad(losses.sum(), x_mod, create_graph=True)
        grad_n = pullback(grad_x)
        raw = gradient_norm_sq(grad_n, q).mean()
        if shared:
            return RegularizerOutput(raw, raw, losses.mean(), mod_out)
        if backward is not None:  # free the penalty's double-backprop graph before the clean pass
            backward(raw * backward_weight)
            raw, mod_out = raw.detach(), mod_out.detach()
        output = model(x)
        task = loss_fn(output, y).mean()
        if backward is not None:
            backward(task)
            return RegularizerOutput(raw, raw, task.detach(), output.detach(), backpropagated=True)
    return RegularizerOutput(raw, raw, task, output)
