"""Model sources (our checkpoints, ``module:callable`` + weights, RobustBench) and ``eval zoo``.

Every loader returns a model in eval mode that takes ``[0, 1]`` images and returns logits, and
every file is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .config import ConfigError, EvalConfig, ModelConfig, parse_config
from .robustbench_compat import expected_weight_files, load_robustbench_model

__all__ = [
    "file_sha256",
    "load_entry",
    "model_fingerprint",
    "run_zoo",
    "state_dict_sha256",
    "zoo_config",
    "zoo_record",
]

logger = logging.getLogger(__name__)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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


def model_fingerprint(cfg: ModelConfig) -> dict[str, Any]:
    """What identifies a model's weights, without building it (files are hashed).

    Raises:
        FileNotFoundError: a checkpoint, weights file or RobustBench weights file is missing.
    """
    fp: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "checkpoint":
        if cfg.path is None or not Path(cfg.path).is_file():
            raise FileNotFoundError(f"{cfg.key}.path: checkpoint file not found: {cfg.path!r}")
        fp["sha256"] = file_sha256(cfg.path)
    elif cfg.source == "callable":
        fp["callable"] = cfg.callable
        fp["kwargs"] = cfg.kwargs
        fp["sha256"] = file_sha256(cfg.weights) if cfg.weights else None
    elif cfg.source == "robustbench":
        files = expected_weight_files(cfg.name, _need(cfg.dataset, cfg, "dataset"),
                                      _need(cfg.threat_model, cfg, "threat_model"),
                                      _need(cfg.model_dir, cfg, "model_dir"))
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{cfg.key}: RobustBench weights are not in model_dir={cfg.model_dir!r}: expected "
                f"{', '.join(missing)} (this harness never downloads; copy the file there)"
            )
        fp["entry"] = f"{cfg.dataset}/{cfg.threat_model}/{cfg.name}"
        fp["sha256"] = [file_sha256(p) for p in files]
    else:
        fp["sha256"] = state_dict_sha256(cfg.obj)
    return fp


def _need(value: str | None, cfg: ModelConfig, name: str) -> str:
    if value is None:
        raise ConfigError(f"{cfg.key}.{name}: required for source {cfg.source!r}")
    return value


def _import_callable(spec: str, key: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}.callable: cannot import module {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}.callable: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}.callable: {spec!r} is not callable")
    return obj


def _load_state_dict(path: str, key: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{key}.weights: expected a state dict in {path!r}, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_entry(cfg: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of a config entry; returns ``(model in eval mode on CPU, meta)``.

    Raises:
        FileNotFoundError: missing checkpoint/weights (names the file).
        ConfigError: the callable cannot be imported or does not return an ``nn.Module``,
            or the weights do not fit it.
    """
    meta: dict[str, Any] = {}
    model: Any
    if cfg.source == "checkpoint":
        from fgr_defense.checkpoint import load_model

        if cfg.path is None or not Path(cfg.path).is_file():
            raise FileNotFoundError(f"{cfg.key}.path: checkpoint file not found: {cfg.path!r}")
        model, meta = load_model(cfg.path)
    elif cfg.source == "callable":
        model = _import_callable(_need(cfg.callable, cfg, "callable"), cfg.key)(**cfg.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{cfg.key}.callable: {cfg.callable!r} returned {type(model).__name__}, "
                              "expected an nn.Module")
        if cfg.weights is not None:
            try:
                model.load_state_dict(_load_state_dict(cfg.weights, cfg.key))
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


# -- eval zoo -----------------------------------------------------------------------------
def zoo_config(
    dataset: str,
    threat_model: str,
    names: Sequence[str],
    model_dir: str,
    suite: dict[str, Any],
    data_root: str | None = None,
    n: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> EvalConfig:
    """An :class:`EvalConfig` that runs the suite of ``suite`` (a config dict) on zoo entries."""
    raw = {k: v for k, v in suite.items() if k != "models"}
    data = dict(raw.get("data") or {})
    data["dataset"] = dataset
    if data_root is not None:
        data["root"] = data_root
    if n is not None:
        data["n"] = n
    if batch_size is not None:
        data["batch_size"] = batch_size
    raw["data"] = data
    if device is not None:
        raw["device"] = device
    raw.setdefault("name", f"zoo-{dataset}-{threat_model}")
    raw["models"] = [
        {"name": m, "source": "robustbench", "model_dir": model_dir, "dataset": dataset,
         "threat_model": threat_model, "defense": m}
        for m in names
    ]
    return parse_config(raw, source="zoo")


def zoo_record(results: dict[str, Any], model: str) -> dict[str, Any]:
    """One RobustBench ``model_info``-style record of a model from full results."""
    cfg = results["config"]
    m = next(x for x in results["models"] if x["name"] == model)
    deform: dict[str, dict[str, float]] = {}
    for c in results["cells"]:
        if c["model"] == model:
            deform.setdefault(c["attack"], {})[f"{c['budget']:g}"] = round(c["robust_acc"] * 100, 2)
    worst = {str(w["level"]): round(w["robust_acc"] * 100, 2)
             for w in results["worst_case"] if w["model"] == model}
    flagged = [f for f in results["checks"] if f["model"] == model]
    return {
        "name": model,
        "source": m.get("source"),
        "dataset": cfg["data"]["dataset"],
        "threat_model": m.get("threat_model"),
        "architecture": m.get("architecture"),
        "clean_acc": round(m["clean_acc"] * 100, 2),
        "deformation_acc": deform,
        "deformation_worst_case_acc": worst,
        "number_forward_passes": 1,
        "n_examples": m["n"],
        "unreliable": bool(flagged),
        "checks": [f["message"] for f in flagged],
        "suite": {
            "version": results["suite_version"],
            "versions": results["versions"],
            "budget_unit": "pixels",
            "attacks": cfg["attacks"],
            "worst_case_levels": {str(w["level"]): w["budgets"] for w in results["worst_case"]
                                  if w["model"] == model},
            "seed": cfg["seed"],
        },
        "weights_sha256": m.get("fingerprint", {}).get("sha256"),
    }


def run_zoo(cfg: EvalConfig, out: str | Path, **run_kwargs: Any) -> list[Path]:
    """Run ``cfg`` (see :func:`zoo_config`) and write one JSON record per model.

    Records go to ``<out>/<dataset>/<threat_model>/<name>.json``; the full results, report and
    plots of the run go to ``out`` as for ``eval run``.
    """
    from .runner import evaluate

    results = evaluate(cfg, out, **run_kwargs)
    if results is None:  # not rank 0 under torchrun
        return []
    paths = []
    for m in cfg.models:
        rec = zoo_record(results, m.name)
        path = Path(out) / (m.dataset or cfg.data.dataset) / (m.threat_model or "none") / f"{m.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        from .runner import atomic_write_text

        atomic_write_text(path, json.dumps(rec, indent=2) + "\n")
        paths.append(path)
        logger.info("zoo record %s", path)
    return paths
