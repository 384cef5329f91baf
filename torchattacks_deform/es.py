r"""FlowES: a gradient-free evolution-strategies flow attack (queries model outputs only)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack
from .flow import project_flow
from .losses import margin_loss
from .validation import check_budget, check_number

__all__ = ["FlowES"]


def _centered_ranks(scores: Tensor) -> Tensor:
    """Ranks of each row mapped linearly to ``[-0.5, 0.5]`` (fitness shaping of NES)."""
    ranks = scores.argsort(dim=1).argsort(dim=1).to(scores.dtype)
    return ranks / max(scores.shape[1] - 1, 1) - 0.5


class FlowES(FlowAttack):
    r"""Evolution strategies over flows: antithetic NES with rank-shaped, signed updates.

    Per step and per example still to fool, the attack samples ``population // 2`` Gaussian
    directions :math:`u_i` of flow shape and evaluates the antithetic pairs
    :math:`v \pm \sigma u_i` (projected onto the budget). Their margin scores
    :math:`s = \max_{j \ne y} Z_j - Z_y` (targeted: :math:`Z_t - \max_{j \ne t} Z_j`) are
    replaced by centered ranks :math:`r \in [-0.5, 0.5]` (fitness shaping, Wierstra et al.),
    the search gradient is estimated as :math:`g = \sum_i (r_i^+ - r_i^-) u_i` and the flow
    moves by a signed step, :math:`v \leftarrow \Pi_{\|v\|_\infty \le \epsilon}(v + \alpha\,
    \mathrm{sign}(g))` (NES-PGD of Ilyas et al., 2018, on the flow). The first candidate that
    fools the model is kept and the example stops (early stopping per example).

    Only model outputs are used: every model call runs under :func:`torch.no_grad`, autograd
    is never called. The candidates of all active examples are evaluated in batched forwards
    of at most ``max_batch`` images (one forward per step unless that is exceeded).

    Convention:
        ``eps``, ``sigma`` and ``alpha`` are in **pixels**; the budget is Linf (every flow
        component). Convert normalized budgets with
        :func:`~torchattacks_deform.normalized_to_pixels`.

    Attributes:
        last_queries: ``(B,)`` int64 tensor (on the images' device): number of images the
            model classified for each example in the last call (``__call__`` or
            ``get_flow``): 1 for the clean check plus ``population`` per step the example
            was still active. ``None`` before the first call.

    Args:
        model: classifier returning logits.
        eps: Linf flow budget in pixels. Default: 1.0.
        population: candidates per step and example, even (antithetic pairs). Default: 20.
        sigma: exploration standard deviation in pixels. Default: ``eps / 2``.
        steps: maximum number of steps (model queries: ``1 + population * steps`` at most).
            Default: 50.
        alpha: step size in pixels. Default: ``eps / 10``.
        max_batch: largest number of images per forward. Default: 4096.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Cost: at most ``1 + population * steps`` images classified per example, forwards only;
    :meth:`cost` counts a forward as a third of a forward+backward.

    Raises:
        ValueError: negative, NaN or infinite numbers, an odd or too small ``population``,
            ``max_batch < 1``.
        TypeError: a non-number argument or non-int counts.

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowES, warp
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = FlowES(model, eps=1.0, population=4, steps=3)
        >>> _ = torch.manual_seed(0)
        >>> adv = atk(images, labels)
        >>> atk.last_queries.shape, bool((atk.last_queries <= 1 + 4 * 3).all())
        (torch.Size([2]), True)
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(adv, warp(images, atk.get_flow(images, labels)).clamp(0, 1))
        True
        >>> FlowES.cost({"population": 10, "steps": 30})
        100.0
    """

    info = AttackInfo("gradient-free", False, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        population: int = 20,
        sigma: Optional[float] = None,
        steps: int = 50,
        alpha: Optional[float] = None,
        max_batch: int = 4096,
        padding_mode: str = "border",
    ) -> None:
        eps = check_budget(eps, "eps")
        check_number(population, "population", integer=True)
        if population < 2 or population % 2:
            raise ValueError(f"population: expected an even number >= 2 (antithetic pairs), got {population}")
        sigma = check_number(eps / 2 if sigma is None else sigma, "sigma", minimum=0)
        check_number(steps, "steps", integer=True, minimum=0)
        alpha = check_number(eps / 10 if alpha is None else alpha, "alpha", minimum=0)
        check_number(max_batch, "max_batch", integer=True, minimum=1)
        super().__init__("FlowES", model, padding_mode=padding_mode)
        self.eps = float(eps)
        self.population = population
        self.sigma = float(sigma)
        self.steps = steps
        self.alpha = float(alpha)
        self.max_batch = max_batch
        self.last_queries: Optional[Tensor] = None

    @classmethod
    def budget_norm(cls, params: Mapping[str, Any]) -> str:
        """``"Linf"``: the only budget FlowES has."""
        return "Linf"

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``population * steps / 3``: forwards only, a third of a forward+backward each."""
        return float(cls._param(params, "population")) * float(cls._param(params, "steps")) / 3

    def _scores(self, images: Tensor, flows: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Margin scores (higher = more adversarial) and success of warped candidates."""
        scores, oks = [], []
        for start in range(0, images.shape[0], self.max_batch):
            sl = slice(start, start + self.max_batch)
            logits = self.get_logits(self.warp(images[sl], flows[sl]))
            scores.append(-margin_loss(logits, labels[sl], self.targeted, kappa=None))
            oks.append(self.is_successful(logits, labels[sl]))
        return torch.cat(scores), torch.cat(oks)

    @torch.no_grad()
    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, c, h, w = images.shape
        n_pairs = self.population // 2
        flow = images.new_zeros(b, 2, h, w)
        queries = torch.ones(b, dtype=torch.long, device=images.device)
        _, done = self._scores(images, flow, labels)
        for _ in range(self.steps):
            active = (~done).nonzero().squeeze(1)
            n = active.numel()
            if n == 0:
                break
            noise = torch.randn(n, n_pairs, 2, h, w, dtype=images.dtype, device=images.device)
            centre = flow[active].unsqueeze(1)
            cands = torch.cat([centre + self.sigma * noise, centre - self.sigma * noise], dim=1)
            cands = project_flow(cands.reshape(-1, 2, h, w), self.eps, "Linf")
            reps = images[active].repeat_interleave(self.population, dim=0)
            scores, ok = self._scores(reps, cands, labels[active].repeat_interleave(self.population))
            queries[active] += self.population
            scores, ok = scores.reshape(n, self.population), ok.reshape(n, self.population)
            ranks = _centered_ranks(scores)
            weights = ranks[:, :n_pairs] - ranks[:, n_pairs:]
            grad = (weights.reshape(n, n_pairs, 1, 1, 1) * noise).sum(dim=1)
            new = project_flow(flow[active] + self.alpha * grad.sign(), self.eps, "Linf")
            found = ok.any(dim=1)
            first = ok.to(torch.int8).argmax(dim=1)  # index of the first fooling candidate
            winners = cands.reshape(n, self.population, 2, h, w)[torch.arange(n, device=images.device), first]
            flow[active] = torch.where(found.reshape(-1, 1, 1, 1), winners, new)
            done[active] = found
        self.last_queries = queries
        return flow
