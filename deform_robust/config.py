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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from fgr_defense.constants import DATASETS, PIPELINES
from torchattacks_deform.validation import MAX_BUDGET, check_number

from .registry import AttackEntry, import_object, resolve_attack, validate_attack

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
    "parse_config",
    "read_yaml",
]

MODEL_SOURCES = ("checkpoint", "callable", "torchscript", "robustbench", "object")


class ConfigError(ValueError):
    """A config value is missing or wrong; the message starts with the offending key."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist5k"
    root: str | None = None
    n: int | None = None
    batch_size: int = 250
    pipeline: str = "paper"


@dataclass(frozen=True)
class ModelConfig:
    """One model (a row of the report). ``source="object"``: ``obj`` holds an ``nn.Module`` (Python API)."""

    name: str
    source: str
    defense: str
    group: str = "all"
    path: str | None = None
    callable: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    model_dir: str | None = None
    dataset: str | None = None
    threat_model: str | None = None
    key: str = "models[?]"
    obj: Any = field(default=None, compare=False, repr=False)

    def spec(self) -> dict[str, Any]:
        """The JSON-able description saved with results (no live objects)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source, "defense": self.defense,
                               "group": self.group}
        for k in ("path", "callable", "weights", "model_dir", "dataset", "threat_model"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.kwargs:
            out["kwargs"] = dict(self.kwargs)
        return out


@dataclass(frozen=True)
class AttackConfig:
    name: str
    family: str
    budgets: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)
    key: str = "attacks[?]"
    entry: AttackEntry | None = field(default=None, compare=False, repr=False)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "budgets": list(self.budgets),
                "params": dict(self.params)}

    @property
    def resolved(self) -> AttackEntry:
        """The registry entry (resolved when the config was parsed)."""
        if self.entry is None:
            return resolve_attack(self.family)
        return self.entry


@dataclass(frozen=True)
class ChecksConfig:
    enabled: bool = True
    batch: int = 64
    tolerance: float = 0.01


@dataclass(frozen=True)
class PlotsConfig:
    enabled: bool = True
    samples: int = 4
    grid: int = 21
    attack: str | None = None
    models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ReportConfig:
    reference_defense: str = "AT-PGD"
    table1_exclude: tuple[str, ...] = ("Standard",)


@dataclass(frozen=True)
class EvalConfig:
    name: str
    models: tuple[ModelConfig, ...]
    attacks: tuple[AttackConfig, ...]
    data: DataConfig = DataConfig()
    seed: int = 0
    device: str = "auto"
    checks: ChecksConfig = ChecksConfig()
    plots: PlotsConfig = PlotsConfig()
    report: ReportConfig = ReportConfig()

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-able dict that :func:`parse_config` turns back into this config."""
        return {
            "name": self.name, "seed": self.seed, "device": self.device,
            "data": dict(self.data.__dict__),
            "models": [m.spec() for m in self.models],
            "attacks": [a.spec() for a in self.attacks],
            "checks": dict(self.checks.__dict__),
            "plots": {**self.plots.__dict__,
                      "models": list(self.plots.models) if self.plots.models is not None else None},
            "report": {"reference_defense": self.report.reference_defense,
                       "table1_exclude": list(self.report.table1_exclude)},
        }

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def attack(self, name: str) -> AttackConfig:
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(name)


# --------------------------------------------------------------------------------------
def default_defense(name: str) -> str:
    """The defense family of a model name: the name without a trailing ``(...)``.

    Example:
        >>> default_defense("IGR(lam=1000)"), default_defense("FGR+RS"), default_defense("IGR lam=3000")
        ('IGR', 'FGR+RS', 'IGR lam=3000')
    """
    return re.sub(r"\s*\(.*\)\s*$", "", name).strip() or name


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
        deform_robust.config.ConfigError: <dict>: attacks[0].params.steps: expected an int >= 0, got -5
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
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise _fail("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
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
    ref = _req_str(report.get("reference_defense", "AT-PGD"), "report.reference_defense")
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


class _StrictYAMLError(yaml.YAMLError):
    """A duplicate key or an anchor/alias (:func:`read_yaml`)."""


#: Most values a YAML file may expand to through anchors and aliases (a config has hundreds).
YAML_MAX_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, recursive aliases and alias bombs (``read_yaml``)."""

    def compose_document(self) -> Any:
        self.get_event()  # DOCUMENT-START
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()  # DOCUMENT-END
        anchors, self.anchors = self.anchors, {}
        _check_expansion(node, anchors)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not None:
                    raise _StrictYAMLError(f"{key}: duplicate key at line {line} (first at line {first}); "
                                         "each key may appear once in a mapping")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Any, anchors: dict[str, Any]) -> None:
    """Refuse a node graph whose aliases expand it beyond :data:`YAML_MAX_VALUES` values, or into a loop."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _StrictYAMLError(f"recursive alias at line {node.start_mark.line + 1}: a value may not "
                                   "contain itself")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = min(total, YAML_MAX_VALUES + 1)  # capped: no huge integers either
        return sizes[key]

    if size(root) > YAML_MAX_VALUES:
        name, node = max(anchors.items(), key=lambda kv: sizes.get(id(kv[1]), 0), default=("?", root))
        raise _StrictYAMLError(f"anchor {name!r} (line {node.start_mark.line + 1}): its aliases expand the file "
                               f"to more than {YAML_MAX_VALUES} values (an alias bomb?); write the values out")


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The content of a YAML file, with errors that name it.

    Stricter than ``yaml.safe_load``: a key that appears twice in a mapping is refused (YAML
    would keep the last silently), and so are aliases that make a value contain itself or
    expand the file to more than :data:`YAML_MAX_VALUES` values (``&a`` / ``*a`` nested: a
    "billion laughs" file of a few lines would expand to gigabytes downstream).

    Raises:
        FileNotFoundError: no such file (``"<what>: no file at ..."``).
        ConfigError: not valid YAML, not UTF-8, a duplicate key, a recursive alias or an alias
            bomb (names the file, and the key or anchor with its line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except _StrictYAMLError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a valid YAML file: {err}") from None


def load_config(path: str | Path, check_files: bool = True) -> EvalConfig:
    """Read and validate a YAML config file (configs are code: see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: invalid content (the message names the file and the key).
    """
    return parse_config(read_yaml(path), source=str(path), check_files=check_files)
