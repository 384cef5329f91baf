r"""FlowSquare: the Square Attack's random search (Andriushchenko et al., 2020) on flows."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack, seeded_generator
from .losses import margin_loss
from .validation import check_budget, check_number

__all__ = ["FlowSquare", "square_fraction"]

#: The schedule of the fraction ``p`` (Square Attack, Linf): ``(last iteration, divisor of
#: p_init)`` on a reference run of 10,000 iterations; later iterations divide by 512.
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def square_fraction(p_init: float, iteration: int, iterations: int) -> float:
    """The fraction of the image a square covers at ``iteration`` of ``iterations`` (0-based).

    The Square Attack's piecewise-constant schedule, rescaled from 10,000 iterations to
    ``iterations`` as AutoAttack does: ``p_init`` up to iteration 10, then halved at iterations
    50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of the reference run.

    Example:
        >>> square_fraction(0.8, 0, 1000), square_fraction(0.8, 2, 1000), square_fraction(0.8, 999, 1000)
        (0.8, 0.4, 0.0015625)
    """
    it = int(iteration / iterations * 10000)
    for last, divisor in _SCHEDULE:
        if it <= last:
            return p_init / divisor
    return p_init / 512


class FlowSquare(FlowAttack):
    r"""Square Attack on flows: random search over Linf-ball vertices, one square at a time.

    The Square Attack (Andriushchenko et al., 2020; AutoAttack's gradient-free member) carried
    to flows: the flow starts at a vertex of the Linf ball, in vertical stripes (every column's
    ``x`` and ``y`` displacement ``+-eps``, at random); each iteration draws, per example still to
    fool, a square of side :math:`s = \mathrm{round}(\sqrt{p\,H W})` (clipped to ``[1, min(H, W) - 1]``) at
    a random position and sets both flow channels there to a random ``+-eps`` each; the candidate
    is kept when it lowers the margin :math:`Z_y - \max_{j \ne y} Z_j` (targeted:
    :math:`\max_{j \ne t} Z_j - Z_t`). ``p`` follows the Square Attack's schedule
    (:func:`square_fraction`). An example stops at its first fooling candidate.

    Only model outputs are used: every model call runs under :func:`torch.no_grad`.

    Convention:
        ``eps`` is in **pixels**, Linf (every flow component); flows are ``(B, 2, H, W)``,
        channel 0 the x and channel 1 the y displacement.

    Args:
        model: classifier returning logits.
        eps: Linf flow budget in pixels. Default: 1.0.
        queries: most model queries per example: the clean check, the stripes, then one per
            iteration (``queries - 2`` iterations). Default: 1000.
        p_init: the fraction of the image the first squares cover (AutoAttack's Linf default).
            Default: 0.8.
        seed: seed of the attack's own generator (None: the global RNG). Default: 0.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Attributes:
        last_queries: ``(B,)`` int64 tensor of the last call: the model queries spent on each
            example. ``None`` before the first call.

    Cost: at most ``queries`` images classified per example, forwards only; :meth:`cost`
    counts a forward as a third of a forward+backward.

    Raises:
        ValueError: negative, NaN or infinite numbers, ``queries < 2``, ``p_init`` outside ``(0, 1]``.
        TypeError: a non-number argument or a non-int count.

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowSquare
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = FlowSquare(model, eps=1.0, queries=20)
        >>> adv = atk(images, labels)
        >>> adv.shape, bool((atk.last_queries <= 20).all())
        (torch.Size([2, 1, 4, 4]), True)
        >>> FlowSquare.cost({"queries": 300})
        100.0
    """

    info = AttackInfo("gradient-free", False, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        queries: int = 1000,
        p_init: float = 0.8,
        seed: Optional[int] = 0,
        padding_mode: str = "border",
    ) -> None:
        eps = check_budget(eps, "eps")
        check_number(queries, "queries", integer=True, minimum=2)
        check_number(p_init, "p_init", minimum=0)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init: expected a fraction in (0, 1], got {p_init}")
        check_number(seed, "seed", integer=True, minimum=0, allow_none=True)
        super().__init__("FlowSquare", model, padding_mode=padding_mode)
        self.eps = float(eps)
        self.queries = queries
        self.p_init = float(p_init)
        self.seed = seed
        self.last_queries: Optional[Tensor] = None

    @classmethod
    def budget_norm(cls, params: Mapping[str, Any]) -> str:
        """``"Linf"``: the only budget FlowSquare has."""
        return "Linf"

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``queries / 3``: forwards only, a third of a forward+backward each."""
        return float(cls._param(params, "queries")) / 3

    def _margin(self, images: Tensor, flow: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The margin to lower (negative once fooled, untargeted) and the success of ``flow``."""
        logits = self.get_logits(self.warp(images, flow))
        return margin_loss(logits, labels, self.targeted, kappa=None), self.is_successful(logits, labels)

    def _sign(self, shape: tuple[int, ...], like: Tensor, gen: Optional[torch.Generator]) -> Tensor:
        """Random ``+-eps`` of ``shape``."""
        bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
        return (bits.to(like.dtype) * 2 - 1) * self.eps

    @torch.no_grad()
    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        gen = seeded_generator(self.seed, images.device)
        _, done = self._margin(images, images.new_zeros(b, 2, h, w), labels)
        queries = torch.ones(b, dtype=torch.long, device=images.device)
        flow = self._sign((b, 2, 1, w), images, gen).expand(b, 2, h, w).clone()
        flow[done] = 0  # fooled without a flow: nothing to search
        active = (~done).nonzero().squeeze(1)
        best = torch.full((b,), math.inf, dtype=images.dtype, device=images.device)
        if active.numel():
            best[active], ok = self._margin(images[active], flow[active], labels[active])
            queries[active] += 1
            done[active] = ok
        rows = torch.arange(h, device=images.device).reshape(1, h, 1)
        cols = torch.arange(w, device=images.device).reshape(1, 1, w)
        iterations = self.queries - 2
        for it in range(iterations):
            active = (~done).nonzero().squeeze(1)
            n = active.numel()
            if n == 0:
                break
            side = int(round(math.sqrt(square_fraction(self.p_init, it, iterations) * h * w)))
            side = min(max(side, 1), max(min(h, w) - 1, 1))
            top = torch.randint(0, h - side + 1, (n, 1, 1), generator=gen, device=images.device)
            left = torch.randint(0, w - side + 1, (n, 1, 1), generator=gen, device=images.device)
            inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            values = self._sign((n, 2, 1, 1), images, gen)
            cand = torch.where(inside.unsqueeze(1), values, flow[active])
            margin, ok = self._margin(images[active], cand, labels[active])
            queries[active] += 1
            better = (margin < best[active]) | ok
            flow[active[better]] = cand[better]
            best[active[better]] = margin[better]
            done[active] = ok
        self.last_queries = queries
        return flow
