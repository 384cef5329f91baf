"""``deform-robust evaluate``: one model given on the command line, one set of test images.

:func:`load_model_spec` turns a model spec into a module; :func:`evaluate_model_spec` runs
:func:`torchattacks_deform.evaluate_robustness` at each budget and formats the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fgr_defense.checkpoint import CHECKPOINT_FORMAT, model_from_checkpoint
from fgr_defense.device import resolve_device
from torchattacks_deform import evaluate_robustness

from .config import ConfigError, DataConfig, EvalConfig
from .data import load_test_data
from .models import import_callable, load_state_dict_file
from .registry import resolve_attack
from .robustbench import ROBUSTBENCH_DATASETS, load_robustbench_model

__all__ = ["evaluate_model_spec", "load_model_spec", "override_config"]


def _our_checkpoint(path: Path) -> dict[str, Any] | None:
    """The loaded checkpoint dict when ``path`` is one of ours (read once), else None (try TorchScript)."""
    if zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
        return None  # a TorchScript archive
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a weights-only pickle: try TorchScript next
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT else None


def load_model_spec(spec: str, weights: str | None = None, kwargs: dict[str, Any] | None = None,
                    model_dir: str = "models", threat_model: str = "Linf", dataset: str | None = None) -> nn.Module:
    """The model of a command-line spec, in eval mode on the CPU.

    Specs: ``robustbench:<name>`` or ``robustbench:<zoo>/<name>`` (``zoo`` ``cifar10`` or
    ``cifar100``; needed when ``dataset`` is the user's own data of the zoo's image shape;
    weights under ``model_dir``, never downloaded), a file (a
    checkpoint of ours, else a TorchScript file), or ``package.module:callable`` called with
    ``kwargs`` and loaded with the state dict in ``weights``.

    Raises:
        FileNotFoundError: a missing file. ValueError: an unusable spec or file.
    """
    if spec.startswith("robustbench:"):
        zoo, _, name = spec.split(":", 1)[1].rpartition("/")
        zoo = zoo or (dataset if dataset in ROBUSTBENCH_DATASETS else "")
        if zoo not in ROBUSTBENCH_DATASETS:
            raise ValueError(f"--model: expected robustbench:<zoo>/<name> with zoo one of {ROBUSTBENCH_DATASETS} "
                             f"(e.g. robustbench:cifar10/{name or 'Standard'}) when --data is your own data, got "
                             f"{spec!r} with --data {dataset!r}")
        return load_robustbench_model(name, zoo, threat_model, model_dir)
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise ValueError("--weights: only used with a 'module:callable' model")
        ckpt = _our_checkpoint(path)
        if ckpt is not None:
            return model_from_checkpoint(ckpt, path)[0]
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others for foreign files
            raise ValueError(f"--model: {spec!r} is neither a deform-robust checkpoint nor a TorchScript file "
                             f"({type(err).__name__}); for a plain state dict use --model module:callable "
                             "--weights FILE") from None
    if ":" not in spec:
        raise FileNotFoundError(f"--model: no file at {spec!r} (and not 'module:callable' or 'robustbench:<name>')")
    model = import_callable(spec, "--model")(**(kwargs or {}))  # ConfigError is a ValueError
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model: {spec!r} returned {type(model).__name__}, expected an nn.Module")
    if weights is not None:
        try:
            model.load_state_dict(load_state_dict_file(weights, "--model"))
        except RuntimeError as err:
            raise ValueError(f"--weights: {weights!r} does not fit {spec}: {err}") from None
    return model.eval()


def _attacks(name: str, model: nn.Module, eps: float) -> Any:
    if name in ("standard", "fast"):
        return name
    attacks = {}
    for family in (s.strip() for s in name.split(",") if s.strip()):
        try:
            attacks[family] = resolve_attack(family).build(model, eps, {})
        except ValueError as err:
            raise ValueError(f"--attacks: {err}") from None
    if not attacks:
        raise ValueError(f"--attacks: expected 'standard', 'fast' or attack names, got {name!r}")
    return attacks


def evaluate_model_spec(*, model: str, data: str, budgets: Sequence[float], weights: str | None = None,
                        kwargs: dict[str, Any] | None = None, model_dir: str = "models", threat_model: str = "Linf",
                        data_root: str | None = None, n: int | None = None, attacks: str = "standard",
                        cascade: bool = False, batch_size: int = 256, device: str = "auto", seed: int = 0,
                        progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Evaluate a model spec on test data at each budget; returns ``(text table, JSON record)``."""
    test = load_test_data(data, data_root, n)
    net = load_model_spec(model, weights, kwargs, model_dir, threat_model, dataset=data)
    dev = resolve_device(device)
    net = net.to(dev)
    reports = []
    for eps in budgets:
        torch.manual_seed(seed)
        reports.append(evaluate_robustness(net, test.images, test.labels, eps=eps,
                                           attacks=_attacks(attacks, net, eps), cascade=cascade,
                                           batch_size=batch_size, device=dev, progress=progress))
    names = list(reports[0].robust_accuracy)
    header = ["budget (px)", "clean %", *[f"{a} %" for a in names], "worst case %"]
    rows = [[f"{r.eps:g}", f"{100 * r.clean_accuracy:.2f}", *[f"{100 * r.robust_accuracy[a]:.2f}" for a in names],
             f"{100 * r.worst_case_accuracy:.2f}"] for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [f"{model} on {test.source}: n = {len(test.labels)}, attacks {attacks}"
             + (" (cascade: per-attack numbers are cumulative)" if cascade else ""),
             "  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    record = {"model": model, "data": test.source, "n": len(test.labels), "attacks": attacks, "seed": seed,
              "results": [json.loads(json.dumps(r.to_dict(), default=str)) for r in reports]}
    return "\n".join(lines), record


def override_config(cfg: EvalConfig, n: int | None = None, batch_size: int | None = None,
                    device: str | None = None) -> EvalConfig:
    """``cfg`` with command-line overrides of ``data.n``, ``data.batch_size`` and ``device``."""
    data: DataConfig = cfg.data
    if n is not None:
        if n < 1:
            raise ConfigError(f"--n: expected a positive number of examples, got {n}")
        data = dataclasses.replace(data, n=n)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size: expected a positive int, got {batch_size}")
        data = dataclasses.replace(data, batch_size=batch_size)
    cfg = dataclasses.replace(cfg, data=data)
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    return cfg
