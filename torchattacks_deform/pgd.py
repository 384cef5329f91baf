r"""FlowPGD: projected gradient descent on the flow (eq. (2) of Xia & Li, on :math:`v`)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack
from .flow import NORMS, project_flow
from .losses import LOSSES
from .validation import check_bool, check_budget, check_choice, check_number

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
    check_choice(norm, "norm", NORMS)
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
    check_choice(norm, "norm", NORMS)
    check_number(eps, "eps", minimum=0)
    if norm == "Linf":
        return (torch.rand_like(like) * 2 - 1) * eps
    direction = ascent_direction(torch.randn_like(like), "L2")
    radius = torch.rand(like.shape[0], 1, 1, 1, dtype=like.dtype, device=like.device)
    return direction * radius * eps


class FlowPGD(FlowAttack):
    r"""Projected gradient ascent of the attack loss over flows (eq. (2) on the flow), with restarts.

    .. math::
        v^{k+1} = \Pi_{\|v\| \le \epsilon}\big(v^k + \alpha \cdot d(\nabla_{v^k}
        \mathcal{L}(\mathcal{I}(x, v^k), y))\big), \qquad x' = \mathcal{I}(x, v^K)

    with :math:`d = \mathrm{sign}` for ``"Linf"`` and the normalized gradient for ``"L2"``,
    :math:`\Pi` the projection onto the budget (:func:`~torchattacks_deform.project_flow`)
    after every step, :math:`v^0 = 0` or uniform in the ball (``random_start``).
    :math:`\mathcal{L}` is the cross-entropy (``loss="ce"``) or the unclamped Carlini-Wagner
    margin :math:`\max_{j \ne y} Z_j - Z_y` (``loss="margin"``, see
    :func:`~torchattacks_deform.losses.attack_loss`). In targeted mode (torchattacks'
    ``set_mode_targeted_*``) it descends the cross-entropy of the target, or ascends
    :math:`Z_t - \max_{j \ne t} Z_j`.

    Restarts: each restart is a full run of ``steps`` steps that returns its last iterate.
    Restart 1 starts as ``random_start`` says, restarts 2, 3, ... always uniformly at random in
    the ball. Per example, the first restart whose last iterate succeeds (misclassified, or
    the target in targeted mode) is kept and later restarts only attack the examples not yet
    fooled; an example never fooled gets the last iterate with the highest attack loss (ties:
    the earlier restart). With ``restarts=1`` the last iterate is returned as is.

    Cost: ``restarts x steps x`` (one warp, one forward, one backward of the model) on the
    examples still robust, plus one forward per restart to score the last iterates (none
    when ``restarts=1``).

    Convention:
        ``eps`` and ``alpha`` are in **pixels** of displacement (flow convention of
        :mod:`torchattacks_deform.flow`). ``"Linf"`` bounds every flow component;
        ``"L2"`` bounds the Euclidean norm of the whole ``(2, H, W)`` flow of an example.
        Budgets published in normalized grid units convert with
        :func:`~torchattacks_deform.normalized_to_pixels`.

    Args:
        model: classifier returning logits for ``[0, 1]`` images (or normalized images, with
            torchattacks' ``set_normalization_used``).
        eps: flow budget in pixels, finite and ``>= 0``. Default: 1.0.
        alpha: step size in pixels, finite and ``>= 0``. Default: ``eps / 4``.
        steps: number of steps per restart, ``>= 0``. Default: 10.
        random_start: start the first restart from a uniformly random flow in the ball.
            Default: True.
        norm: ``"Linf"`` (default) or ``"L2"``.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.
        loss: ``"ce"`` (default) or ``"margin"``.
        restarts: number of restarts, ``>= 1``. Default: 1.

    Raises:
        ValueError: negative or non-finite ``eps`` or ``alpha``, negative ``steps``,
            ``restarts < 1``, an unknown ``norm`` or ``loss``.
        TypeError: a non-number budget or non-int counts.

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
        >>> FlowPGD.cost({"steps": 20, "restarts": 3}), FlowPGD.budget_norm({"norm": "L2"})
        (60.0, 'L2')
    """

    info = AttackInfo("multi-step", True, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        alpha: Optional[float] = None,
        steps: int = 10,
        random_start: bool = True,
        norm: str = "Linf",
        padding_mode: str = "border",
        loss: str = "ce",
        restarts: int = 1,
    ) -> None:
        eps = check_budget(eps, "eps")
        alpha = check_number(eps / 4 if alpha is None else alpha, "alpha", minimum=0)
        check_number(steps, "steps", integer=True, minimum=0)
        check_bool(random_start, "random_start")
        check_choice(norm, "norm", NORMS)
        check_choice(loss, "loss", LOSSES)
        check_number(restarts, "restarts", integer=True, minimum=1)
        super().__init__("FlowPGD", model, padding_mode=padding_mode)
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = steps
        self.random_start = random_start
        self.norm = norm
        self.loss = loss
        self.restarts = restarts

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``steps * restarts`` forward+backward passes per example (scoring forwards aside)."""
        return float(cls._param(params, "steps")) * float(cls._param(params, "restarts"))

    def _run(self, images: Tensor, labels: Tensor, random_start: bool) -> Tensor:
        """One restart: ``steps`` projected steps from zero or a random flow; the last iterate."""
        b, _, h, w = images.shape
        flow = images.new_zeros(b, 2, h, w)
        if random_start:
            flow = random_flow(flow, self.eps, self.norm)
        for _ in range(self.steps):
            grad = self.loss_flow_gradient(images, flow, labels, self.loss)
            flow = project_flow(flow + self.alpha * ascent_direction(grad, self.norm), self.eps, self.norm)
        return flow.detach()

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        if self.restarts == 1:
            return self._run(images, labels, self.random_start)
        b, _, h, w = images.shape
        best_flow = images.new_zeros(b, 2, h, w)
        best_loss = images.new_full((b,), float("-inf"))
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        for restart in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x, y = (images, labels) if idx.numel() == b else (images[idx], labels[idx])
            flow = self._run(x, y, self.random_start or restart > 0)
            with torch.no_grad():
                logits = self.get_logits(self.warp(x, flow))
            ok = self.is_successful(logits, y)
            loss = self.attack_loss(logits, y, self.loss)
            better = (ok | (loss > best_loss[idx])).reshape(-1, 1, 1, 1)
            best_flow[idx] = torch.where(better, flow, best_flow[idx])
            best_loss[idx] = torch.where(better.reshape(-1), loss, best_loss[idx])
            done[idx] = ok
        return best_flow
