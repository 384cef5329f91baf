"""The attacks the harness can run, each described in one place.

A config names an attack by its *family*:

- a flow attack of :mod:`torchattacks_deform`: ``FlowFGSM``, ``FlowPGD``, ``FlowAPGD``,
  ``FlowAPGDT``, ``StAdv``, ``FlowES``, ``FlowSquare`` and the suite ``FlowAutoAttack``. Each class describes itself (``info``: kind, gradient
  use, budget argument; ``budget_norm(params)``; ``cost(params)``); the registry only reads
  those attributes. Budgets are flow sizes in **pixels**.
- any attack class of torchattacks as ``torchattacks.<Name>`` (``torchattacks.PGD``,
  ``torchattacks.FGSM``, ``torchattacks.APGD``, ...): a pixel-space baseline. Budgets are
  intensities on ``[0, 1]`` images (``8/255`` = 0.0314), given to the constructor's ``eps``.
- a user's factory as ``package.module:callable``, called as ``callable(model, eps=budget,
  **params)``; it must return an attack ``(images, labels) -> adversarial images`` (a
  torchattacks ``Attack`` or any callable). It may describe itself with an ``info``
  attribute (a :class:`torchattacks_deform.AttackInfo`); otherwise it counts as a
  pixel-space attack that uses gradients, with its budget in ``eps``. **Importing it runs
  its module's code: configs are code and must come from a trusted source.**

Harness-only parameter:
    ``alpha_ratio`` (attacks that take ``alpha``): the step size as a fraction of the
    budget, ``alpha = alpha_ratio * budget``, so that one setting serves every budget.

Validation:
    :func:`validate_attack` checks a config entry when the config is parsed, long before the
    first cell runs: unknown families and parameters, parameter types against the
    constructor's defaults (an ``int`` default needs an int, a float default a finite
    number, a ``bool`` default a bool), and then builds the attack once per budget on a tiny
    stand-in model so that the attack's own validators run. Errors name the entry, e.g.
    ``attacks[2].params.steps``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torchattacks
from torch import nn

import torchattacks_deform
from torchattacks_deform import AttackInfo

__all__ = [
    "FLOW_FAMILIES",
    "HARNESS_PARAMS",
    "AttackEntry",
    "attack_families",
    "build_attack",
    "import_object",
    "resolve_attack",
    "validate_attack",
]

#: The flow attacks of torchattacks_deform known by their bare class name.
FLOW_FAMILIES = ("FlowFGSM", "FlowPGD", "FlowAPGD", "FlowAPGDT", "StAdv", "FlowES", "FlowSquare", "FlowAutoAttack")
#: Parameters the harness consumes itself (module docstring).
HARNESS_PARAMS = ("alpha_ratio",)

# torchattacks' attacks by the paper's categories (the rest count as "multi-step" when they
# take ``steps``, else "single-step"); gradient-free ones never call autograd.
_PIXEL_KINDS = {"FGSM": "single-step", "RFGSM": "single-step", "FFGSM": "single-step", "TPGD": "multi-step",
                "CW": "optimization", "DeepFool": "optimization", "SparseFool": "optimization",
                "Square": "gradient-free", "OnePixel": "gradient-free", "Pixle": "gradient-free",
                "AutoAttack": "suite", "MultiAttack": "suite"}
_GRADIENT_FREE = ("Square", "OnePixel", "Pixle")


@dataclass(frozen=True)
class AttackEntry:
    """How the harness builds and describes one attack family.

    Attributes:
        family: the name used in configs.
        factory: ``factory(model, **kwargs) -> attack``.
        info: kind, gradient use, budget argument and space (``"flow"`` or ``"pixel"``).
        budget_unit: ``"px"`` (flow displacement) or ``"intensity"`` (pixel values in [0, 1]).
        defaults: the constructor's keyword defaults (types are checked against them).
        open_kwargs: the factory takes ``**kwargs`` (unknown parameters are not refused).
    """

    family: str
    factory: Callable[..., Any]
    info: AttackInfo
    budget_unit: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    open_kwargs: bool = False

    def budget_norm(self, params: Mapping[str, Any]) -> str:
        """The norm the budget is measured in (``"Linf"`` or ``"L2"``)."""
        own = getattr(self.factory, "budget_norm", None)
        if callable(own):
            return str(own(params))
        norm = params.get("norm", self.defaults.get("norm"))
        if isinstance(norm, str) and norm in ("Linf", "L2"):
            return norm
        return "L2" if "L2" in self.family else "Linf"

    def cost(self, params: Mapping[str, Any]) -> float:
        """Forward+backward passes per example at worst (balances the cells over ranks)."""
        own = getattr(self.factory, "cost", None)
        if callable(own):
            return float(own(params))
        steps = params.get("steps", self.defaults.get("steps", 1))
        return float(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else 1.0

    def accepted(self) -> list[str]:
        """Parameter names a config may set (the budget argument excluded)."""
        return sorted((set(self.defaults) - {self.info.budget_arg})
                      | ({"alpha_ratio"} if "alpha" in self.defaults else set()))

    def build(self, model: nn.Module, budget: float, params: Mapping[str, Any]) -> Any:
        """The attack on ``model`` with ``budget`` (in :attr:`budget_unit`)."""
        kwargs = dict(params)
        if "alpha_ratio" in kwargs:
            kwargs["alpha"] = float(kwargs.pop("alpha_ratio")) * float(budget)
        kwargs[self.info.budget_arg] = float(budget)
        return self.factory(model, **kwargs)


def _signature(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    defaults, open_kwargs = {}, False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind == p.VAR_KEYWORD:
            open_kwargs = True
        elif p.kind != p.VAR_POSITIONAL and i > 0 and p.name not in ("self", "model"):
            defaults[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return defaults, open_kwargs


def _pixel_info(name: str, defaults: Mapping[str, Any]) -> AttackInfo:
    kind = _PIXEL_KINDS.get(name, "multi-step" if "steps" in defaults else "single-step")
    return AttackInfo(kind=kind, uses_gradients=name not in _GRADIENT_FREE, budget_arg="eps", space="pixel")


def import_object(spec: str) -> Any:
    """Import ``package.module:attribute`` (dots allowed in the attribute); ValueError if impossible.

    Modules resolve as under ``python -m``: the current working directory comes first on
    ``sys.path`` (it is put there when missing), so ``mypkg.nets:Net`` works from the folder
    that holds ``mypkg/`` without ``PYTHONPATH=.``, from the ``deform-robust`` console script too.
    """
    module_name, _, attr = spec.partition(":")
    _cwd_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def _cwd_on_path() -> None:
    """Put the working directory first on ``sys.path`` unless it is there (as ``""`` or itself)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path and os.path.realpath(cwd) not in sys.path:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def resolve_attack(family: Any) -> AttackEntry:
    """The :class:`AttackEntry` of a family name (see the module docstring).

    Raises:
        ValueError: unknown family, a torchattacks name that does not exist, or a
            ``module:callable`` that cannot be imported.

    Example:
        >>> resolve_attack("FlowPGD").info.kind, resolve_attack("FlowPGD").budget_unit
        ('multi-step', 'px')
        >>> e = resolve_attack("torchattacks.PGD")
        >>> e.info.space, e.budget_unit, e.budget_norm({})
        ('pixel', 'intensity', 'Linf')
    """
    if not isinstance(family, str) or not family:
        raise ValueError(f"expected an attack family name, got {family!r}")
    if family in FLOW_FAMILIES:
        cls = getattr(torchattacks_deform, family)
        defaults, open_kwargs = _signature(cls)
        return AttackEntry(family, cls, cls.info, "px", defaults, open_kwargs)
    if family.startswith("torchattacks."):
        name = family[len("torchattacks."):]
        cls = getattr(torchattacks, name, None)
        if not isinstance(cls, type):
            known = sorted(n for n in dir(torchattacks) if isinstance(getattr(torchattacks, n), type)
                           and n[0].isupper() and n not in ("Attack", "MultiAttack", "LGV"))
            raise ValueError(f"torchattacks has no attack {name!r}; expected one of {known}")
        defaults, open_kwargs = _signature(cls)
        if "eps" not in defaults:
            raise ValueError(f"torchattacks.{name} takes no 'eps' budget; the harness needs one")
        return AttackEntry(family, cls, _pixel_info(name, defaults), "intensity", defaults, open_kwargs)
    if ":" in family:
        factory = import_object(family)
        defaults, open_kwargs = _signature(factory)
        info = getattr(factory, "info", None)
        if not isinstance(info, AttackInfo):
            info = AttackInfo(kind="custom", uses_gradients=True, budget_arg="eps", space="pixel")
        unit = "px" if info.space == "flow" else "intensity"
        return AttackEntry(family, factory, info, unit, defaults, open_kwargs)
    raise ValueError(f"unknown attack {family!r}; expected one of {list(FLOW_FAMILIES)}, "
                     "'torchattacks.<Name>' or 'package.module:callable'")


