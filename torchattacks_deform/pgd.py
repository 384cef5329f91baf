r"""FlowPGD: projected gradient descent on the flow (eq. (2) of Xia & Li, on :math:`v`)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._base import FlowAttack, check_non_negative, check_norm
from .flow import project_flow

__all__ = ["FlowPGD", "ascent_direction", "random_flow"]


def ascent_direction(grad: Tensor, norm: str = "Linf") -> Tensor:
    r"""Steepest-ascent direction of unit size in ``norm`` for a ``(B, 2, H, W)`` gradient.

    ``"Linf"``: :math:`\mathrm{sign}(g)` (eqs. (1)-(2)); ``"L2"``: :math:`g / \|g\|_2` per
    example (zero where the gradient is zero).

    Example:
        >>> g = torch.zeros(1, 2, 2, 2)
        >>> g[0, 0, 0, 0], g[0, 1, 1, 1] = 3.0, -4.0
        >>> ascent_direction(g, "Linf")[0, :, 0, 0], ascent_direction(g, "L2")[0, 1, 1, 1]
        (tensor([1., 0.]), tensor(-0.8000))
    """
    check_norm(norm)
    if norm == "Linf":
        return grad.sign()
    norms = grad.flatten(1).norm(p=2, dim=1).reshape(-1, 1, 1, 1)
    return grad / norms.clamp_min(torch.finfo(grad.dtype).tiny)


def random_flow(like: Tensor, eps: float, norm: str = "Linf") -> Tensor:
    r"""A random flow in the ``norm`` ball of radius ``eps`` pixels, shaped like ``like``.

    ``"Linf"``: i.i.d. uniform components in ``[-eps, eps]``; ``"L2"``: a uniformly random
    direction scaled by a radius uniform in ``[0, eps]`` (as torchattacks' PGDL2). Uses the
    global torch RNG, so ``torch.manual_seed`` makes it reproducible.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> v = random_flow(torch.zeros(4, 2, 3, 3), 0.5)
        >>> bool(v.abs().max() <= 0.5)
        True
    """
    check_norm(norm)
    if norm == "Linf":
        return (torch.rand_like(like) * 2 - 1) * eps
    direction = ascent_direction(torch.randn_like(like), "L2")
    radius = torch.rand(like.shape[0], 1, 1, 1, dtype=like.dtype, device=like.device)
    return direction * radius * eps


class FlowPGD(FlowAttack):
    r"""Projected gradient ascent of the cross-entropy over flows (eq. (2) on the flow).

    .. math::
        v^{k+1} = \Pi_{\|v\| \le \epsilon}\big(v^k + \alpha \cdot d(\nabla_{v^k}
        \mathcal{L}(\mathcal{I}(x, v^k), y))\big), \qquad x' = \mathcal{I}(x, v^K)

    with :math:`d = \mathrm{sign}` for ``"Linf"`` and the normalized gradient for ``"L2"``,
    :math:`\Pi` the projection onto the budget (:func:`~torchattacks_deform.project_flow`)
    after every step, :math:`v^0 = 0` or uniform in the ball (``random_start``). In targeted
    mode (torchattacks' ``set_mode_targeted_*``) it descends the cross-entropy of the target.
    Each step costs one warp, one forward and one backward of the model.

    Convention:
        ``eps`` and ``alpha`` are in **pixels** of displacement (flow convention of
        :mod:`torchattacks_deform.flow`). ``"Linf"`` bounds every flow component;
        ``"L2"`` bounds the Euclidean norm of the whole ``(2, H, W)`` flow of an example.
        Budgets published in normalized grid units convert with
        :func:`~torchattacks_deform.normalized_to_pixels`.

    Args:
        model: classifier returning logits for ``[0, 1]`` images (or normalized images, with
            torchattacks' ``set_normalization_used``).
        eps: flow budget in pixels. Default: 1.0.
        alpha: step size in pixels. Default: ``eps / 4``.
        steps: number of steps. Default: 10.
        random_start: start from a uniformly random flow in the ball. Default: True.
        norm: ``"Linf"`` (default) or ``"L2"``.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Raises:
        ValueError: negative ``eps``, ``alpha`` or ``steps``, or an unknown ``norm``.
        TypeError: a non-number budget or a non-int ``steps``.

    Example:
        >>> from torchattacks_deform import FlowPGD, warp
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = FlowPGD(model, eps=1.0, steps=3)
        >>> _ = torch.manual_seed(0)
        >>> adv = atk(images, labels)
        >>> _ = torch.manual_seed(0)
        >>> flow = atk.get_flow(images, labels)
        >>> bool(flow.abs().max() <= 1.0), torch.equal(adv, warp(images, flow).clamp(0, 1))
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        alpha: Optional[float] = None,
        steps: int = 10,
        random_start: bool = True,
        norm: str = "Linf",
        padding_mode: str = "border",
    ) -> None:
        check_non_negative(eps, "eps")
        if alpha is None:
            alpha = eps / 4
        check_non_negative(alpha, "alpha")
        check_non_negative(steps, "steps", integer=True)
        check_norm(norm)
        super().__init__("FlowPGD", model, padding_mode=padding_mode)
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = steps
        self.random_start = bool(random_start)
        self.norm = norm

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        flow = images.new_zeros(b, 2, h, w)
        if self.random_start:
            flow = random_flow(flow, self.eps, self.norm)
        for _ in range(self.steps):
            grad = self.ce_flow_gradient(images, flow, labels)
            flow = project_flow(flow + self.alpha * ascent_direction(grad, self.norm), self.eps, self.norm)
        return flow.detach()
