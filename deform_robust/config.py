"""Evaluation configs: YAML in, validated frozen dataclasses out, errors that name the entry.

**Configs are code.** A config can import and call any ``module:attribute`` (models of
``source: callable``, attacks of ``family: package.module:callable``), so loading one runs
that code with your permissions. Only run configs from a trusted source.

Schema (every key except ``models`` and ``attacks`` is optional)::

    name: mnist5k                 # used in reports
    seed: 0                       # base seed; every cell derives its own from it
    device: auto                  # auto (CUDA if available) | cpu | cuda | cuda:1
    data:
      dataset: mnist5k            # a dataset name (mnist5k | mnist | cifar10 | cifar100), or
                                  # a path: .pt / .npz of images and labels, or an ImageFolder
      root: null                  # torchvision root for mnist/cifar10/cifar100
      n: 1000                     # first n test examples (null = all)
      batch_size: 250
      pipeline: paper             # paper | authors (test images resized, then center-cropped)
    models:                       # rows of the report
      - name: Standard            # unique; shown in tables
        defense: Standard         # default: the name without a trailing "(...)"
        group: SmallCNN           # Table 1 column (default "all")
        source: checkpoint        # checkpoint | callable | torchscript | robustbench
        path: results/train/mnist5k-standard/model.pt     # checkpoint or torchscript file
      - name: Mine
        source: callable
        callable: fgr_defense.models:SmallCNN             # module:attribute returning an nn.Module
        kwargs: {width: 16}
        weights: path/to/state_dict.pt                    # torch.load(weights_only=True)
      - name: Carmon2019Unlabeled
        source: robustbench
        model_dir: models/
        threat_model: Linf
    attacks:                      # one table per attack
      - family: FlowPGD           # deform_robust.registry: a flow attack, torchattacks.<Name>,
                                  # or package.module:callable
        name: FlowPGD             # default: family; unique
        budgets: [0.5, 1.0]       # strictly increasing; pixels (flow) or intensities (pixel attacks)
        params: {steps: 20, loss: margin, restarts: 2}
    checks: {enabled: true, batch: 64, tolerance: 0.01}
    plots: {enabled: true, samples: 4, grid: 21, attack: null, models: null}
    report: {reference_defense: AT-PGD, table1_exclude: [Standard]}

Every value is validated when the config is parsed: attack parameters by type and by
building each attack once (:func:`deform_robust.registry.validate_attack`), and every
model's ``module:callable`` by importing it (modules resolve from the working directory
first, as under ``python -m``). Relative paths are relative to the working directory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from fgr_defense.constants import DATASETS, PIPELINES, REFERENCE_DEFENSE
from fgr_defense.device import parse_device
from torchattacks_deform.validation import MAX_BUDGET, check_number

from .config_types import (
    MODEL_SOURCES,
    AttackConfig,
    ChecksConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PlotsConfig,
    ReportConfig,
    default_defense,
)
from .registry import import_object, validate_attack
from .yaml_files import read_yaml

__all__ = [
    "MODEL_SOURCES",
    "AttackConfig",
    "ChecksConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PlotsConfig",
    "ReportConfig",
    "default_defense",
    "load_config",
    "override_config",
    "parse_config",
    "read_yaml",
]

def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def _check_keys(d: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _fail(key or "config", f"expected a mapping, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise _fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                    f"unknown key; expected one of {sorted(allowed)}")
    return d


def _num(v: Any, key: str, **kw: Any) -> Any:
    try:
        return check_number(v, key, **kw)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _opt_str(v: Any, key: str) -> str | None:
    return None if v is None else _req_str(v, key)


def _req_str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(key, f"expected a non-empty string, got {v!r}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, f"expected true or false, got {v!r}")
    return v


def _parse_data(d: Any, check_files: bool) -> DataConfig:
    d = _check_keys(d if d is not None else {}, "data", {"dataset", "root", "n", "batch_size", "pipeline"})
    dataset = _req_str(d.get("dataset", "mnist5k"), "data.dataset")
    if check_files and dataset not in DATASETS and not Path(dataset).exists():
        raise _fail("data.dataset", f"no dataset named {dataset!r} and no file or folder at that path; expected one "
                    f"of {sorted(DATASETS)}, a .pt/.npz file of images and labels, or an ImageFolder")
    pipeline = d.get("pipeline", "paper")
    if pipeline not in PIPELINES:
        raise _fail("data.pipeline", f"expected one of {list(PIPELINES)}, got {pipeline!r}")
    return DataConfig(dataset=dataset, root=_opt_str(d.get("root"), "data.root"),
                      n=_num(d.get("n"), "data.n", integer=True, minimum=1, allow_none=True),
                      batch_size=_num(d.get("batch_size", 250), "data.batch_size", integer=True, minimum=1),
                      pipeline=pipeline)


def _parse_model(d: Any, i: int, data: DataConfig, check_files: bool) -> ModelConfig:
    allowed = {"name", "source", "defense", "group", "path", "callable", "kwargs", "weights",
               "model_dir", "dataset", "threat_model", "obj"}
    d = _check_keys(d, f"models[{i}]", allowed)
    name = _req_str(d.get("name"), f"models[{i}].name")
    key = f"models[{i}] ({name})"
    source = d.get("source", "checkpoint")
    if source not in MODEL_SOURCES:
        raise _fail(f"{key}.source", f"expected one of {list(MODEL_SOURCES)}, got {source!r}")
    defense = _req_str(d.get("defense", default_defense(name)), f"{key}.defense")
    group = _req_str(d.get("group", "all"), f"{key}.group")
    kwargs = d.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _fail(f"{key}.kwargs", f"expected a mapping of keyword arguments, got {kwargs!r}")
    path = weights = callable_ = model_dir = rb_dataset = threat = None
    if source in ("checkpoint", "torchscript"):
        path = _req_str(d.get("path"), f"{key}.path")
        if check_files and not Path(path).is_file():
            raise _fail(f"{key}.path", f"{source} file not found: {path!r} (train it with "
                        "`deform-robust train ...` or fix the path)")
    elif source == "callable":
        callable_ = _req_str(d.get("callable"), f"{key}.callable")
        if ":" not in callable_:
            raise _fail(f"{key}.callable", f"expected 'module:attribute', got {callable_!r}")
        try:  # now, not when the model's first cell runs: a typo in the last model stops the run at once
            import_object(callable_)
        except ValueError as err:
            raise _fail(f"{key}.callable", str(err)) from None
        weights = _opt_str(d.get("weights"), f"{key}.weights")
        if check_files and weights is not None and not Path(weights).is_file():
            raise _fail(f"{key}.weights", f"weights file not found: {weights!r}")
    elif source == "robustbench":
        model_dir = _req_str(d.get("model_dir", "models"), f"{key}.model_dir")
        rb_dataset = _req_str(d.get("dataset", data.dataset), f"{key}.dataset")
        threat = _req_str(d.get("threat_model", "Linf"), f"{key}.threat_model")
        if rb_dataset != data.dataset:
            raise _fail(f"{key}.dataset", f"RobustBench dataset {rb_dataset!r} does not match "
                        f"data.dataset {data.dataset!r}")
    elif not isinstance(d.get("obj"), nn.Module):
        obj = d.get("obj")
        got = "nothing" if obj is None else f"{type(obj).__name__} {obj!r}"[:120]
        raise _fail(f"{key}.obj", f"source 'object' expects an nn.Module object in 'obj' (Python API only), "
                    f"got {got}; for a 'module:callable' use source: callable with callable: "
                    "'package.module:callable'")
    if source not in ("checkpoint", "torchscript") and d.get("path") is not None:
        raise _fail(f"{key}.path", f"only used with source 'checkpoint' or 'torchscript', not {source!r}")
    return ModelConfig(name=name, source=source, defense=defense, group=group, path=path, callable=callable_,
                       kwargs=dict(kwargs), weights=weights, model_dir=model_dir, dataset=rb_dataset,
                       threat_model=threat, key=key, obj=d.get("obj"))


def _parse_budgets(v: Any, key: str) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not v:
        raise _fail(key, f"expected a non-empty list of budgets, got {v!r}")
    out: list[float] = []
    for j, b in enumerate(v):
        b = _num(b, f"{key}[{j}]", minimum=0, maximum=MAX_BUDGET)
        if out and b <= out[-1]:
            raise _fail(f"{key}[{j}]", f"budgets must be strictly increasing, got {b} after {out[-1]}")
        out.append(float(b))
    return tuple(out)


def _parse_attack(d: Any, i: int) -> AttackConfig:
    key = f"attacks[{i}]"
    d = _check_keys(d, key, {"name", "family", "budgets", "params"})
    family = _req_str(d.get("family"), f"{key}.family")
    name = _req_str(d.get("name", family), f"{key}.name")
    budgets = _parse_budgets(d.get("budgets"), f"{key}.budgets")
    params = d.get("params") or {}
    if not isinstance(params, dict):
        raise _fail(f"{key}.params", f"expected a mapping, got {params!r}")
    try:
        entry = validate_attack(family, params, budgets, key)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return AttackConfig(name=name, family=family, budgets=budgets, params=dict(params), key=key, entry=entry)


def parse_config(raw: Any, source: str = "<dict>", check_files: bool = True) -> EvalConfig:
    """Validate a config mapping (as loaded from YAML) into an :class:`EvalConfig`.

    Raises:
        ConfigError: a ``ValueError`` whose message names the config file and the key.

    Example:
        >>> cfg = parse_config({"models": [{"name": "m", "source": "callable",
        ...                                 "callable": "fgr_defense.models:SmallCNN"}],
        ...                     "attacks": [{"family": "FlowFGSM", "budgets": [0.5, 1]}]})
        >>> cfg.attacks[0].budgets, cfg.models[0].defense
        ((0.5, 1.0), 'm')
        >>> parse_config({"models": [], "attacks": [{"family": "FlowPGD", "budgets": [1],
        ...               "params": {"steps": -5}}]})
        Traceback (most recent call last):
        ...
        deform_robust.config_types.ConfigError: <dict>: attacks[0].params.steps: expected an int >= 0, got -5
    """
    try:
        return _parse(raw, check_files)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _parse(raw: Any, check_files: bool) -> EvalConfig:
    allowed = {"name", "seed", "device", "data", "models", "attacks", "checks", "plots", "report"}
    raw = _check_keys(raw, "", allowed)
    data = _parse_data(raw.get("data"), check_files)
    attacks_raw = raw.get("attacks")
    if not isinstance(attacks_raw, list) or not attacks_raw:
        raise _fail("attacks", f"expected a non-empty list of attacks, got {attacks_raw!r}")
    attacks = tuple(_parse_attack(a, i) for i, a in enumerate(attacks_raw))
    _unique([a.name for a in attacks], "attacks", "name")
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise _fail("models", f"expected a non-empty list of models, got {models_raw!r}")
    models = tuple(_parse_model(m, i, data, check_files) for i, m in enumerate(models_raw))
    _unique([m.name for m in models], "models", "name")
    device = _req_str(raw.get("device", "auto"), "device")
    try:
        parse_device(device)  # the one device rule; whether this machine has it is checked when the run starts
    except ValueError:
        raise _fail("device", f"expected auto, cpu, cuda, cuda:N or another torch device, got {device!r}") from None
    checks = _check_keys(raw.get("checks") or {}, "checks", {"enabled", "batch", "tolerance"})
    checks_cfg = ChecksConfig(
        enabled=_bool(checks.get("enabled", True), "checks.enabled"),
        batch=_num(checks.get("batch", 64), "checks.batch", integer=True, minimum=1),
        tolerance=_num(checks.get("tolerance", 0.01), "checks.tolerance", minimum=0, maximum=0.999),
    )
    plots = _check_keys(raw.get("plots") or {}, "plots", {"enabled", "samples", "grid", "attack", "models"})
    plot_attack = _opt_str(plots.get("attack"), "plots.attack")
    if plot_attack is not None and plot_attack not in [a.name for a in attacks]:
        raise _fail("plots.attack", f"expected one of the attack names {[a.name for a in attacks]}, got {plot_attack!r}")
    plot_models = plots.get("models")
    if plot_models is not None:
        if not isinstance(plot_models, list) or any(m not in [x.name for x in models] for m in plot_models):
            raise _fail("plots.models", f"expected a list of model names from 'models', got {plot_models!r}")
        plot_models = tuple(plot_models)
    plots_cfg = PlotsConfig(
        enabled=_bool(plots.get("enabled", True), "plots.enabled"),
        samples=_num(plots.get("samples", 4), "plots.samples", integer=True, minimum=1),
        grid=_num(plots.get("grid", 21), "plots.grid", integer=True, minimum=3),
        attack=plot_attack, models=plot_models,
    )
    report = _check_keys(raw.get("report") or {}, "report", {"reference_defense", "table1_exclude"})
    ref = _req_str(report.get("reference_defense", REFERENCE_DEFENSE), "report.reference_defense")
    exclude = report.get("table1_exclude", ["Standard"])
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
        raise _fail("report.table1_exclude", f"expected a list of defense names, got {exclude!r}")
    return EvalConfig(
        name=_req_str(raw.get("name", "eval"), "name"), models=models, attacks=attacks, data=data,
        seed=_num(raw.get("seed", 0), "seed", integer=True, minimum=0), device=device,
        checks=checks_cfg, plots=plots_cfg,
        report=ReportConfig(reference_defense=ref, table1_exclude=tuple(exclude)),
    )


def _unique(names: list[str], key: str, field_name: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise _fail(f"{key}[{i}].{field_name}", f"duplicate {field_name} {n!r}; names must be unique")
        seen.add(n)


def load_config(path: str | Path, check_files: bool = True) -> EvalConfig:
    """Read and validate a YAML config file (configs are code: see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: invalid content (the message names the file and the key).
    """
    return parse_config(read_yaml(path), source=str(path), check_files=check_files)


def override_config(cfg: EvalConfig, n: int | None = None, batch_size: int | None = None,
                    device: str | None = None) -> EvalConfig:
    """``cfg`` with command-line overrides of ``data.n``, ``data.batch_size`` and ``device``."""
    data: DataConfig = cfg.data
    if n is not None:
        if n < 1:
            raise ConfigError(f"--n: expected a positive number of examples, got {n}")
        data = replace(data, n=n)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size: expected a positive int, got {batch_size}")
        data = replace(data, batch_size=batch_size)
    cfg = replace(cfg, data=data)
    if device is not None:
        cfg = replace(cfg, device=device)
    return cfg
