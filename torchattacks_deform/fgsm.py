r"""FlowFGSM: one gradient-sign step on the flow (eq. (1) of Xia & Li, on :math:`v`)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack
from .flow import NORMS
from .losses import LOSSES
from .pgd import ascent_direction
from .validation import check_budget, check_choice

__all__ = ["FlowFGSM"]


class FlowFGSM(FlowAttack):
    r"""Single-step flow attack: one signed-gradient step of size ``eps`` from the zero flow.

    .. math::
        v = \epsilon \cdot d(\nabla_{v} \mathcal{L}(\mathcal{I}(x, v), y)\,|_{v = 0}),
        \qquad x' = \mathcal{I}(x, v)

    with :math:`d = \mathrm{sign}` for ``"Linf"`` (eq. (1) on the flow) and the normalized
    gradient :math:`g / \|g\|_2` for ``"L2"`` (a step of L2 length ``eps``). The loss is the
    cross-entropy (``loss="ce"``) or the unclamped Carlini-Wagner margin (``loss="margin"``,
    see :func:`~torchattacks_deform.losses.attack_loss`); targeted mode descends the
    cross-entropy of the target (or ascends the target's margin). At the zero flow
    every sample position is an integer, where the warp's derivative is the one-sided slope
    that ``grid_sample`` picks (see :func:`~torchattacks_deform.warp`). Cost: one warp, one
    forward and one backward of the model.

    Convention:
        ``eps`` is in **pixels** of displacement; ``"Linf"`` bounds every flow component,
        ``"L2"`` the Euclidean norm of the whole flow of an example. Convert budgets given in
        normalized grid units with :func:`~torchattacks_deform.normalized_to_pixels`.

    Args:
        model: classifier returning logits.
        eps: step length and budget in pixels, finite and ``>= 0``. Default: 1.0.
        norm: ``"Linf"`` (default) or ``"L2"``.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.
        loss: ``"ce"`` (default) or ``"margin"``.

    Raises:
        ValueError: negative or non-finite ``eps``, unknown ``norm`` or ``loss``.
        TypeError: a non-number ``eps``.

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowFGSM, warp
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = FlowFGSM(model, eps=0.5)
        >>> flow = atk.get_flow(images, labels)
        >>> float(flow.abs().max()) <= 0.5
        True
        >>> torch.equal(atk(images, labels), warp(images, flow).clamp(0, 1))
        True
    """

    info = AttackInfo("single-step", True, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        norm: str = "Linf",
        padding_mode: str = "border",
        loss: str = "ce",
    ) -> None:
        eps = check_budget(eps, "eps")
        check_choice(norm, "norm", NORMS)
        check_choice(loss, "loss", LOSSES)
        super().__init__("FlowFGSM", model, padding_mode=padding_mode)
        self.eps = float(eps)
        self.norm = norm
        self.loss = loss

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """One forward and one backward per example."""
        return 1.0

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        grad = self.loss_flow_gradient(images, images.new_zeros(b, 2, h, w), labels, self.loss)
        return (self.eps * ascent_direction(grad, self.norm)).detach()
