"""Model sources of the harness: our checkpoints, TorchScript files, ``module:callable`` + weights,
RobustBench zoo entries and live modules.

Every loader returns a model in eval mode that takes ``[0, 1]`` images and returns logits.
Files are read with ``torch.load(..., weights_only=True)`` (never unpickling code); TorchScript
files with ``torch.jit.load``. A ``module:callable`` is imported and called: **configs are
code** and must come from a trusted source.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgr_defense.checkpoint import load_model

from .config import ConfigError, ModelConfig
from .provenance import file_sha256
from .registry import import_object
from .robustbench import expected_weight_files, load_robustbench_model

__all__ = ["file_sha256", "import_callable", "load_entry", "load_state_dict_file", "model_fingerprint",
           "state_dict_sha256"]

logger = logging.getLogger(__name__)


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values).

    Example:
        >>> a = nn.Linear(2, 2)
        >>> state_dict_sha256(a) == state_dict_sha256(a), len(state_dict_sha256(a))
        (True, 64)
    """
    h = hashlib.sha256(type(model).__name__.encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _need(value: str | None, cfg: ModelConfig, name: str) -> str:
    if value is None:
        raise ConfigError(f"{cfg.key}.{name}: required for source {cfg.source!r}")
    return value


def model_fingerprint(cfg: ModelConfig) -> dict[str, Any]:
    """What identifies a model's weights, without building it (files are hashed).

    Raises:
        FileNotFoundError: a checkpoint, weights file or RobustBench weights file is missing.
    """
    fp: dict[str, Any] = {"source": cfg.source}
    if cfg.source in ("checkpoint", "torchscript"):
        if cfg.path is None or not Path(cfg.path).is_file():
            raise FileNotFoundError(f"{cfg.key}.path: {cfg.source} file not found: {cfg.path!r}")
        fp["sha256"] = file_sha256(cfg.path)
    elif cfg.source == "callable":
        fp.update(callable=cfg.callable, kwargs=cfg.kwargs,
                  sha256=file_sha256(cfg.weights) if cfg.weights else None)
    elif cfg.source == "robustbench":
        files = expected_weight_files(cfg.name, _need(cfg.dataset, cfg, "dataset"),
                                      _need(cfg.threat_model, cfg, "threat_model"),
                                      _need(cfg.model_dir, cfg, "model_dir"))
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{cfg.key}: RobustBench weights are not in model_dir={cfg.model_dir!r}: expected "
                f"{', '.join(missing)} (this harness never downloads; copy the file there)")
        fp["entry"] = f"{cfg.dataset}/{cfg.threat_model}/{cfg.name}"
        fp["sha256"] = [file_sha256(p) for p in files]
    else:
        fp["sha256"] = state_dict_sha256(cfg.obj)
    return fp


def import_callable(spec: str, key: str) -> Any:
    """Import ``package.module:attribute`` (:func:`deform_robust.registry.import_object`).

    Raises:
        ConfigError: the module cannot be imported, the attribute is missing or not callable (names ``key``).
    """
    try:
        return import_object(spec)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def load_state_dict_file(path: str, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights-only file (``state_dict`` key and DataParallel prefixes handled)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a damaged or foreign file
        raise ConfigError(f"{key}.weights: {path!r} is not a readable state dict (truncated?): "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{key}.weights: expected a state dict in {path!r}, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_torchscript(path: str, key: str) -> nn.Module:
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # RuntimeError for a non-TorchScript file
        raise ConfigError(f"{key}.path: {path!r} is not a readable TorchScript file: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(model, nn.Module):  # pragma: no cover - jit.load returns a ScriptModule
        raise ConfigError(f"{key}.path: {path!r} did not load as a module")
    return model


def load_entry(cfg: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of a config entry; returns ``(model in eval mode on the CPU, meta)``.

    Raises:
        FileNotFoundError: missing checkpoint/weights (names the file).
        ConfigError: a damaged file, a callable that cannot be imported or does not return an
            ``nn.Module``, or weights that do not fit it.
    """
    meta: dict[str, Any] = {}
    model: Any
    if cfg.source == "checkpoint":
        path = _need(cfg.path, cfg, "path")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{cfg.key}.path: checkpoint file not found: {path!r}")
        try:
            model, meta = load_model(path)
        except ValueError as err:
            raise ConfigError(f"{cfg.key}.path: {err}") from None
    elif cfg.source == "torchscript":
        model = _load_torchscript(_need(cfg.path, cfg, "path"), cfg.key)
    elif cfg.source == "callable":
        model = import_callable(_need(cfg.callable, cfg, "callable"), f"{cfg.key}.callable")(**cfg.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{cfg.key}.callable: {cfg.callable!r} returned {type(model).__name__}, "
                              "expected an nn.Module")
        if cfg.weights is not None:
            try:
                model.load_state_dict(load_state_dict_file(cfg.weights, cfg.key))
            except RuntimeError as err:
                raise ConfigError(f"{cfg.key}.weights: {cfg.weights!r} does not fit "
                                  f"{cfg.callable}(**{cfg.kwargs}): {err}") from err
    elif cfg.source == "robustbench":
        model = load_robustbench_model(cfg.name, _need(cfg.dataset, cfg, "dataset"),
                                       _need(cfg.threat_model, cfg, "threat_model"),
                                       _need(cfg.model_dir, cfg, "model_dir"))
        meta = {"robustbench": f"{cfg.dataset}/{cfg.threat_model}/{cfg.name}"}
    else:
        model = cfg.obj
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{cfg.key}.obj: expected an nn.Module, got {type(model).__name__}")
    model.eval()
    return model, meta
