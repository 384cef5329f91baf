r"""FlowAPGD: Auto-PGD (Croce & Hein, 2020) on the flow, with the CE or the DLR loss."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack, seeded_generator
from .flow import NORMS, project_flow
from .losses import attack_loss, dlr_loss
from .pgd import ascent_direction
from .validation import check_budget, check_choice, check_number

__all__ = ["APGD_LOSSES", "FlowAPGD", "apgd_checkpoints", "apgd_reduce_step"]

#: The losses :class:`FlowAPGD` ascends.
APGD_LOSSES = ("ce", "dlr", "margin")

#: ``(p_1, checkpoint decrement, smallest checkpoint interval)`` as fractions of the steps.
_SCHEDULE = (0.22, 0.03, 0.06)


def apgd_checkpoints(steps: int) -> list[int]:
    r"""The iterations after which APGD checks its progress, as numbers of steps done.

    AutoAttack's schedule (the first interval is ``int(0.22 * steps)``, each later one is
    ``int(0.03 * steps)`` shorter, down to ``int(0.06 * steps)``, every one at least 1): the
    paper's :math:`w_j = \lceil p_j N \rceil` with :math:`p_{j+1} = p_j + \max(p_j - p_{j-1}
    - 0.03, 0.06)`, rounded as their code rounds.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
        >>> apgd_checkpoints(3)
        [1, 2, 3]
    """
    check_number(steps, "steps", integer=True, minimum=0)
    first, decrement, smallest = (max(int(f * steps), 1) for f in _SCHEDULE)
    points, done, interval = [], 0, first
    while done + interval <= steps:
        done += interval
        points.append(done)
        interval = max(interval - decrement, smallest)
    return points


def apgd_reduce_step(history: Tensor, start: int, rho: float, reduced_before: Tensor, best_before: Tensor,
                     best_now: Tensor) -> Tensor:
    r"""Which examples halve their step at a checkpoint (APGD's two conditions), ``(B,)`` bool.

    ``history[t]`` is the loss of the ``t``-th iterate (``t = 0``: the starting point), so the
    interval since the last checkpoint covers ``history[start:]``. With :math:`k` steps in it:

    1. the loss rose in at most a fraction ``rho`` of them:
       :math:`\sum_{t} \mathbb{1}[f(x^{(t+1)}) > f(x^{(t)})] \le \rho k` (AutoAttack's code
       compares with ``<=``; at the first checkpoint it compares with the starting point, as
       the paper's Algorithm 1 does);
    2. or the step was not reduced at the last checkpoint and the best loss has not risen
       since: :math:`\eta^{(w_{j-1})} = \eta^{(w_{j-2})}` and :math:`f_{max}^{(w_{j-1})} =
       f_{max}^{(w_j)}`.

    Example:
        >>> h = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, -2.0], [1.5, -3.0]])
        >>> apgd_reduce_step(h, 0, 0.75, torch.ones(2, dtype=torch.bool), h[0], h.amax(0))
        tensor([True, True])
        >>> apgd_reduce_step(h[:3], 0, 0.75, torch.ones(2, dtype=torch.bool), h[0], h[:3].amax(0))
        tensor([False,  True])
    """
    window = history[start:]
    k = window.shape[0] - 1
    rises = (window[1:] > window[:-1]).sum(dim=0)
    oscillating = rises <= k * rho
    stalled = ~reduced_before & (best_before >= best_now)
    return oscillating | stalled


def _random_start(like: Tensor, eps: float, norm: str, generator: Optional[torch.Generator]) -> Tensor:
    """AutoAttack's start: a random direction scaled to the boundary of the budget."""
    if norm == "Linf":
        t = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device) * 2 - 1
        scale = t.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(t.dtype).tiny)
    else:
        t = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        scale = t.flatten(1).norm(dim=1).clamp_min(torch.finfo(t.dtype).tiny)
    return project_flow(t / scale.reshape(-1, 1, 1, 1) * eps, eps, norm)


class FlowAPGD(FlowAttack):
    r"""Auto-PGD on the flow: a step size that halves when progress stalls, momentum, restarts
    from the best point, and the scale-invariant DLR loss (Croce & Hein, 2020), in pixels.

    Per example, from a random flow on the boundary of the budget, with :math:`\eta^{(0)} =
    2\epsilon` and :math:`\Pi` the projection onto the budget
    (:func:`~torchattacks_deform.project_flow`):

    .. math::
        z^{(k+1)} = \Pi\big(v^{(k)} + \eta^{(k)} d(\nabla_v f(v^{(k)}))\big), \qquad
        v^{(k+1)} = \Pi\big(v^{(k)} + a (z^{(k+1)} - v^{(k)}) + (1 - a)(v^{(k)} - v^{(k-1)})\big)

    with :math:`d` the sign (``"Linf"``) or the normalized gradient (``"L2"``), :math:`a = 0.75`
    (:math:`a = 1` on the first step). At each checkpoint (:func:`apgd_checkpoints`) the
    examples whose loss rose in at most ``rho`` of the steps since the last one, or that did
    not improve their best loss after a checkpoint that kept the step, halve :math:`\eta` and
    restart from their best flow (:func:`apgd_reduce_step`).

    ``loss="ce"`` ascends the cross-entropy; ``loss="margin"`` the unclamped Carlini-Wagner
    margin :math:`\max_{i \ne y} z_i - z_y` (the loss that measured strongest on flows with
    FlowPGD); ``loss="dlr"`` the Difference of Logits Ratio
    :math:`-(z_y - \max_{i \ne y} z_i) / (z_{\pi_1} - z_{\pi_3})`
    (:func:`~torchattacks_deform.losses.dlr_loss`; at least 3 classes), invariant to a shift
    and a rescaling of the logits.

    Per example the attack keeps the best iterate: a flow that fools the model as soon as one
    does (the example then stops, so it costs no more queries), else the flow of highest loss
    over all iterates and restarts. Restarts after the first attack only the examples not yet
    fooled, each from a new random start. No step size to tune: ``eps`` is the only scale.

    Convention:
        ``eps`` is in **pixels** of displacement (flow convention of
        :mod:`torchattacks_deform.flow`); ``"Linf"`` bounds every flow component, ``"L2"``
        the Euclidean norm of an example's whole ``(2, H, W)`` flow.

    Attributes:
        last_queries: ``(B,)`` int64 tensor: the images the model classified for each example
            in the last call (one forward, with its backward, per iterate while the example
            was still robust). None before the first call.

    Args:
        model: classifier returning logits.
        eps: flow budget in pixels. Default: 1.0.
        norm: ``"Linf"`` (default) or ``"L2"``.
        steps: iterations per restart. Default: 100 (AutoAttack's).
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
        restarts: runs per example not yet fooled. Default: 1.
        rho: the fraction of rising steps below which the step halves. Default: 0.75.
        seed: seed of the random starts (a generator of the attack's own; the global RNG is
            untouched); None draws from the global RNG.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Raises:
        ValueError: a negative or non-finite ``eps``, ``steps < 1``, ``restarts < 1``, ``rho``
            outside ``[0, 1]``, an unknown ``norm`` or ``loss``; at call time, ``loss="dlr"``
            with fewer than 3 classes.

    Example:
        >>> from torchattacks_deform import FlowAPGD, warp
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = FlowAPGD(model, eps=1.0, steps=5, loss="dlr", seed=0)
        >>> flow = atk.get_flow(images, labels)
        >>> bool(flow.abs().max() <= 1.0), torch.equal(atk(images, labels), warp(images, flow).clamp(0, 1))
        (True, True)
        >>> FlowAPGD.cost({"steps": 100, "restarts": 2})
        200.0
    """

    info = AttackInfo("multi-step", True, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        norm: str = "Linf",
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        seed: Optional[int] = 0,
        padding_mode: str = "border",
    ) -> None:
        eps = check_budget(eps, "eps")
        check_choice(norm, "norm", NORMS)
        check_number(steps, "steps", integer=True, minimum=1)
        check_choice(loss, "loss", APGD_LOSSES)
        check_number(restarts, "restarts", integer=True, minimum=1)
        rho = check_number(rho, "rho", minimum=0, maximum=1)
        check_number(seed, "seed", integer=True, minimum=0, allow_none=True)
        super().__init__("FlowAPGD", model, padding_mode=padding_mode)
        self.supported_mode = ["default"]
        self.eps = float(eps)
        self.norm = norm
        self.steps = steps
        self.loss = loss
        self.restarts = restarts
        self.rho = float(rho)
        self.seed = seed
        self.last_queries: Optional[Tensor] = None

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``steps * restarts`` forward+backward passes per example."""
        return float(cls._param(params, "steps")) * float(cls._param(params, "restarts"))

    # -- the loss -----------------------------------------------------------------------
    @staticmethod
    def _objective(labels: Tensor, loss: str) -> Callable[[Tensor, Tensor], Tensor]:
        """``f(logits, index) -> (n,)``: the per-example ``loss`` ascended (``index`` selects the examples)."""
        if loss == "dlr":
            return lambda logits, idx: dlr_loss(logits, labels[idx])
        return lambda logits, idx: attack_loss(logits, labels[idx], loss)  # "ce" or "margin"

    def _loss_grad(self, images: Tensor, flow: Tensor, labels: Tensor, idx: Tensor,
                   objective: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, gradient w.r.t. the flow, fooled)`` of the examples ``idx`` at ``flow``."""
        flow = flow.detach().requires_grad_(True)
        logits = self.get_logits(self.warp(images[idx], flow))
        loss = objective(logits, idx)
        (grad,) = torch.autograd.grad(loss.sum(), flow)
        fooled = logits.detach().argmax(dim=1) != labels[idx]
        return loss.detach(), grad.detach(), fooled

    # -- one run --------------------------------------------------------------------------
    def _run(self, images: Tensor, labels: Tensor, objective: Callable[[Tensor, Tensor], Tensor],
             generator: Optional[torch.Generator], queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run on every example given: ``(flow, fooled, best loss)`` per example."""
        b, _, h, w = images.shape
        every = torch.arange(b, device=images.device)
        flow = _random_start(images.new_zeros(b, 2, h, w), self.eps, self.norm, generator)
        loss, grad, fooled = self._loss_grad(images, flow, labels, every, objective)
        queries += 1
        best_flow, best_loss, best_grad = flow.clone(), loss.clone(), grad.clone()
        won = torch.where(fooled.reshape(-1, 1, 1, 1), flow, torch.zeros_like(flow))
        step = images.new_full((b,), 2.0 * self.eps)
        previous = flow.clone()
        history = [loss.clone()]
        checkpoints = set(apgd_checkpoints(self.steps))
        last_check, reduced_before, best_before = 0, torch.ones(b, dtype=torch.bool, device=images.device), \
            best_loss.clone()
        for i in range(self.steps):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            a = 0.75 if i > 0 else 1.0
            v, v_prev = flow[idx], previous[idx]
            z = project_flow(v + step[idx].reshape(-1, 1, 1, 1) * ascent_direction(grad[idx], self.norm),
                             self.eps, self.norm)
            new = project_flow(v + a * (z - v) + (1 - a) * (v - v_prev), self.eps, self.norm)
            previous[idx] = v
            flow[idx] = new
            loss_i, grad_i, fooled_i = self._loss_grad(images, new, labels, idx, objective)
            queries[idx] += 1
            grad[idx] = grad_i
            won[idx] = torch.where(fooled_i.reshape(-1, 1, 1, 1), new, won[idx])
            fooled[idx] = fooled_i
            current = history[-1].clone()
            current[idx] = loss_i
            history.append(current)
            better = torch.zeros(b, dtype=torch.bool, device=images.device)
            better[idx] = loss_i > best_loss[idx]
            best_flow[better], best_loss[better], best_grad[better] = flow[better], current[better], grad[better]
            if i + 1 in checkpoints:
                reduce = apgd_reduce_step(torch.stack(history), last_check, self.rho, reduced_before, best_before,
                                          best_loss) & ~fooled
                step[reduce] /= 2.0
                flow[reduce], grad[reduce] = best_flow[reduce], best_grad[reduce]
                reduced_before, best_before, last_check = reduce, best_loss.clone(), i + 1
        result = torch.where(fooled.reshape(-1, 1, 1, 1), won, best_flow)
        return result, fooled, best_loss

    def _attack(self, images: Tensor, labels: Tensor,
                objective_for: Callable[[Tensor], Callable[[Tensor, Tensor], Tensor]],
                runs: int, queries: Tensor) -> tuple[Tensor, Tensor]:
        """``runs`` APGD runs, each on the examples not yet fooled: ``(best flow, fooled)`` per example."""
        b, _, h, w = images.shape
        gen = seeded_generator(self.seed, images.device)
        best_flow = images.new_zeros(b, 2, h, w)
        best_loss = images.new_full((b,), -math.inf)
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        for _ in range(runs):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            sub_queries = torch.zeros(idx.numel(), dtype=torch.long, device=images.device)
            flow, fooled, loss = self._run(images[idx], labels[idx], objective_for(idx), gen, sub_queries)
            queries[idx] += sub_queries
            keep = fooled | (loss > best_loss[idx])
            best_flow[idx] = torch.where(keep.reshape(-1, 1, 1, 1), flow, best_flow[idx])
            best_loss[idx] = torch.where(keep, loss, best_loss[idx])
            done[idx] = fooled
        return best_flow, done

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        queries = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

        def objective_for(idx: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
            return self._objective(labels[idx], self.loss)

        flow, _ = self._attack(images, labels, objective_for, self.restarts, queries)
        self.last_queries = queries
        return flow
