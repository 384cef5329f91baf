"""Model sources of the harness: our checkpoints, TorchScript files, ``module:callable`` + weights,
RobustBench zoo entries and live modules.

One loader, :func:`load_entry`, builds every model from a :class:`~deform_robust.config.ModelConfig`:
a config's ``models`` entries, and ``deform-robust evaluate --model SOURCE`` through
:func:`source_config` (the command line's source string as a config entry keyed ``--model``).
Every model comes back in eval mode; it takes ``[0, 1]`` images and returns logits.
Files are read with ``torch.load(..., weights_only=True)`` (never unpickling code); TorchScript
files with ``torch.jit.load``. A ``module:callable`` is imported and called: **configs are
code** and must come from a trusted source.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgr_defense.checkpoint import NotACheckpointError, load_model

from .config import ConfigError, ModelConfig
from .provenance import file_sha256
from .registry import import_object
from .robustbench import ROBUSTBENCH_DATASETS, expected_weight_files, load_robustbench_model

__all__ = ["file_sha256", "import_callable", "load_entry", "load_model_source", "load_state_dict_file",
           "model_fingerprint", "source_config", "state_dict_sha256", "weight_files"]

#: The config key of a model given on the command line (errors then name the flags).
CLI_KEY = "--model"

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


def _where(cfg: ModelConfig, field: str) -> str:
    """What an error names: a config entry's field (``models[0].path``), or the command-line flag."""
    if cfg.key == CLI_KEY:
        return "--weights" if field == "weights" else CLI_KEY
    return f"{cfg.key}.{field}"


def _need(value: str | None, cfg: ModelConfig, name: str) -> str:
    if value is None:
        raise ConfigError(f"{_where(cfg, name)}: required for source {cfg.source!r}")
    return value


