"""Presets of the experiment pipeline, as data: ``eval/presets/<name>.yaml``.

A preset is an eval config (the format of ``eval/configs/``: ``name``, ``seed``, ``device``,
``data``, ``attacks``, ``checks``, ``plots``, ``report``) whose ``models`` are replaced by a
``training`` plan, plus the ``analysis`` to report::

    name: mnist5k
    title: ...
    command: python -m eval reproduce --preset mnist5k
    extends: other-preset          # optional: start from another preset, override keys (deep merge)
    data: {dataset: mnist5k, n: 1000, batch_size: 500}
    training:
      dataset: mnist5k
      model: smallcnn
      schedule: {optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4,
                 batch_size: 128, epochs: 16, milestones: [8, 12], gamma: 0.1}
      augment: true                # the dataset's training augmentation (pipeline: paper | authors)
      lam_batch_size: 256          # the batch size the paper's lambdas refer to
      seeds: [0, 1, 2]             # the first is the main seed
      grad_clip: 5.0               # optional: one stabilizer for every instance (the global gradient norm)
      fill_in: {max_gap: 0.02, max_extra: 2}   # optional: per seed, fill clean-accuracy gaps (eval/fill_in.py)
      instances:                   # `seeds: main` trains on the main seed only, `seeds: [0, 1]` on those
        - {defense: Standard}
        - {defense: IGR, lam: [1000, 3000, 5000, 7000]}   # a list expands into one instance each
        - {defense: IGR, weight: [1, 4, 16]}
    attacks: [...]                 # as in eval configs
    analysis:
      reference: AT-PGD            # the matched view targets its clean accuracy
      families: [IGR, FGR, FGR+RS]
      pairs: [[FGR, IGR], [FGR+RS, IGR], [FGR+RS, FGR]]
      paper_dataset: mnist         # which of the paper's numbers to show
      criterion: ...               # the pre-registered verdict rule, printed in the report
    anchor: null                   # published numbers to reproduce like for like (see cifar10-vgg11-authors)
    notes: [...]

:func:`load_preset` checks the structure (torch-free); :func:`eval.pipeline.prepare` then
builds every training spec and parses the eval part, with errors naming the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from deform_robust.config import ConfigError, read_yaml
from fgr_defense.defenses import get_schedule, resolve_defense_name
from torchattacks_deform.validation import check_number

from .fill_in import fill_in_options

__all__ = ["PRESET_DIR", "Instance", "Preset", "PresetError", "available_presets", "load_preset"]

PRESET_DIR = Path(__file__).with_name("presets")
_INSTANCE_KEYS = {"defense", "weight", "lam", "sigma", "variant", "eps", "seeds"}
_TRAINING_KEYS = {"dataset", "model", "schedule", "augment", "pipeline", "limit", "lam_batch_size", "seeds",
                  "instances", "keep_best", "data_root", "grad_clip", "fill_in"}
_TOP_KEYS = {"name", "title", "command", "extends", "seed", "device", "data", "training", "attacks", "checks",
             "plots", "report", "analysis", "anchor", "notes", "calibration"}
_PAPER_GAINS: dict[str, dict[str, tuple[float, float, float]]] = {
    # The paper's improvements in robust accuracy, points (min, mean, max), "Results" section.
    "FGR - IGR": {"mnist": (0.2, 10.6, 32.7), "cifar10": (7.8, 16.2, 26.2), "cifar100": (4.4, 9.3, 18.9)},
    "FGR+RS - FGR": {"mnist": (-3.4, 3.2, 23.6), "cifar10": (0.2, 3.7, 11.9), "cifar100": (0.2, 2.8, 10.6)},
}


class PresetError(ValueError):
    """A preset value is missing or wrong; the message names the preset file and the key."""


@dataclass(frozen=True)
class Instance:
    """One trained model of a preset: a defense and its regularizer strength.

    Example:
        >>> Instance("IGR", weight=4).name, Instance("FGR+RS", lam=300).name, Instance("AT-PGD").name
        ('IGR(w=4)', 'FGR+RS(lam=300)', 'AT-PGD')
    """

    defense: str
    weight: Optional[float] = None
    lam: Optional[float] = None
    sigma: Optional[float] = None
    variant: str = "paper"
    eps: Optional[float] = None
    seeds: Union[str, tuple[int, ...]] = "all"

    @property
    def name(self) -> str:
        if self.weight is not None:
            return f"{self.defense}(w={self.weight:g})"
        if self.lam is not None:
            return f"{self.defense}(lam={self.lam:g})"
        return self.defense


@dataclass(frozen=True)
class Preset:
    """A loaded preset (module docstring). ``raw`` keeps the merged YAML for the report."""

    name: str
    title: str
    command: str
    raw: dict[str, Any]
    training: dict[str, Any]
    instances: tuple[Instance, ...]
    seeds: tuple[int, ...]
    analysis: dict[str, Any]
    anchor: Optional[dict[str, Any]] = None
    notes: tuple[str, ...] = ()
    source: str = "<dict>"
    changes: tuple[str, ...] = field(default=())

    @property
    def main_seed(self) -> int:
        return self.seeds[0]

    def instances_for(self, seed: int) -> list[Instance]:
        """The instances trained for ``seed`` (every one for the main seed; ``seeds: [..]`` lists others)."""
        return [i for i in self.instances
                if seed == self.main_seed or i.seeds == "all" or (isinstance(i.seeds, tuple) and seed in i.seeds)]

    def eval_part(self) -> dict[str, Any]:
        """The eval-config keys of the preset (everything but the training plan)."""
        keys = ("seed", "device", "data", "attacks", "checks", "plots", "report")
        return {k: copy.deepcopy(self.raw[k]) for k in keys if k in self.raw}

    def paper_gains(self) -> dict[str, tuple[float, float, float]]:
        ds = self.analysis.get("paper_dataset")
        return {pair: g[ds] for pair, g in _PAPER_GAINS.items() if ds in g}


def available_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read(name: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"preset: no preset {name!r}; expected one of {available_presets()} or a .yaml path")
    try:
        raw = read_yaml(path, "preset")
    except ConfigError as err:
        raise PresetError(str(err)) from None
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise PresetError(f"{path}: {unknown[0]}: unknown key; expected one of {sorted(_TOP_KEYS)}")
    parent = raw.pop("extends", None)
    if parent is not None:
        if parent in seen:
            raise PresetError(f"{path}: extends: circular chain {' -> '.join((*seen, parent))}")
        base, _ = _read(str(parent), (*seen, name))
        raw = _merge(base, raw)
    return raw, str(path)


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _instances(raw: Any, source: str) -> tuple[Instance, ...]:
    if not isinstance(raw, list) or not raw:
        raise PresetError(f"{source}: training.instances: expected a non-empty list, got {raw!r}")
    out: list[Instance] = []
    for i, d in enumerate(raw):
        key = f"{source}: training.instances[{i}]"
        if not isinstance(d, dict) or set(d) - _INSTANCE_KEYS:
            bad = sorted(set(d) - _INSTANCE_KEYS) if isinstance(d, dict) else d
            raise PresetError(f"{key}: unknown key(s) {bad}; expected {sorted(_INSTANCE_KEYS)}")
        try:
            defense = resolve_defense_name(str(d.get("defense")))
            if d.get("weight") is not None and d.get("lam") is not None:
                raise ValueError("give weight or lam, not both")
            strength = "weight" if d.get("weight") is not None else "lam" if d.get("lam") is not None else ""
            seeds = d.get("seeds", "all")
            if isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                         for x in seeds):
                seeds = tuple(seeds)
            elif seeds not in ("all", "main"):
                raise ValueError(f"seeds: expected 'all', 'main' or a list of training seeds, got {seeds!r}")
            kw: dict[str, Any] = {k: d[k] for k in ("sigma", "variant", "eps") if d.get(k) is not None}
            for v in (_listed(d[strength]) if strength else [None]):
                strength_kw: dict[str, Any] = {strength: float(check_number(v, strength, minimum=0))} if strength else {}
                out.append(Instance(defense, seeds=seeds, **strength_kw, **kw))
        except (TypeError, ValueError) as err:
            raise PresetError(f"{key}: {err}") from None
    names = [i.name for i in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PresetError(f"{source}: training.instances: duplicate model names {dup}")
    return tuple(out)


def load_preset(name: str, **overrides: Any) -> Preset:
    """Load a preset by name (``eval/presets/<name>.yaml``) or path, with validated overrides.

    Overrides (for small runs; each is listed in the report as a change from the preset):
    ``seeds``, ``epochs`` (LR milestones scaled), ``limit``, ``n``, ``max_attack_steps``,
    ``dataset`` (train and evaluate on other data, e.g. ``mnist5k``: NOT the preset's setting),
    ``data_root`` (where torchvision datasets are; not a change of the setting).

    Raises:
        PresetError: unknown preset, bad keys or values (the message names them).

    Example:
        >>> p = load_preset("tiny")
        >>> p.main_seed, [i.name for i in p.instances_for(1)][:2]
        (0, ['Standard', 'AT-PGD'])
    """
    raw, source = _read(name)
    raw, changes = _apply_overrides(raw, overrides, source)
    training = raw.get("training")
    if not isinstance(training, dict) or set(training) - _TRAINING_KEYS:
        bad = sorted(set(training) - _TRAINING_KEYS) if isinstance(training, dict) else training
        raise PresetError(f"{source}: training: expected a mapping with keys {sorted(_TRAINING_KEYS)}, got {bad!r}")
    seeds = training.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or \
            any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise PresetError(f"{source}: training.seeds: expected distinct non-negative ints, got {seeds!r}")
    analysis = raw.get("analysis") or {}
    if not isinstance(analysis, dict):
        raise PresetError(f"{source}: analysis: expected a mapping, got {analysis!r}")
    try:
        fill_in_options(training, analysis, source)
    except ValueError as err:
        raise PresetError(str(err)) from None
    preset = Preset(
        name=str(raw.get("name", Path(source).stem)), title=str(raw.get("title", raw.get("name", "preset"))),
        command=str(raw.get("command", f"python -m eval reproduce --preset {name}")), raw=raw, training=training,
        instances=_instances(training.get("instances"), source), seeds=tuple(seeds), analysis=analysis,
        anchor=raw.get("anchor"), notes=tuple(raw.get("notes") or ()), source=source, changes=tuple(changes))
    return preset


def _apply_overrides(raw: dict[str, Any], ov: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    raw = copy.deepcopy(raw)
    changes: list[str] = []
    tr = raw.setdefault("training", {})
    try:
        if ov.get("seeds") is not None:
            tr["seeds"] = [check_number(s, "--seeds", integer=True, minimum=0) for s in ov["seeds"]]
            changes.append(f"seeds {tr['seeds']}")
        if ov.get("epochs") is not None:
            epochs = check_number(ov["epochs"], "--epochs", integer=True, minimum=1)
            sched = tr.get("schedule") or "fast"
            if isinstance(sched, str):  # a preset name: its values, for this dataset
                sched = get_schedule(sched, str(tr.get("dataset", "mnist5k"))).to_dict()
            sched = dict(sched)
            old = int(sched.get("epochs", epochs))
            ms = sorted({max(1, round(m * epochs / old)) for m in sched.get("milestones", [])})
            sched.update(epochs=epochs, milestones=[m for m in ms if m < epochs])
            tr["schedule"] = sched
            changes.append(f"epochs {epochs} instead of {old} (LR milestones scaled)")
        if ov.get("limit") is not None:
            tr["limit"] = check_number(ov["limit"], "--limit", integer=True, minimum=1)
            changes.append(f"training on the first {tr['limit']} images only")
        if ov.get("n") is not None:
            raw.setdefault("data", {})["n"] = check_number(ov["n"], "--n", integer=True, minimum=1)
            changes.append(f"evaluation on the first {raw['data']['n']} test images")
        if ov.get("max_attack_steps") is not None:
            cap = check_number(ov["max_attack_steps"], "--max-attack-steps", integer=True, minimum=2)
            for a in raw.get("attacks", []):
                params = a.setdefault("params", {})
                for k in ("steps", "population"):
                    if k in params:
                        params[k] = min(int(params[k]), cap - (cap % 2 if k == "population" else 0))
            changes.append(f"attack steps and ES population capped at {cap}")
        if ov.get("data_root") is not None:
            tr["data_root"] = raw.setdefault("data", {})["root"] = str(ov["data_root"])
        if ov.get("dataset") is not None:
            tr["dataset"] = raw.setdefault("data", {})["dataset"] = str(ov["dataset"])
            tr.pop("data_root", None)
            raw["data"].pop("root", None)
            changes.append(f"DATASET OVERRIDDEN: {ov['dataset']!r} -- not the preset's setting")
    except (TypeError, ValueError) as err:
        raise PresetError(f"{source}: {err}") from None
    unknown = sorted(set(ov) - {"seeds", "epochs", "limit", "n", "max_attack_steps", "dataset", "data_root"})
    if unknown:
        raise PresetError(f"overrides: unknown {unknown}")
    return raw, changes


