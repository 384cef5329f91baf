"""The one place that knows robustbench 1.1.1's quirks, and offline-only zoo loading.

Quirks hidden here (each is a workaround for the installed third-party versions):

1. ``robustbench/__init__.py`` imports ``robustbench.eval``, which does ``from autoattack import
   AutoAttack`` and ``from autoattack.state import EvaluationState``. The PyPI dependency that
   robustbench 1.1.1 pulls in installs that code as the module ``pyautoattack`` (a fork whose
   ``run_standard_evaluation`` takes ``batch_size=`` where robustbench passes ``bs=``), so
   ``import robustbench`` fails with ``ModuleNotFoundError: No module named 'autoattack'``.
   Importing this module installs the alias of :mod:`deform_robust._autoattack_shim` (the one
   place for it), so every later ``import robustbench`` works, here or in the user's code.
2. ``robustbench.loaders`` imports ``pkg_resources`` (setuptools < 81), which warns that it is
   deprecated on import. The warning is silenced around the import only.
3. ``robustbench.utils.load_model`` downloads from Google Drive (``gdown``) when the weights file is
   missing, and creates a ``timm`` model with ``pretrained=True`` (a Hugging Face download) for
   names that timm knows. :func:`load_robustbench_model` checks the expected files first and
   raises :class:`FileNotFoundError` naming them, so nothing ever reaches the network.
4. ``load_model`` calls ``torch.load`` without ``weights_only``; PyTorch >= 2.6 defaults to
   ``weights_only=True``. On an older PyTorch, or when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set,
   the file is first loaded here with ``weights_only=True`` so that a pickle with code is
   rejected before robustbench opens it.

Expected weights layout (``robustbench.utils.load_model``):
``<model_dir>/<dataset>/<threat_model>/<name>.pt``, and for ensembles (a list of Google-Drive
ids) ``<model_dir>/<dataset>/<threat_model>/<name>.pt_m0.pt``, ``..._m1.pt``, ...
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from . import _autoattack_shim

_autoattack_shim.install()  # before any robustbench import (quirk 1)

__all__ = [
    "ROBUSTBENCH_DATASETS",
    "expected_weight_files",
    "import_robustbench_utils",
    "load_robustbench_model",
    "robustbench_entry",
]

#: Datasets of the RobustBench zoo that this harness can evaluate (it has loaders for these).
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")
_THREAT_MODELS = ("Linf", "L2", "corruptions")


def import_robustbench_utils() -> ModuleType:
    """Import and return ``robustbench.utils``, working around quirks 1 and 2 above.

    Example:
        >>> rbu = import_robustbench_utils()
        >>> callable(rbu.load_model)
        True
    """
    _autoattack_shim.install()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # timm (imported by robustbench.utils) uses the deprecated torch.jit.interface.
        warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)
        try:
            return importlib.import_module("robustbench.utils")
        except ModuleNotFoundError as err:
            if err.name == "pkg_resources":
                raise ImportError(
                    "robustbench 1.1.1 imports pkg_resources, which setuptools >= 81 removed: "
                    "pip install 'setuptools<81'"
                ) from err
            if err.name in ("autoattack", "robustbench"):  # pragma: no cover - the extra is not installed
                raise ImportError(
                    f"robustbench models need the robustbench extra (no module {err.name!r}, nor 'pyautoattack'): "
                    "pip install 'deform-robust[robustbench]'"
                ) from err
            raise


def _enums() -> tuple[Any, Any]:
    import_robustbench_utils()
    # robustbench is optional (pip install deform-robust[robustbench])
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return BenchmarkDataset, ThreatModel


def robustbench_entry(name: str, dataset: str, threat_model: str) -> dict[str, Any]:
    """The zoo's entry ``{"model": constructor, "gdrive_id": ...}`` for a model name.

    Raises:
        ValueError: unknown dataset, threat model or model name (with close matches).

    Example:
        >>> sorted(robustbench_entry("Standard", "cifar10", "Linf"))
        ['gdrive_id', 'model']
    """
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ValueError(
            f"dataset: expected one of {ROBUSTBENCH_DATASETS} for RobustBench models, got {dataset!r}"
        )
    if threat_model not in _THREAT_MODELS:
        raise ValueError(f"threat_model: expected one of {_THREAT_MODELS}, got {threat_model!r}")
    benchmark_dataset, threat = _enums()
    # robustbench is optional (pip install deform-robust[robustbench])
    from robustbench.model_zoo import model_dicts

    zoo = model_dicts[benchmark_dataset(dataset)][threat(threat_model)]
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(
            f"model: {name!r} is not in RobustBench's {dataset}/{threat_model} zoo "
            f"({len(zoo)} entries){hint}"
        )
    return dict(zoo[name])


def expected_weight_files(name: str, dataset: str, threat_model: str, model_dir: str | Path) -> list[Path]:
    """The file(s) ``robustbench.utils.load_model`` reads for a zoo entry (see module docstring).

    Example:
        >>> [str(p) for p in expected_weight_files("Standard", "cifar10", "Linf", "models")]
        ['models/cifar10/Linf/Standard.pt']
    """
    entry = robustbench_entry(name, dataset, threat_model)
    base = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(ids))]
    return [base]


def _weights_only_is_default() -> bool:
    forced = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "true", "yes", "y")
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6) and not forced


def load_robustbench_model(
    name: str, dataset: str, threat_model: str, model_dir: str | Path
) -> nn.Module:
    """Load a RobustBench zoo model from ``model_dir`` without any network access.

    Args:
        name: zoo name, e.g. ``"Standard"`` or ``"Carmon2019Unlabeled"``.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        threat_model: ``"Linf"``, ``"L2"`` or ``"corruptions"``.
        model_dir: robustbench's ``model_dir``; weights are read from
            ``<model_dir>/<dataset>/<threat_model>/<name>.pt``.

    Returns:
        The model in eval mode, on the CPU, taking ``[0, 1]`` images.

    Raises:
        FileNotFoundError: the weights are not in ``model_dir`` (names the expected file(s)).
        ValueError: unknown entry, or an entry robustbench would fetch from timm's hub.
    """
    files = expected_weight_files(name, dataset, threat_model, model_dir)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"RobustBench weights for {name!r} ({dataset}/{threat_model}) are not in "
            f"model_dir={str(model_dir)!r}: expected {', '.join(missing)}. This harness never "
            "downloads; fetch them once on a machine with network access, e.g. "
            f"robustbench.utils.load_model({name!r}, model_dir={str(model_dir)!r}, "
            f"dataset={dataset!r}, threat_model={threat_model!r}), and copy the file(s) there."
        )
    rbu = import_robustbench_utils()
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
    if rbu.timm.is_model(timm_name):
        raise ValueError(
            f"model: RobustBench loads {name!r} through timm's hub ({timm_name!r}), which needs "
            "the network; not supported offline"
        )
    if not _weights_only_is_default():
        for path in files:  # reject pickles with code before robustbench's plain torch.load
            torch.load(path, map_location="cpu", weights_only=True)
    model = rbu.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    return model.eval()
