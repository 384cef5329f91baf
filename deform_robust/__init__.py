"""deform_robust: the installed evaluation harness of deform-robust, and the ``deform-robust`` command.

Three layers, one installed distribution (``pip install deform-robust``):

- :mod:`torchattacks_deform`: the flow attacks, the suite attack ``FlowAutoAttack`` and the
  one-call ``evaluate_robustness(model, images, labels, eps=...)``.
- :mod:`fgr_defense`: regularized and adversarial training.
- :mod:`deform_robust` (this package): configs of models x attacks x budgets run cell by
  cell with resume (:func:`run_config`), an open attack registry (flow attacks,
  ``torchattacks.<Name>`` pixel baselines, your ``module:callable``), your own data
  (``.pt``/``.npz``/ImageFolder), RobustBench models loaded offline
  (:func:`load_robustbench_model`), and the ``deform-robust`` console script.

The repository's ``eval/`` folder (not installed) is the experiment harness built on these:
the paper's demo and reproductions, Markdown reports and figures.

Attributes are imported on first use, so ``deform-robust --help`` does not load torch.

Example:
    >>> from deform_robust import resolve_attack
    >>> resolve_attack("torchattacks.PGD").info.space
    'pixel'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _autoattack_shim

# robustbench imports `autoattack`; the installed fork is `pyautoattack` (quirk 1): the alias is an import
# hook that imports nothing until robustbench asks, so `import deform_robust` is enough for `import robustbench`.
_autoattack_shim.install()

if TYPE_CHECKING:
    from torchattacks_deform import FlowAutoAttack, evaluate_robustness

    from .config import EvalConfig, load_config, parse_config
    from .data import TestData, load_test_data
    from .models import load_model_source
    from .registry import build_attack, resolve_attack
    from .robustbench import load_robustbench_model
    from .runner import run_config
    from .training.run import train_from_spec
    from .training.spec import TrainResult, TrainSpec

__version__ = "0.2.0"

_LAZY = {
    "FlowAutoAttack": "torchattacks_deform",
    "evaluate_robustness": "torchattacks_deform",
    "EvalConfig": ".config",
    "load_config": ".config",
    "parse_config": ".config",
    "TestData": ".data",
    "load_test_data": ".data",
    "load_model_source": ".models",
    "build_attack": ".registry",
    "resolve_attack": ".registry",
    "load_robustbench_model": ".robustbench",
    "run_config": ".runner",
    "TrainResult": ".training.spec",
    "TrainSpec": ".training.spec",
    "train_from_spec": ".training.run",
}

__all__ = [
    "EvalConfig",
    "FlowAutoAttack",
    "TestData",
    "TrainResult",
    "TrainSpec",
    "build_attack",
    "evaluate_robustness",
    "load_config",
    "load_model_source",
    "load_robustbench_model",
    "load_test_data",
    "parse_config",
    "resolve_attack",
    "run_config",
    "train_from_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deform_robust' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