def _is_torchscript(path: str | Path) -> bool:
    """A TorchScript archive (a zip with ``constants.pkl``), as opposed to a ``torch.save`` pickle."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def source_config(source: str, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                  model_dir: str = "models", threat_model: str = "Linf", dataset: str | None = None) -> ModelConfig:
    """The config entry of a command-line model source (``deform-robust evaluate --model SOURCE``).

    Sources: ``robustbench:<name>`` or ``robustbench:<zoo>/<name>`` (``zoo`` ``cifar10`` or
    ``cifar100``; needed when ``dataset`` is the user's own data of the zoo's image shape), a file
    (TorchScript when it is a TorchScript archive, else a checkpoint of ours), or
    ``package.module:callable`` called with ``kwargs`` and loaded with the state dict ``weights``.

    Raises:
        FileNotFoundError: no file and no ``module:callable``. ValueError: an unusable source.

    Example:
        >>> cfg = source_config("robustbench:cifar10/Standard")
        >>> cfg.source, cfg.dataset, cfg.name, cfg.threat_model
        ('robustbench', 'cifar10', 'Standard', 'Linf')
        >>> source_config("mypkg.nets:Net", weights="net.pt").source
        'callable'
    """
    if source.startswith("robustbench:"):
        zoo, _, name = source.split(":", 1)[1].rpartition("/")
        zoo = zoo or (dataset if dataset in ROBUSTBENCH_DATASETS else "")
        if zoo not in ROBUSTBENCH_DATASETS:
            raise ValueError(f"--model: expected robustbench:<zoo>/<name> with zoo one of {ROBUSTBENCH_DATASETS} "
                             f"(e.g. robustbench:cifar10/{name or 'Standard'}) when --data is your own data, got "
                             f"{source!r} with --data {dataset!r}")
        return ModelConfig(name=name, source="robustbench", defense="unknown", key=CLI_KEY, dataset=zoo,
                           threat_model=threat_model, model_dir=model_dir)
    if Path(source).is_file():
        if weights is not None:
            raise ValueError("--weights: only used with a 'module:callable' model")
        kind = "torchscript" if _is_torchscript(source) else "checkpoint"
        return ModelConfig(name=source, source=kind, defense="unknown", key=CLI_KEY, path=source)
    if ":" not in source:
        raise FileNotFoundError(f"--model: no file at {source!r} (and not 'module:callable' or 'robustbench:<name>')")
    return ModelConfig(name=source, source="callable", defense="unknown", key=CLI_KEY, callable=source,
                       kwargs=dict(kwargs or {}), weights=weights)


def load_model_source(source: str, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                      model_dir: str = "models", threat_model: str = "Linf", dataset: str | None = None) -> nn.Module:
    """The model of a command-line source (:func:`source_config`), in eval mode on the CPU.

    RobustBench weights are read from ``model_dir`` and never downloaded.

    Raises:
        FileNotFoundError: a missing file. ValueError: an unusable source or file.
    """
    return load_entry(source_config(source, weights, kwargs, model_dir, threat_model, dataset))[0]


def weight_files(cfg: ModelConfig) -> list[Path]:
    """The files :func:`load_entry` reads for ``cfg`` (none for a bare callable or a live module).

    Example:
        >>> [p.name for p in weight_files(source_config("mypkg.nets:Net", weights="net.pt"))]
        ['net.pt']
    """
    if cfg.source in ("checkpoint", "torchscript"):
        return [Path(_need(cfg.path, cfg, "path"))]
    if cfg.source == "callable":
        return [Path(cfg.weights)] if cfg.weights is not None else []
    if cfg.source == "robustbench":
        return expected_weight_files(cfg.name, _need(cfg.dataset, cfg, "dataset"),
                                     _need(cfg.threat_model, cfg, "threat_model"),
                                     _need(cfg.model_dir, cfg, "model_dir"))
    return []


def model_fingerprint(cfg: ModelConfig) -> dict[str, Any]:
    """What identifies a model's weights, without building it (files are hashed).

    Raises:
        FileNotFoundError: a checkpoint, weights file or RobustBench weights file is missing.
    """
    fp: dict[str, Any] = {"source": cfg.source}
    if cfg.source in ("checkpoint", "torchscript"):
        if cfg.path is None or not Path(cfg.path).is_file():
            raise FileNotFoundError(f"{_where(cfg, 'path')}: {cfg.source} file not found: {cfg.path!r}")
        fp["sha256"] = file_sha256(cfg.path)
    elif cfg.source == "callable":
        fp.update(callable=cfg.callable, kwargs=cfg.kwargs,
                  sha256=file_sha256(cfg.weights) if cfg.weights else None)
    elif cfg.source == "robustbench":
        files = weight_files(cfg)
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


def load_state_dict_file(path: str, where: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights-only file (``state_dict`` key and DataParallel prefixes handled).

    ``where`` is what errors name (``models[0].weights``, ``--weights``).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a damaged or foreign file
        raise ConfigError(f"{where}: {path!r} is not a readable state dict (truncated?): "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a state dict in {path!r}, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_torchscript(path: str, where: str) -> nn.Module:
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # RuntimeError for a non-TorchScript file
        raise ConfigError(f"{where}: {path!r} is not a readable TorchScript file: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(model, nn.Module):  # pragma: no cover - jit.load returns a ScriptModule
        raise ConfigError(f"{where}: {path!r} did not load as a module")
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
            raise FileNotFoundError(f"{_where(cfg, 'path')}: checkpoint file not found: {path!r}")
        try:
            model, meta = load_model(path)
        except NotACheckpointError:
            hint = ("--model module:callable --weights FILE" if cfg.key == CLI_KEY
                    else "source: callable with callable and weights")
            raise ConfigError(f"{_where(cfg, 'path')}: {path!r} is neither a deform-robust checkpoint nor a "
                              f"TorchScript file; for a plain state dict use {hint}") from None
        except ValueError as err:
            raise ConfigError(f"{_where(cfg, 'path')}: {err}") from None
    elif cfg.source == "torchscript":
        model = _load_torchscript(_need(cfg.path, cfg, "path"), _where(cfg, "path"))
    elif cfg.source == "callable":
        model = import_callable(_need(cfg.callable, cfg, "callable"), _where(cfg, "callable"))(**cfg.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{_where(cfg, 'callable')}: {cfg.callable!r} returned {type(model).__name__}, "
                              "expected an nn.Module")
        if cfg.weights is not None:
            try:
                model.load_state_dict(load_state_dict_file(cfg.weights, _where(cfg, "weights")))
            except RuntimeError as err:
                raise ConfigError(f"{_where(cfg, 'weights')}: {cfg.weights!r} does not fit "
                                  f"{cfg.callable}(**{cfg.kwargs}): {err}") from None
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