def attack_families() -> list[str]:
    """The bare family names (flow attacks); torchattacks and callables are open-ended."""
    return list(FLOW_FAMILIES)


def _check_type(name: str, value: Any, default: Any, key: str) -> None:
    """A parameter's type must match its default's: ``int`` -> int, ``float`` -> finite number."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"{key}.{name}: expected {what} (like the default {default!r}), got {value!r}")


def _stand_in() -> nn.Module:
    """A tiny model for building attacks at parse time (no forward pass happens)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def validate_attack(family: str, params: Mapping[str, Any], budgets: tuple[float, ...], key: str) -> AttackEntry:
    """Check a config entry now (see the module docstring); returns its entry.

    Raises:
        ValueError: the message starts with ``key`` and the parameter, e.g.
            ``attacks[1].params.steps: expected an int >= 0, got -5``.

    Example:
        >>> validate_attack("FlowPGD", {"steps": 5, "alpha_ratio": 0.25}, (0.5,), "attacks[0]").family
        'FlowPGD'
        >>> validate_attack("FlowPGD", {"steps": "5"}, (0.5,), "attacks[0]")
        Traceback (most recent call last):
        ...
        ValueError: attacks[0].params.steps: expected an int (like the default 10), got '5'
    """
    try:
        entry = resolve_attack(family)
    except ValueError as err:
        raise ValueError(f"{key}.family: {err}") from None
    pkey = f"{key}.params"
    budget_arg = entry.info.budget_arg
    for name, value in params.items():
        if name == budget_arg:
            raise ValueError(f"{pkey}.{name}: the budget comes from 'budgets'; do not set it in params")
        if name == "alpha_ratio":
            if "alpha" not in entry.defaults:
                raise ValueError(f"{pkey}.alpha_ratio: {family} takes no step size 'alpha'")
            if "alpha" in params:
                raise ValueError(f"{pkey}.alpha_ratio: give either alpha or alpha_ratio, not both")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{pkey}.alpha_ratio: expected a finite number > 0, got {value!r}")
            continue
        if name not in entry.defaults and not entry.open_kwargs:
            raise ValueError(f"{pkey}.{name}: {family} takes no parameter {name!r}; "
                             f"expected one of {entry.accepted()}")
        _check_type(name, value, entry.defaults.get(name), pkey)
    model = _stand_in()
    for j, budget in enumerate(budgets):
        if budget == 0:
            continue
        try:
            entry.build(model, budget, params)
        except (TypeError, ValueError) as err:
            msg = str(err)
            first = msg.split(":", 1)[0].strip()
            if first == budget_arg:
                raise ValueError(f"{key}.budgets[{j}]: {msg}") from None
            target = f"{pkey}.{first}" if first in params or first == "alpha" else pkey
            raise ValueError(f"{target}: {msg.split(':', 1)[1].strip() if target != pkey else msg}") from None
    return entry


def build_attack(family: str, model: nn.Module, budget: float, params: Mapping[str, Any]) -> Any:
    """Build the attack of ``family`` on ``model`` with ``budget`` (see :class:`AttackEntry`).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> atk = build_attack("FlowPGD", model, 2.0, {"steps": 4, "alpha_ratio": 0.1})
        >>> atk.eps, atk.alpha
        (2.0, 0.2)
    """
    return resolve_attack(family).build(model, budget, params)
