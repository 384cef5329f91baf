"""The evaluation config's types: frozen dataclasses, validated by :mod:`deform_robust.config`.

:func:`deform_robust.config.parse_config` builds them from YAML or a dict (the schema is in
its module docstring); the runner, the results and the reports read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fgr_defense.constants import REFERENCE_DEFENSE

from .registry import AttackEntry, resolve_attack

__all__ = ["MODEL_SOURCES", "AttackConfig", "ChecksConfig", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig",
           "PlotsConfig", "ReportConfig", "default_defense"]

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

    def to_dict(self) -> dict[str, Any]:
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

    def to_dict(self) -> dict[str, Any]:
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
    reference_defense: str = REFERENCE_DEFENSE
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
            "models": [m.to_dict() for m in self.models],
            "attacks": [a.to_dict() for a in self.attacks],
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


def default_defense(name: str) -> str:
    """The defense family of a model name: the name without a trailing ``(...)``.

    Example:
        >>> default_defense("IGR(lam=1000)"), default_defense("FGR+RS"), default_defense("IGR lam=3000")
        ('IGR', 'FGR+RS', 'IGR lam=3000')
    """
    return re.sub(r"\s*\(.*\)\s*$", "", name).strip() or name
