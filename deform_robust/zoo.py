"""RobustBench zoo entries against the deformation suite: one ``model_info``-style JSON record per model.

``deform-robust zoo --dataset cifar10 --threat-model Linf --models Standard,... --model-dir models``
runs the suite of a config (its ``attacks``, ``data`` and ``checks``; default: the shipped
``zoo.yaml`` suite) on zoo entries loaded offline (:mod:`deform_robust.robustbench`) and
writes ``<out>/<dataset>/<threat_model>/<name>.json`` next to the usual results files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from fgr_defense.files import atomic_write_text

from .config import EvalConfig, parse_config, read_yaml
from .provenance import provenance
from .runner import run_config

__all__ = ["DEFAULT_SUITE", "run_zoo", "run_zoo_command", "zoo_config", "zoo_record"]

logger = logging.getLogger(__name__)

#: The suite ``zoo`` runs by default (attacks, budgets, checks for 32x32 RobustBench models).
DEFAULT_SUITE = Path(__file__).with_name("zoo.yaml")


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
    """One RobustBench ``model_info``-style record of a model from full results.

    ``provenance`` is the run's (:func:`deform_robust.provenance.provenance`; computed now for
    results without one) with this model's ``weights_sha256``.
    """
    cfg = results["config"]
    m = next(x for x in results["models"] if x["name"] == model)
    deform: dict[str, dict[str, float]] = {}
    for c in results["cells"]:
        if c["model"] == model:
            deform.setdefault(c["attack"], {})[f"{c['budget']:g}"] = round(c["robust_acc"] * 100, 2)
    worst = {f"{w['budget']:g}": round(w["robust_acc"] * 100, 2)
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
            "budget_unit": "pixels (flow attacks); pixel values (torchattacks baselines)",
            "attacks": cfg["attacks"],
            "worst_case_attacks": {f"{w['budget']:g}": w["attacks"] for w in results["worst_case"]
                                   if w["model"] == model},
            "seed": cfg["seed"],
        },
        "weights_sha256": m.get("fingerprint", {}).get("sha256"),
        "provenance": {**(results.get("provenance") or provenance()),
                       "weights_sha256": m.get("fingerprint", {}).get("sha256")},
    }


def run_zoo(cfg: EvalConfig, out: str | Path, **run_kwargs: Any) -> list[Path]:
    """Run ``cfg`` (see :func:`zoo_config`) and write one JSON record per model.

    Records go to ``<out>/<dataset>/<threat_model>/<name>.json``; the full results of the run
    (``results.json`` and the CSVs) go to ``out``.
    """
    results = run_config(cfg, out, **run_kwargs)
    if results is None:  # not rank 0 under torchrun
        return []
    paths = []
    for m in cfg.models:
        rec = zoo_record(results, m.name)
        path = Path(out) / (m.dataset or cfg.data.dataset) / (m.threat_model or "none") / f"{m.name}.json"
        atomic_write_text(path, json.dumps(rec, indent=2) + "\n")
        paths.append(path)
        logger.info("zoo record %s", path)
    return paths


def run_zoo_command(dataset: str, threat_model: str, models: str, model_dir: str, data_root: str | None,
                    suite: str | None = None, out: str | None = None, n: int | None = None,
                    batch_size: int | None = None, device: str | None = None,
                    overwrite_stale: bool = False, progress: bool | None = None) -> tuple[EvalConfig, Path, list[Path]]:
    """What ``zoo`` does on the command line: read the suite, build the config, run it; ``(cfg, out, records)``.

    ``progress``: progress bars (None: when stderr is a terminal), as :func:`~deform_robust.runner.run_config`.

    Raises:
        FileNotFoundError: no suite file, or missing weights/data (named).
        ValueError: no model names, bad counts, a bad suite (named).
    """
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ValueError("--models: expected at least one comma-separated model name")
    for value, flag in ((n, "--n"), (batch_size, "--batch-size")):
        if value is not None and value < 1:
            raise ValueError(f"{flag}: expected a positive integer, got {value}")
    raw = read_yaml(Path(suite) if suite else DEFAULT_SUITE, "--suite") or {}
    cfg = zoo_config(dataset, threat_model, names, model_dir, raw, data_root=data_root, n=n, batch_size=batch_size,
                     device=device)
    folder = Path(out or f"results/zoo-{dataset}-{threat_model}")
    return cfg, folder, run_zoo(cfg, folder, overwrite_stale=overwrite_stale, progress=progress)
