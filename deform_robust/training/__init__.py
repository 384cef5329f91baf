"""Training orchestration: whole runs planned, resumed and launched from a :class:`TrainSpec`.

Harness code, kept apart from the training library (timm keeps ``train.py`` beside ``timm/``):
:mod:`fgr_defense` holds what a user drops into their own loop (``Trainer``, regularizers,
defenses, schedules, data, models); this package turns a spec into a finished run folder.

- :mod:`.spec`: :class:`TrainSpec` (validated, JSON-able), its identity, :class:`TrainResult`,
  :func:`default_out_dir`.
- :mod:`.run`: :func:`train_from_spec` (modes ``new``/``resume``/``auto``, the output lock).
- :mod:`.cli`: the ``deform-robust train`` command (torch-free until it runs).

Names are imported on first use, so that ``deform-robust --help`` does not load torch.

Example:
    >>> from deform_robust.training import TrainSpec
    >>> TrainSpec(defense="fgr", weight=2, epochs=1).defense
    'FGR'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import TRAIN_MODES, train_from_spec
    from .spec import TrainResult, TrainSpec, default_out_dir

_LAZY = {"TRAIN_MODES": ".run", "train_from_spec": ".run", "TrainResult": ".spec", "TrainSpec": ".spec",
         "default_out_dir": ".spec"}

__all__ = ["TRAIN_MODES", "TrainResult", "TrainSpec", "default_out_dir", "train_from_spec"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deform_robust.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
