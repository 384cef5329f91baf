"""Gradient-masking checks in the spirit of auto-attack's ``checks.py``.

Each check returns a list of findings (JSON-able dicts with ``check``, ``model``,
``message`` and context) and emits a :class:`GradientMaskingWarning` per finding, so a user
sees it at run time and the report lists it. A finding means "do not trust these robust
accuracies without a closer look"; it is not an error.

Checks:
    - ``probabilities``: the model outputs rows that are non-negative and sum to 1 (softmax
      probabilities instead of logits flatten the cross-entropy gradients);
    - ``zero_gradients``: the loss gradient w.r.t. the input or the flow is exactly zero for
      some examples (gradient attacks cannot move them);
    - ``randomized``: two forward passes of the same batch disagree;
    - ``es_beats_gradients``: at some budget a gradient-free attack (FlowES, FlowSquare) leaves
      a lower robust accuracy than every gradient attack at the same budget (the gradients are
      less useful than random search: a classic sign of masking);
    - ``non_monotone_budget``: robust accuracy rises with the budget for an attack (a larger
      flow budget contains the smaller one, so a sound attack cannot do worse);
    - ``budget_exceeded``: an attack returned a flow larger than its budget.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchattacks_deform import warp

__all__ = [
    "GradientMaskingWarning",
    "check_budget",
    "check_es_beats_gradients",
    "check_monotone_budget",
    "check_probabilities",
    "check_randomized",
    "check_zero_gradients",
    "emit",
    "model_checks",
]

Finding = dict[str, Any]


class GradientMaskingWarning(UserWarning):
    """A result looks like gradient masking or a broken evaluation."""


def emit(findings: Sequence[Finding]) -> None:
    """Issue one :class:`GradientMaskingWarning` per finding."""
    for f in findings:
        warnings.warn(f["message"], GradientMaskingWarning, stacklevel=2)


def _finding(check: str, model: str, message: str, **context: Any) -> Finding:
    return {"check": check, "model": model, "message": f"[{check}] model {model!r}: {message}", **context}


@torch.no_grad()
def check_probabilities(model: nn.Module, images: Tensor, name: str = "model", atol: float = 1e-4) -> list[Finding]:
    """Flag a model whose outputs are probabilities (non-negative rows summing to 1).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1))
        >>> [f["check"] for f in check_probabilities(net, torch.rand(5, 1, 2, 2))]
        ['probabilities']
        >>> check_probabilities(net[:2], torch.rand(5, 1, 2, 2))
        []
    """
    out = model(images).float()
    if bool((out >= -atol).all()) and bool(((out.sum(dim=1) - 1).abs() <= atol).all()):
        return [_finding(
            "probabilities", name,
            "outputs are non-negative and every row sums to 1: the model returns probabilities, "
            "not logits. Cross-entropy on probabilities has vanishing gradients, so gradient "
            "attacks underestimate the risk; evaluate the logits (remove the final softmax).",
        )]
    return []


def check_zero_gradients(model: nn.Module, images: Tensor, labels: Tensor, name: str = "model") -> list[Finding]:
    """Flag examples whose cross-entropy gradient is exactly zero w.r.t. the input or the flow.

    The flow gradient is taken at the zero flow (:func:`torchattacks_deform.flow.warp`).

    Example:
        >>> class Quantized(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return self.fc((x * 4).round().flatten(1) / 4)
        >>> [f["check"] for f in check_zero_gradients(Quantized(), torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))]
        ['zero_gradients']
    """
    x = images.detach().clone().requires_grad_(True)
    flow = torch.zeros(images.shape[0], 2, *images.shape[2:], dtype=images.dtype,
                       device=images.device, requires_grad=True)
    with torch.enable_grad():
        loss_x = F.cross_entropy(model(x), labels, reduction="sum")
        (gx,) = torch.autograd.grad(loss_x, x, allow_unused=True)
        loss_v = F.cross_entropy(model(warp(images.detach(), flow)), labels, reduction="sum")
        (gv,) = torch.autograd.grad(loss_v, flow, allow_unused=True)
    n = images.shape[0]
    zx = n if gx is None else int((gx.flatten(1).abs().sum(1) == 0).sum())
    zv = n if gv is None else int((gv.flatten(1).abs().sum(1) == 0).sum())
    if zx or zv:
        return [_finding(
            "zero_gradients", name,
            f"{zx}/{n} examples have an all-zero loss gradient w.r.t. the input and {zv}/{n} "
            "w.r.t. the flow: gradient attacks (FlowFGSM, FlowPGD, StAdv) cannot move them, "
            "so their robust accuracy may be an overestimate (gradient masking).",
            zero_input=zx, zero_flow=zv, n=n,
        )]
    return []


@torch.no_grad()
def check_randomized(model: nn.Module, images: Tensor, name: str = "model", rtol: float = 1e-4) -> list[Finding]:
    """Flag a model whose outputs change between two identical forward passes.

    Example:
        >>> check_randomized(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(3, 1, 2, 2))
        []
    """
    a, b = model(images).float(), model(images).float()
    scale = a.abs().max().clamp_min(1e-12)
    if float((a - b).abs().max() / scale) > rtol:
        return [_finding(
            "randomized", name,
            "two forward passes of the same batch give different outputs: the model is "
            "randomized, and single-draw attacks overestimate its robustness (use EOT).",
        )]
    return []


def model_checks(model: nn.Module, images: Tensor, labels: Tensor, name: str) -> list[Finding]:
    """The per-model checks (probabilities, zero gradients, randomness) on one batch."""
    model.eval()
    return (check_probabilities(model, images, name) + check_zero_gradients(model, images, labels, name)
            + check_randomized(model, images, name))


def _by_model_attack(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["model"], c["attack"])].append(c)
    return groups


def check_monotone_budget(cells: Sequence[dict[str, Any]], tolerance: float = 0.0) -> list[Finding]:
    """Flag (model, attack) pairs whose robust accuracy rises with the budget.

    ``tolerance`` is an allowed rise, as a fraction (0.01 = one percentage point).

    Example:
        >>> cells = [{"model": "m", "attack": "FGSM", "budget": b, "robust_acc": a}
        ...          for b, a in [(0.5, 0.2), (1.0, 0.6)]]
        >>> [f["check"] for f in check_monotone_budget(cells)]
        ['non_monotone_budget']
    """
    out: list[Finding] = []
    for (model, attack), group in _by_model_attack(cells).items():
        group = sorted(group, key=lambda c: c["budget"])
        for lo, hi in zip(group, group[1:]):
            if hi["robust_acc"] > lo["robust_acc"] + tolerance:
                out.append(_finding(
                    "non_monotone_budget", model,
                    f"{attack}: robust accuracy rises from {lo['robust_acc']:.2%} at budget "
                    f"{lo['budget']:g} px to {hi['robust_acc']:.2%} at {hi['budget']:g} px. A larger "
                    "budget contains the smaller one, so the attack is failing to optimize "
                    "(too few steps, a bad step size, or masked gradients).",
                    attack=attack, budgets=[lo["budget"], hi["budget"]],
                ))
    return out


def check_es_beats_gradients(cells: Sequence[dict[str, Any]], tolerance: float = 0.0) -> list[Finding]:
    """Flag budgets at which a gradient-free attack beats every gradient attack of the same space.

    Cells are compared per model at **equal budgets** (same value, same space, flow or
    pixel), so a stronger budget of the gradient-free attack can never fire the check. A
    gradient-free attack that leaves fewer robust examples than every gradient attack at the
    same budget means the gradients mislead the attacks: a classic sign of gradient masking.

    Args:
        cells: attack cells with ``model``, ``attack``, ``budget``, ``robust_acc``,
            ``uses_gradients`` and ``space`` (default ``"flow"``).
        tolerance: margin (fraction) by which the gradient-free attack must be lower.

    Example:
        >>> cells = [{"model": "m", "attack": a, "budget": 1.0, "robust_acc": r, "uses_gradients": g}
        ...          for a, r, g in [("PGD", 0.8, True), ("FGSM", 0.9, True), ("ES", 0.3, False)]]
        >>> [f["check"] for f in check_es_beats_gradients(cells)]
        ['es_beats_gradients']
        >>> cells[2]["budget"] = 2.0  # a larger budget is no evidence
        >>> check_es_beats_gradients(cells)
        []
    """
    out: list[Finding] = []
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        if float(c["budget"]) > 0:
            groups[(c["model"], c.get("space", "flow"), float(c["budget"]))].append(c)
    for (model, _space, budget), group in sorted(groups.items()):
        grad = [c for c in group if c.get("uses_gradients", True)]
        if not grad:
            continue
        best_grad = min(grad, key=lambda c: c["robust_acc"])
        for es in (c for c in group if not c.get("uses_gradients", True)):
            if es["robust_acc"] < best_grad["robust_acc"] - tolerance:
                out.append(_finding(
                    "es_beats_gradients", model,
                    f"at budget {budget:g}, gradient-free {es['attack']} leaves {es['robust_acc']:.2%} robust "
                    f"accuracy, below every gradient attack at the same budget (best: {best_grad['attack']} "
                    f"{best_grad['robust_acc']:.2%}). The gradients mislead the attacks: a sign of gradient "
                    "masking.",
                    attack=es["attack"], budget=budget,
                ))
    return out


def check_budget(cell: dict[str, Any], rtol: float = 1e-4, atol: float = 1e-5) -> list[Finding]:
    """Flag a cell whose largest flow exceeds its budget (in the budget's norm).

    Example:
        >>> check_budget({"model": "m", "attack": "PGD", "budget": 1.0, "budget_norm": "Linf",
        ...               "linf_max": 1.5, "l2_max": 9.0})[0]["check"]
        'budget_exceeded'
    """
    key = "linf_max" if cell["budget_norm"] == "Linf" else "l2_max"
    size = cell.get(key)
    if size is None or size <= cell["budget"] * (1 + rtol) + atol:
        return []
    return [_finding(
        "budget_exceeded", cell["model"],
        f"{cell['attack']} at budget {cell['budget']:g} {cell.get('budget_unit', 'px')} returned a perturbation of "
        f"{cell['budget_norm']} norm {size:.4g}: the attack ignores its budget.",
        attack=cell["attack"], budget=cell["budget"],
    )]
