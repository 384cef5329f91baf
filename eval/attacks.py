"""The attack suite: the paper's four attack families, each built from a config and a budget.

Convention:
    Budgets are in **pixels** (see :mod:`torchattacks_deform.flow`). A family's budget goes to
    one constructor argument: ``eps`` for FlowFGSM, FlowPGD and FlowES (in the attack's
    ``norm``, ``"Linf"`` unless ``params.norm`` says otherwise) and ``bound`` (the Linf flow
    bound) for StAdv. A budget of 0 is the identity: the harness does not run the attack.

Harness-only parameter:
    ``alpha_ratio`` (FlowPGD): the step size as a fraction of the budget,
    ``alpha = alpha_ratio * eps``, so one setting serves every budget. Without ``alpha`` or
    ``alpha_ratio`` the attack's own default applies (FlowPGD: ``eps / 4``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "ATTACK_FAMILIES",
    "AttackFamily",
    "attack_class",
    "attack_cost",
    "budget_norm",
    "build_attack",
    "validate_params",
]


@dataclass(frozen=True)
class AttackFamily:
    """How the harness builds one attack family.

    Attributes:
        name: class name in :mod:`torchattacks_deform`.
        kind: the paper's category: single-step, multi-step, optimization or gradient-free.
        uses_gradients: False for the gradient-free family (the masking check compares them).
        budget_arg: constructor argument that receives the budget (pixels).
        harness_params: extra config parameters the harness consumes itself.
    """

    name: str
    kind: str
    uses_gradients: bool
    budget_arg: str
    harness_params: tuple[str, ...] = ()


ATTACK_FAMILIES: dict[str, AttackFamily] = {
    "FlowFGSM": AttackFamily("FlowFGSM", "single-step", True, "eps"),
    "FlowPGD": AttackFamily("FlowPGD", "multi-step", True, "eps", ("alpha_ratio",)),
    "StAdv": AttackFamily("StAdv", "optimization", True, "bound"),
    "FlowES": AttackFamily("FlowES", "gradient-free", False, "eps"),
}


def _family(family: str) -> AttackFamily:
    if family not in ATTACK_FAMILIES:
        raise ValueError(f"family: unknown attack {family!r}; expected one of {sorted(ATTACK_FAMILIES)}")
    return ATTACK_FAMILIES[family]


def attack_class(family: str) -> type:
    """The ``torchattacks_deform`` class of a family (imported lazily).

    Example:
        >>> attack_class("FlowPGD").__name__
        'FlowPGD'
    """
    import torchattacks_deform

    return getattr(torchattacks_deform, _family(family).name)  # type: ignore[no-any-return]


def _signature_params(family: str) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(attack_class(family))
    return {k: p for k, p in sig.parameters.items() if k not in ("self", "model")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def validate_params(family: str, params: dict[str, Any], key: str = "params") -> None:
    """Raise ``ValueError`` naming ``key.<param>`` for parameters the attack does not take.

    Example:
        >>> validate_params("FlowPGD", {"steps": 10, "alpha_ratio": 0.25})
        >>> validate_params("FlowPGD", {"eps": 1.0})
        Traceback (most recent call last):
        ...
        ValueError: params.eps: the budget comes from 'budgets'; do not set it in params
    """
    fam = _family(family)
    accepted = _signature_params(family)
    for name, value in params.items():
        if name == fam.budget_arg:
            raise ValueError(f"{key}.{name}: the budget comes from 'budgets'; do not set it in params")
        if name in fam.harness_params:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{key}.{name}: expected a positive number, got {value!r}")
            continue
        if name not in accepted:
            expected = sorted(set(accepted) - {fam.budget_arg} | set(fam.harness_params))
            raise ValueError(f"{key}.{name}: {family} takes no parameter {name!r}; expected one of {expected}")
    if "alpha" in params and "alpha_ratio" in params:
        raise ValueError(f"{key}.alpha_ratio: give either alpha (pixels) or alpha_ratio, not both")


def _default(family: str, name: str) -> Any:
    p = _signature_params(family).get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def budget_norm(family: str, params: dict[str, Any]) -> str:
    """The norm the budget is measured in: StAdv's bound is Linf; others follow ``norm``.

    Example:
        >>> budget_norm("StAdv", {}), budget_norm("FlowPGD", {"norm": "L2"})
        ('Linf', 'L2')
    """
    if family == "StAdv":
        return "Linf"
    return str(params.get("norm", _default(family, "norm") or "Linf"))


def build_attack(family: str, model: nn.Module, budget: float, params: dict[str, Any]) -> Any:
    """Build the torchattacks-style attack of ``family`` with ``budget`` pixels.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> atk = build_attack("FlowPGD", model, 2.0, {"steps": 4, "alpha_ratio": 0.1})
        >>> atk.eps, atk.alpha
        (2.0, 0.2)
    """
    fam = _family(family)
    kwargs = dict(params)
    if "alpha_ratio" in kwargs:
        kwargs["alpha"] = float(kwargs.pop("alpha_ratio")) * budget
    kwargs[fam.budget_arg] = budget
    return attack_class(family)(model, **kwargs)


def attack_cost(family: str, params: dict[str, Any]) -> float:
    """A rough cost (forward/backward passes per example) used to balance ranks.

    Example:
        >>> attack_cost("FlowES", {"population": 10, "steps": 5})
        50.0
    """
    def get(name: str, fallback: float) -> float:
        v = params.get(name, _default(family, name))
        return float(v) if isinstance(v, (int, float)) else fallback

    if family == "FlowFGSM":
        return 1.0
    if family == "FlowES":
        return get("population", 10) * get("steps", 10)
    return get("steps", 10)
