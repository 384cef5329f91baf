"""fgr_defense: drop-in gradient-regularized and adversarial training against deformations.

The package imports lazily (PEP 562): ``import fgr_defense`` is instant and loads no
``torch``; each name is imported from its module on first use (``from fgr_defense import
Trainer`` works as usual). This keeps ``deform-robust --help`` fast.

What a user drops into their own training loop lives here: :class:`Trainer`, the regularizers
and penalties, transforms, models, data, schedules and :func:`build_defense`. Planning and
resuming whole runs (``TrainSpec``, ``train_from_spec``, the ``train`` command) is harness code in
:mod:`deform_robust.training`.

Example:
    >>> import torch
    >>> from fgr_defense import FGR, Trainer
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> trainer = Trainer(model, opt, regularizer=FGR(1.0, sigma=0.1), device="cpu", progress=False, seed=0)
    >>> out = trainer.train_step(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> float(out["loss"]) == float(out["task_loss"] + out["reg_loss"])
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "load_checkpoint": "checkpoint", "load_model": "checkpoint", "save_model": "checkpoint",
    "dataset_info": "data", "get_dataset": "data", "load_mnist5k": "data",
    "resolve_device": "device",
    "SmallCNN": "models", "build_model": "models", "resnet18": "models", "vgg11": "models",
    "derive_seed": "naming", "slugify": "naming",
    "DEFENSES": "defenses", "PAPER_LAMBDAS": "defenses", "Defense": "defenses", "Schedule": "defenses",
    "build_defense": "defenses", "get_schedule": "defenses",
    "resolve_defense_name": "defenses",
    "FGR": "regularizers", "IGR": "regularizers", "GradientRegularizer": "regularizers",
    "RegularizerOutput": "regularizers", "gradient_penalty": "regularizers",
    "paper_lambda_to_weight": "regularizers", "paper_sigma_to_pixels": "regularizers",
    "per_example_cross_entropy": "regularizers",
    "NonFiniteLossError": "trainer", "Trainer": "trainer", "TrainingInterrupted": "trainer",
    "Additive": "transforms", "Affine": "transforms", "Flow": "transforms", "MaskedAdditive": "transforms",
    "Multiplicative": "transforms", "Transform": "transforms", "affine_flow": "transforms",
}

__all__ = [
    "Additive", "Affine", "DEFENSES", "Defense", "FGR", "Flow", "GradientRegularizer", "IGR",
    "MaskedAdditive", "Multiplicative", "NonFiniteLossError", "PAPER_LAMBDAS", "RegularizerOutput",
    "Schedule", "SmallCNN", "Trainer", "TrainingInterrupted", "Transform",
    "affine_flow", "build_defense", "build_model", "dataset_info", "derive_seed", "get_dataset",
    "get_schedule", "gradient_penalty", "load_checkpoint", "load_mnist5k", "load_model",
    "paper_lambda_to_weight", "paper_sigma_to_pixels", "per_example_cross_entropy", "resnet18",
    "resolve_defense_name", "resolve_device", "save_model", "slugify", "vgg11",
]

if TYPE_CHECKING:  # what mypy and IDEs see; at run time __getattr__ imports on first use
    from .checkpoint import load_checkpoint, load_model, save_model
    from .data import dataset_info, get_dataset, load_mnist5k
    from .defenses import (
        DEFENSES,
        PAPER_LAMBDAS,
        Defense,
        Schedule,
        build_defense,
        get_schedule,
        resolve_defense_name,
    )
    from .device import resolve_device
    from .models import SmallCNN, build_model, resnet18, vgg11
    from .naming import derive_seed, slugify
    from .regularizers import (
        FGR,
        IGR,
        GradientRegularizer,
        RegularizerOutput,
        gradient_penalty,
        paper_lambda_to_weight,
        paper_sigma_to_pixels,
        per_example_cross_entropy,
    )
    from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted
    from .transforms import (
        Additive,
        Affine,
        Flow,
        MaskedAdditive,
        Multiplicative,
        Transform,
        affine_flow,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fgr_defense' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
