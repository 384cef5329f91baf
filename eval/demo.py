"""``python -m eval demo``: the paper's central comparison, end to end, on MNIST-5k in minutes.

The same pipeline runs the paper-scale presets of :mod:`eval.reproduce` on a GPU.

Pipeline (:func:`run_pipeline`):

1. **Train** every model of a :class:`Pipeline` with :class:`fgr_defense.Trainer` and the
   defenses of :func:`fgr_defense.build_defense`. The headline families (IGR, FGR, FGR+RS, each
   a sweep of weights) are trained for every seed; the other defenses (Standard, AT-FGSM,
   AT-PGD, FGR+RS+AT-PGD) for the main seed (the first) only. Checkpoints are cached in
   ``out/cache/train/seed<s>/<model>/model.pt``: a finished one is reused when its training
   settings are unchanged (retrained otherwise); an unfinished one (killed run) is resumed.
2. **Evaluate** the main seed's models with :func:`eval.runner.evaluate` (every model x attack x
   budget; resumable cell by cell in ``out/cache/eval/seed<s>``).
3. **Match** on clean accuracy (below) and evaluate the matched instances of the other seeds.
4. **Report**: ``out/report.md`` (header with command, git revision, seeds, wall time; the
   headline; the main seed's full harness report with Table 1 and plots), ``out/results.json``
   (everything the report shows), ``out/results.csv`` (all cells, with a ``seed`` column),
   ``out/headline.csv`` and the PNG figures.

Matching (the headline):
    As in the paper's Table 1, a family with several instances is represented by the
    instance whose clean accuracy (on the evaluation images) is closest to the clean accuracy
    of the reference defense (``AT-PGD``) of the **main seed**; ties go to the first instance
    in sweep order (:func:`eval.report.representatives`). The same target is used for every
    seed, so each seed contributes one matched IGR, FGR and FGR+RS model. Robust accuracy of
    the matched models is reported per attack and budget as mean +/- sample standard
    deviation (``ddof=1``) over the seeds, and so are the per-seed gains (FGR - IGR, ...).
    The summary gain of a pair is the mean over all attack x budget cells of the mean gain
    over seeds (the paper's "mean" improvement); its +/- is the sample standard deviation over
    seeds of each seed's mean gain over the cells.

Convention:
    Regularizer weights are either this package's per-example ``weight`` (``Instance.weight``,
    flows in pixels; see :mod:`fgr_defense.regularizers`) or the paper's ``lam`` (authors'
    convention: batch-mean cross-entropy, normalized ``align_corners=True`` flows), converted
    explicitly by :func:`fgr_defense.paper_lambda_to_weight` inside
    :func:`fgr_defense.build_defense` with ``lam_batch_size``; both directions are logged and
    shown in the report. Budgets are pixels. Accuracies are fractions in ``results.json`` and
    percentages (two decimals) in the report; gains are percentage points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .config import EvalConfig, parse_config
from .report import CSV_FIELDS, md_table, pct, render_report, representatives, write_csv
from .runner import atomic_write_text

__all__ = [
    "DEMO_PRESETS",
    "PAPER_GAINS",
    "Instance",
    "Pipeline",
    "demo_pipeline",
    "format_headline",
    "git_revision",
    "headline",
    "lam_of_weight",
    "match_instances",
    "render_pipeline_report",
    "run_demo",
    "run_pipeline",
    "scaled_schedule",
    "seed_stats",
    "shrink_png",
]

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "deform-robust-pipeline/1"

#: The paper's improvements in robust accuracy, percentage points (min, mean, max over its
#: Fig. 6 cells): FGR over IGR, and FGR+RS over FGR ("Results" section).
PAPER_GAINS: dict[str, dict[str, tuple[float, float, float]]] = {
    "FGR - IGR": {"mnist": (0.2, 10.6, 32.7), "cifar10": (7.8, 16.2, 26.2), "cifar100": (4.4, 9.3, 18.9)},
    "FGR+RS - FGR": {"mnist": (-3.4, 3.2, 23.6), "cifar10": (0.2, 3.7, 11.9), "cifar100": (0.2, 2.8, 10.6)},
}
#: The paper's Table 1: number of (architecture, attack, budget) cells each defense wins.
PAPER_TABLE1: dict[str, dict[str, int]] = {
    "AT-FGSM": {"mnist": 0, "cifar10": 0, "cifar100": 0},
    "AT-PGD": {"mnist": 3, "cifar10": 0, "cifar100": 0},
    "IGR": {"mnist": 0, "cifar10": 0, "cifar100": 0},
    "FGR": {"mnist": 0, "cifar10": 0, "cifar100": 0},
    "FGR+RS": {"mnist": 0, "cifar10": 2, "cifar100": 6},
    "FGR+RS+AT-PGD": {"mnist": 5, "cifar10": 6, "cifar100": 2},
}
#: Pairs compared in the headline: (better candidate, baseline).
PAIRS: tuple[tuple[str, str], ...] = (("FGR", "IGR"), ("FGR+RS", "IGR"), ("FGR+RS", "FGR"))

#: Files of a previous run that a new run replaces (removed when this run does not produce them).
_OWN_PNG_PATTERNS = ("robust_vs_budget_*.png", "samples_*.png", "landscape.png",
                     "flow_vs_pixel_distance.png", "headline.png", "tradeoff.png", "matching.png")


# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """One trained model of a pipeline: a defense and its regularizer weight.

    Args:
        defense: one of :data:`fgr_defense.DEFENSES`.
        weight: per-example weight (this package's convention), or None.
        lam: the paper's lambda (authors' convention), converted by ``build_defense``, or None.
        all_seeds: trained for every seed (headline families) or for the main seed only.

    Example:
        >>> Instance("IGR", weight=4).name, Instance("FGR+RS", lam=300).name, Instance("AT-PGD").name
        ('IGR(w=4)', 'FGR+RS(lam=300)', 'AT-PGD')
    """

    defense: str
    weight: float | None = None
    lam: float | None = None
    all_seeds: bool = False

    @property
    def name(self) -> str:
        if self.weight is not None:
            return f"{self.defense}(w={self.weight:g})"
        if self.lam is not None:
            return f"{self.defense}(lam={self.lam:g})"
        return self.defense


@dataclass(frozen=True)
class Pipeline:
    """Everything a run trains, evaluates and reports (a preset).

    Attributes:
        name: short name (output folder, eval run names).
        title: report title.
        command: the command that runs it (shown in the report header).
        dataset, data_root: data for training and evaluation (``fgr_defense.get_dataset``).
        model: ``fgr_defense.models`` name; ``group``: its Table 1 column label.
        schedule: optimizer/LR schedule (``fgr_defense.Schedule``).
        instances: the models; headline families need ``all_seeds=True`` and sweeps.
        attacks: harness attack entries (see :mod:`eval.config`).
        seeds: training seeds; the first is the main seed.
        augment, train_limit, workers: training data options.
        n, eval_batch_size, eval_seed: evaluation data and the harness seed.
        lam_batch_size: the batch size the paper's lambdas refer to.
        reference: the defense whose clean accuracy the matching targets.
        headline: the families compared at matched clean accuracy.
        attack_all_main: attack every instance of the main seed (else only the matched ones,
            as for the other seeds; the others' clean accuracy is measured either way).
        plots, checks: harness ``plots``/``checks`` settings.
        paper_dataset: key of :data:`PAPER_GAINS` for the paper's numbers.
        anchor: published numbers to show beside ours (:mod:`eval.reproduce`), or None.
        notes: extra lines for the report's setup section.
    """

    name: str
    title: str
    command: str
    dataset: str
    model: str
    group: str
    schedule: Any
    instances: tuple[Instance, ...]
    attacks: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    data_root: str | None = None
    augment: bool = True
    train_limit: int | None = None
    workers: int = 0
    n: int | None = 500
    eval_batch_size: int = 250
    eval_seed: int = 0
    lam_batch_size: int = 256
    reference: str = "AT-PGD"
    headline: tuple[str, ...] = ("IGR", "FGR", "FGR+RS")
    attack_all_main: bool = True
    plots: dict[str, Any] = field(default_factory=lambda: {"samples": 2, "grid": 15})
    checks: dict[str, Any] = field(default_factory=lambda: {"enabled": True, "batch": 64, "tolerance": 0.01})
    paper_dataset: str = "mnist"
    anchor: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def main_seed(self) -> int:
        return self.seeds[0]

    def instances_for(self, seed: int) -> list[Instance]:
        """The instances trained for ``seed`` (all of them for the main seed)."""
        return [i for i in self.instances if seed == self.main_seed or i.all_seeds]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["schedule"] = self.schedule.to_dict()
        d["instances"] = [{**dataclasses.asdict(i), "name": i.name} for i in self.instances]
        d["attacks"] = [dict(a) for a in self.attacks]
        return json.loads(json.dumps(d, default=str))  # type: ignore[no-any-return]

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot run (names the field)."""
        from fgr_defense.presets import resolve_defense_name

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct seeds, got {list(self.seeds)}")
        if not self.instances:
            raise ValueError("instances: expected at least one model")
        names = [i.name for i in self.instances]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"instances: duplicate model names {dup}")
        for i in self.instances:
            if resolve_defense_name(i.defense) != i.defense:
                raise ValueError(f"instances: defense {i.defense!r} is not spelled canonically "
                                 f"({resolve_defense_name(i.defense)!r})")
            if i.weight is not None and i.lam is not None:
                raise ValueError(f"instances: {i.name}: give weight or lam, not both")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n: expected a positive number of test examples or None, got {self.n}")


def scaled_schedule(schedule: Any, epochs: int) -> Any:
    """``schedule`` with ``epochs`` epochs and its LR milestones scaled proportionally.

    Example:
        >>> from fgr_defense.presets import get_schedule
        >>> s = scaled_schedule(get_schedule("fast", "mnist5k"), 4)
        >>> s.epochs, s.milestones
        (4, (3,))
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    if epochs == schedule.epochs:
        return schedule
    ms = tuple(sorted({max(1, round(m * epochs / schedule.epochs)) for m in schedule.milestones}))
    ms = tuple(m for m in ms if m < epochs)
    return dataclasses.replace(schedule, epochs=epochs, milestones=ms)


def lam_of_weight(weight: float, defense: str, size: int, batch_size: int = 256) -> float:
    """The paper's lambda that :func:`fgr_defense.paper_lambda_to_weight` maps onto ``weight``.

    The conversion is linear in lambda, so this divides by the weight of ``lam = 1``.

    Example:
        >>> round(lam_of_weight(4, "IGR", 28), 6), round(lam_of_weight(71.19140625, "FGR", 28), 6)
        (1024.0, 100.0)
    """
    from fgr_defense.regularizers import paper_lambda_to_weight

    kind = "input" if defense == "IGR" else "flow"
    return weight / paper_lambda_to_weight(1.0, batch_size, size, kind=kind)


# --------------------------------------------------------------------------------------
# statistics and matching
def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``; None for one value) of per-seed values.

    Example:
        >>> s = seed_stats([0.5, 0.7, 0.6])
        >>> round(s["mean"], 6), round(s["std"], 6), s["n"]
        (0.6, 0.1, 3)
        >>> seed_stats([0.5])["std"] is None
        True
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: expected at least one per-seed value")
    return {"values": vals, "n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals)}


def match_instances(models: Sequence[dict[str, Any]], families: Sequence[str], reference: str,
                    target: float | None, group: str = "all") -> dict[str, str]:
    """Per family, the instance whose clean accuracy is closest to ``target`` (Table 1's rule).

    ``models`` are ``{"name", "defense", "clean_acc"}`` dicts; ties go to the first in order.
    With ``target=None`` the highest clean accuracy is used (the rule of
    :func:`eval.report.representatives` without a reference).

    Example:
        >>> ms = [{"name": "I1", "defense": "IGR", "clean_acc": 0.95},
        ...       {"name": "I2", "defense": "IGR", "clean_acc": 0.91},
        ...       {"name": "F1", "defense": "FGR", "clean_acc": 0.93}]
        >>> match_instances(ms, ["IGR", "FGR"], "AT-PGD", 0.92)
        {'IGR': 'I2', 'FGR': 'F1'}
    """
    pool = [{"name": m["name"], "defense": m["defense"], "group": group, "clean_acc": m["clean_acc"]}
            for m in models if m["defense"] in families]
    if target is not None:
        pool.insert(0, {"name": f"<{reference} target>", "defense": reference, "group": group,
                        "clean_acc": target})
    _, selection, _ = representatives(pool, reference)
    sel = selection.get(group, {})
    return {f: sel[f] for f in families if f in sel}


def headline(per_seed: dict[int, dict[str, Any]], families: Sequence[str], reference: str,
             main_seed: int, dataset: str = "mnist",
             pools: Mapping[int, Sequence[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The matched comparison of ``families`` over seeds, from harness results per seed.

    Args:
        per_seed: ``{seed: results dict of eval.runner.evaluate}`` holding the attack cells of
            (at least) each seed's matched instances.
        families: the compared defenses, e.g. ``("IGR", "FGR", "FGR+RS")``.
        reference: the defense whose main-seed clean accuracy is the matching target.
        main_seed: the seed holding the reference model.
        dataset: key of :data:`PAPER_GAINS`.
        pools: ``{seed: [{"name", "defense", "clean_acc"}, ...]}``, every trained instance of
            a seed with its clean accuracy (the matching pool; the main seed's holds the
            reference). Default: the models of ``per_seed``.

    Returns:
        A JSON-able dict (see the module docstring): ``target``, ``selection``, ``clean``,
        ``cells``, ``gains``, ``summary``.
    """
    pools = pools if pools is not None else {s: r["models"] for s, r in per_seed.items()}
    main = per_seed[main_seed]
    refs = [m for m in pools[main_seed] if m["defense"] == reference]
    target = refs[0]["clean_acc"] if refs else None
    seeds = sorted(per_seed)
    selection: dict[int, dict[str, str]] = {}
    sel_rows = []
    clean_of: dict[tuple[int, str], float] = {}
    for s in seeds:
        models = pools[s]
        selection[s] = match_instances(models, families, reference, target)
        by_name = {m["name"]: m for m in models}
        for f in families:
            if f not in selection[s]:
                continue
            cands = [{"model": m["name"], "clean_acc": m["clean_acc"]} for m in models if m["defense"] == f]
            name = selection[s][f]
            clean_of[(s, f)] = by_name[name]["clean_acc"]
            sel_rows.append({"seed": s, "family": f, "model": name, "clean_acc": by_name[name]["clean_acc"],
                             "candidates": cands})
    fams = [f for f in families if all(f in selection[s] for s in seeds)]
    clean = [{"family": f, **seed_stats([clean_of[(s, f)] for s in seeds])} for f in fams]
    attacks = [(a["name"], list(a["budgets"])) for a in main["config"]["attacks"]]
    cells, gains = [], []
    for attack, budgets in attacks:
        for b in budgets:
            if b <= 0:
                continue
            acc = {f: [_cell(per_seed[s], selection[s][f], attack, b)["robust_acc"] for s in seeds] for f in fams}
            for f in fams:
                cells.append({"attack": attack, "budget": b, "family": f, **seed_stats(acc[f])})
            for hi, lo in PAIRS:
                if hi in acc and lo in acc:
                    diff = [100 * (x - y) for x, y in zip(acc[hi], acc[lo])]
                    gains.append({"pair": f"{hi} - {lo}", "attack": attack, "budget": b, **seed_stats(diff),
                                  "seeds_positive": sum(d > 0 for d in diff)})
    summary = []
    for hi, lo in PAIRS:
        pair = f"{hi} - {lo}"
        rows = [g for g in gains if g["pair"] == pair]
        if not rows:
            continue
        per_seed_mean = [statistics.fmean(g["values"][k] for g in rows) for k in range(len(seeds))]
        by_attack = {}
        for attack, _ in attacks:
            ar = [g for g in rows if g["attack"] == attack]
            if ar:
                psm = [statistics.fmean(g["values"][k] for g in ar) for k in range(len(seeds))]
                by_attack[attack] = {**seed_stats(psm), "verdict": _verdict(psm)}
        means = [g["mean"] for g in rows]
        summary.append({
            "pair": pair, "mean": statistics.fmean(means), "min": min(means), "max": max(means),
            "cells": len(rows), "cells_positive": sum(m > 0 for m in means),
            "per_seed_mean": per_seed_mean,
            "seed_std": statistics.stdev(per_seed_mean) if len(per_seed_mean) > 1 else None,
            "verdict": _verdict(per_seed_mean), "by_attack": by_attack,
            "paper": list(PAPER_GAINS.get(pair, {}).get(dataset, ())) or None,
        })
    return {
        "families": list(fams), "reference": reference, "main_seed": main_seed, "seeds": seeds,
        "target": {"defense": reference, "model": refs[0]["name"], "seed": main_seed,
                   "clean_acc": target} if refs else None,
        "rule": (f"per seed and family, the instance whose clean accuracy is closest to the clean "
                 f"accuracy of {reference} (seed {main_seed}); ties: first in sweep order"
                 if refs else "no reference model: the instance with the highest clean accuracy"),
        "selection": sel_rows, "clean": clean, "cells": cells, "gains": gains, "summary": summary,
        "std": "sample standard deviation over seeds (ddof=1)",
    }


def _verdict(per_seed: Sequence[float]) -> str:
    """``higher/lower in every seed``, ``no difference`` or ``mixed across seeds``.

    Example:
        >>> _verdict([1.0, 2.0]), _verdict([-1.0]), _verdict([0.0, 0.0]), _verdict([1.0, -1.0])
        ('higher in every seed', 'lower in every seed', 'no difference', 'mixed across seeds')
    """
    if all(v > 0 for v in per_seed):
        return "higher in every seed"
    if all(v < 0 for v in per_seed):
        return "lower in every seed"
    if all(v == 0 for v in per_seed):
        return "no difference"
    return "mixed across seeds"


def _cell(results: dict[str, Any], model: str, attack: str, budget: float) -> dict[str, Any]:
    for c in results["cells"]:
        if c["model"] == model and c["attack"] == attack and c["budget"] == budget:
            return c  # type: ignore[no-any-return]
    raise KeyError(f"no cell {model} / {attack} / {budget:g} px in the results of {results.get('name')!r}")


# --------------------------------------------------------------------------------------
# provenance
def git_revision(root: str | Path = ".", exclude: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when tracked or untracked files differ.

    ``exclude`` (e.g. the output folder) is left out of the dirty check. ``"unknown"``
    outside a git checkout.
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        spec = ["--", "."]
        if exclude is not None:
            try:
                rel = Path(exclude).resolve().relative_to(Path(root).resolve())
                spec.append(f":(exclude){rel.as_posix()}")
            except ValueError:
                pass  # outside the repository: nothing to exclude
        status = subprocess.run(["git", "status", "--porcelain", *spec], cwd=root, capture_output=True,
                                text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if status.strip() else "")


def code_fingerprint(root: str | Path = ".") -> str:
    """SHA-256 (first 16 hex digits) over the Python sources and eval configs of the packages.

    Lets a reader check that a committed report was produced by the committed code.
    """
    h = hashlib.sha256()
    root = Path(root)
    files = sorted(p for pkg in ("eval", "fgr_defense", "torchattacks_deform") for pat in ("*.py", "configs/*.yaml")
                   for p in (root / pkg).glob(pat))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# training
def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text.replace("+", "-")).strip("-")


def _train_spec(p: Pipeline, inst: Instance, seed: int) -> dict[str, Any]:
    return {"dataset": p.dataset, "model": p.model, "defense": inst.defense, "weight": inst.weight,
            "lam": inst.lam, "lam_batch_size": p.lam_batch_size if inst.lam is not None else None,
            "schedule": p.schedule.to_dict(), "augment": p.augment, "train_limit": p.train_limit,
            "seed": seed}


def _train_one(p: Pipeline, inst: Instance, seed: int, cache: Path, device: torch.device,
               train_set: Any, progress: bool) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from fgr_defense import Trainer, build_defense, build_model, dataset_info, load_checkpoint

    d = cache / f"seed{seed}" / _slug(inst.name)
    ckpt, info_path = d / "model.pt", d / "train.json"
    spec = _train_spec(p, inst, seed)
    resume = False
    if ckpt.is_file():
        meta = load_checkpoint(ckpt).get("meta", {})
        if meta.get("pipeline_spec") == spec and meta.get("complete") and info_path.is_file():
            info: dict[str, Any] = json.loads(info_path.read_text())
            logger.info("train %s seed %d: cached (%s)", inst.name, seed, ckpt)
            return {**info, "path": str(ckpt), "cached": True}
        if meta.get("pipeline_spec") == spec and not meta.get("complete"):
            resume = True
        else:
            logger.warning("train %s seed %d: the cached checkpoint was trained with other settings; retraining",
                           inst.name, seed)
            shutil.rmtree(d)
    info_ds = dataset_info(p.dataset)
    channels, classes, size = int(info_ds["channels"]), int(info_ds["num_classes"]), int(info_ds["size"])
    arch = {"name": p.model, "in_channels": channels, "num_classes": classes, "size": size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialization
        model = build_model(p.model, channels, classes, size)
    kw: dict[str, Any] = {}
    if inst.weight is not None:
        kw["weight"] = inst.weight
    if inst.lam is not None:
        kw.update(lam=inst.lam, lam_batch_size=p.lam_batch_size)
    defense = build_defense(inst.defense, model, p.dataset, **kw)
    optimizer, scheduler = p.schedule.build(model.parameters())
    loader = DataLoader(train_set, batch_size=p.schedule.batch_size, shuffle=True, num_workers=p.workers,
                        pin_memory=device.type == "cuda")
    meta = {"dataset": p.dataset, "model": p.model, "defense": inst.defense, "instance": inst.name,
            "defense_config": defense.config, "pipeline_spec": spec, "pipeline": p.name,
            "trainer": "fgr_defense.Trainer via eval.demo"}
    kwargs: dict[str, Any] = dict(scheduler=scheduler, device=device, seed=seed, progress=progress,
                                  out_dir=d, arch=arch, meta=meta, distributed=False,
                                  **defense.trainer_kwargs())
    t0 = time.perf_counter()
    if resume:
        logger.info("train %s seed %d: resuming the unfinished run in %s", inst.name, seed, d)
        trainer = Trainer.resume(ckpt, model, optimizer, **kwargs)
        prior = float(sum(r.get("time_s", 0.0) for r in trainer.history))
    else:
        logger.info("train %s seed %d: %s, %d epochs", inst.name, seed, defense.config, p.schedule.epochs)
        trainer = Trainer(model, optimizer, **kwargs)
        prior = 0.0
    history = trainer.fit(loader, p.schedule.epochs)
    wall = time.perf_counter() - t0 + prior
    last = history[-1] if history else {}
    info = {"model": inst.name, "defense": inst.defense, "seed": seed, "weight": defense.config.get("weight"),
            "lam": defense.config.get("lam"), "defense_config": defense.config, "epochs": p.schedule.epochs,
            "train_s": wall, "train_acc": last.get("train_acc"), "train_loss": last.get("train_loss"),
            "train_reg_loss": last.get("train_reg_loss"), "spec": spec}
    atomic_write_text(info_path, json.dumps(info, indent=1, default=str) + "\n")
    logger.info("train %s seed %d: done in %.1fs (train acc %.3f)", inst.name, seed, wall,
                float(last.get("train_acc", float("nan"))))
    return {**info, "path": str(ckpt), "cached": False}


def train_all(p: Pipeline, cache: Path, device: torch.device, progress: bool = True) -> list[dict[str, Any]]:
    """Train (or reuse) every model of every seed; returns one info dict per model."""
    from tqdm import tqdm

    from fgr_defense import get_dataset

    train_set = get_dataset(p.dataset, train=True, root=p.data_root, augment=p.augment, limit=p.train_limit)
    jobs = [(s, i) for s in p.seeds for i in p.instances_for(s)]
    out = []
    bar = tqdm(jobs, desc=f"{p.name}: train", unit="model", disable=None if progress else True)
    for seed, inst in bar:
        bar.set_postfix_str(f"{inst.name} seed {seed}")
        out.append(_train_one(p, inst, seed, cache, device, train_set, progress))
    bar.close()
    return out


# --------------------------------------------------------------------------------------
# evaluation
def _eval_config(p: Pipeline, seed: int, trained: Sequence[dict[str, Any]], attacks: Sequence[dict[str, Any]],
                 device: str, plots: dict[str, Any] | None = None) -> EvalConfig:
    raw = {
        "name": f"{p.name}-seed{seed}", "seed": p.eval_seed, "device": device,
        "data": {"dataset": p.dataset, "root": p.data_root, "n": p.n, "batch_size": p.eval_batch_size},
        "models": [{"name": t["model"], "defense": t["defense"], "group": p.group, "source": "checkpoint",
                    "path": t["path"]} for t in trained],
        "attacks": [dict(a) for a in attacks],
        "checks": dict(p.checks),
        "plots": plots if plots is not None else {"enabled": False},
        "report": {"reference_defense": p.reference, "table1_exclude": ["Standard"]},
    }
    return parse_config(raw, source=f"{p.name} seed {seed}")


def _evaluate(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    from .runner import evaluate

    # The pipeline's settings belong to the code: when they change, recompute the affected
    # cells instead of stopping with StaleResultsError.
    res = evaluate(cfg, out, overwrite_stale=True)
    if res is None:  # pragma: no cover - only under torchrun on ranks > 0
        raise RuntimeError("the pipeline runs in one process; do not start it under torchrun")
    return res


#: A harness attack entry whose only budget is 0: the harness computes the clean cells only.
_CLEAN_ONLY = ({"name": "clean-only", "family": "FlowFGSM", "budgets": [0.0]},)


def _plot_models(p: Pipeline, names: dict[str, str], trained: Sequence[dict[str, Any]]) -> list[str]:
    """Standard, AT-PGD, the matched headline instances and FGR+RS+AT-PGD (first instances)."""
    def first(defense: str) -> list[str]:
        return [t["model"] for t in trained if t["defense"] == defense][:1]

    want = [*first("Standard"), *first("AT-PGD"), *[names[f] for f in p.headline if f in names],
            *first("FGR+RS+AT-PGD")]
    return list(dict.fromkeys(want))


# --------------------------------------------------------------------------------------
def run_pipeline(p: Pipeline, out: str | Path, device: str = "auto", progress: bool = True,
                 command: str | None = None) -> dict[str, Any]:
    """Train, evaluate, match and report one pipeline; returns the dict written to results.json."""
    from .runner import resolve_device

    p.validate()
    t_start = time.perf_counter()
    out = Path(out)
    cache = out / "cache"
    dev = resolve_device(device)
    logger.info("%s: %d model(s) over seeds %s on %s -> %s", p.name,
                sum(len(p.instances_for(s)) for s in p.seeds), list(p.seeds), dev, out)
    trained = train_all(p, cache / "train", dev, progress)
    t_train = time.perf_counter() - t_start
    by_seed: dict[int, list[dict[str, Any]]] = {s: [t for t in trained if t["seed"] == s] for s in p.seeds}

    t_eval0 = time.perf_counter()
    main = p.main_seed
    eval_dir = {s: cache / "eval" / f"seed{s}" for s in p.seeds}
    per_seed: dict[int, dict[str, Any]] = {}
    pools: dict[int, list[dict[str, Any]]] = {}
    target: float | None = None
    for s in p.seeds:  # the main seed first: it holds the reference
        clean = _evaluate(_eval_config(p, s, by_seed[s], _CLEAN_ONLY, device), eval_dir[s])
        pools[s] = [{k: m[k] for k in ("name", "defense", "clean_acc", "clean_count", "n")} for m in clean["models"]]
        if s == main:
            refs = [m for m in pools[s] if m["defense"] == p.reference]
            target = refs[0]["clean_acc"] if refs else None
        chosen = set(match_instances(pools[s], p.headline, p.reference, target).values())
        keep = [t for t in by_seed[s] if t["defense"] not in p.headline or t["model"] in chosen
                or (s == main and p.attack_all_main)]
        per_seed[s] = _evaluate(_eval_config(p, s, keep, p.attacks, device), eval_dir[s])
    hl = headline(per_seed, p.headline, p.reference, main, p.paper_dataset, pools)
    kept_main = [t for t in by_seed[main] if t["model"] in {m["name"] for m in per_seed[main]["models"]}]

    # main seed again with plots (every cell is cached: only the figures are drawn)
    plot_files: list[str] = []
    if p.plots.get("enabled", True):
        names = {r["family"]: r["model"] for r in hl["selection"] if r["seed"] == main}
        plots = {**p.plots, "enabled": True, "models": _plot_models(p, names, kept_main)}
        per_seed[main] = _evaluate(_eval_config(p, main, kept_main, p.attacks, device, plots), eval_dir[main])
        written = json.loads((eval_dir[main] / "results.json").read_text())  # lists the figures drawn
        plot_files = [str(eval_dir[main] / f) for f in written.get("plots", [])]
    t_eval = time.perf_counter() - t_eval0

    out.mkdir(parents=True, exist_ok=True)
    figures = _copy_figures(plot_files, out)
    if p.plots.get("enabled", True):
        from .plots import headline_plot, matching_plot, tradeoff_plot

        figures.append(Path(headline_plot(hl, per_seed[main], out / "headline.png")).name)
        uses_lam = any(t.get("lam") is not None for t in trained)
        strength = {t["model"]: float(t["lam"] if uses_lam else t["weight"]) for t in trained
                    if t["defense"] in p.headline and (t["lam"] if uses_lam else t["weight"]) is not None}
        figures.append(Path(matching_plot({str(s): pools[s] for s in p.seeds}, hl, strength,
                                          "paper lambda" if uses_lam else "weight (per-example)",
                                          out / "matching.png")).name)
        if p.attack_all_main:
            figures.append(Path(tradeoff_plot(per_seed[main], hl, p.headline, out / "tradeoff.png")).name)
    _remove_stale_figures(out, figures)
    for f in figures:
        shrink_png(out / f)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "header": {
            "title": p.title, "command": command or p.command, "git_revision": git_revision(".", exclude=out),
            "code_sha256": code_fingerprint("."), "seeds": list(p.seeds), "main_seed": main,
            "eval_seed": p.eval_seed, "device": str(dev), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "models_trained": sum(not t["cached"] for t in trained), "models_cached": sum(t["cached"] for t in trained),
            "train_s": t_train, "eval_s": t_eval, "wall_s": time.perf_counter() - t_start,
        },
        "pipeline": p.to_dict(),
        "training": [{k: v for k, v in t.items() if k not in ("spec",)} for t in trained],
        "headline": hl,
        "runs": {str(s): per_seed[s] for s in p.seeds},
        "pools": {str(s): pools[s] for s in p.seeds},
        "figures": figures,
        "anchor": _anchor_rows(p, per_seed[main]) if p.anchor else None,
    }
    results["header"]["wall_s"] = time.perf_counter() - t_start
    _write_outputs(results, out)
    logger.info("%s: done in %.0fs (train %.0fs, eval %.0fs)", p.name, results["header"]["wall_s"], t_train, t_eval)
    return results


def _copy_figures(files: Sequence[str], out: Path) -> list[str]:
    names = []
    for f in files:
        src = Path(f)
        if src.is_file():
            if src.resolve() != (out / src.name).resolve():
                shutil.copyfile(src, out / src.name)
            names.append(src.name)
    return names


def shrink_png(path: Path, colors: int = 256) -> None:
    """Re-encode a PNG with a palette of ``colors`` colours (about 3x smaller for plots), atomically.

    The committed report's figures must stay small; plots lose nothing visible.
    """
    from PIL import Image

    from fgr_defense.checkpoint import atomic_write

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors)
    atomic_write(path, lambda fh: small.save(fh, format="PNG", optimize=True))


def _remove_stale_figures(out: Path, keep: Sequence[str]) -> None:
    for pat in _OWN_PNG_PATTERNS:
        for f in out.glob(pat):
            if f.name not in keep:
                logger.info("removing %s (not produced by this run)", f)
                f.unlink()


def _anchor_rows(p: Pipeline, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Our numbers of the anchor cell beside the published ones (see :mod:`eval.reproduce`)."""
    assert p.anchor is not None
    rows = []
    for a in p.anchor["rows"]:
        ours = next((m for m in results["models"] if m["name"] == a["model"]), None)
        cell = None
        if ours is not None:
            cell = next((c for c in results["cells"] if c["model"] == a["model"]
                         and c["attack"] == p.anchor["attack"] and c["budget"] == p.anchor["budget"]), None)
        rows.append({**a, "our_clean": ours["clean_acc"] if ours else None,
                     "our_adv": cell["robust_acc"] if cell else None})
    return rows


# --------------------------------------------------------------------------------------
# report
def _pm(mean: float, std: float | None, scale: float = 100.0, sign: bool = False) -> str:
    m = f"{scale * mean:+.2f}" if sign else f"{scale * mean:.2f}"
    return m + (f" ± {scale * std:.2f}" if std is not None else "")


def _headline_section(res: dict[str, Any]) -> list[str]:
    hl = res["headline"]
    seeds = hl["seeds"]
    fams = hl["families"]
    parts = ["## Headline: FGR and FGR+RS vs IGR at matched clean accuracy", ""]
    if not fams:
        return parts + ["No headline family was trained for every seed; nothing to compare.", ""]
    tgt = hl["target"]
    parts.append(
        f"Matching: {hl['rule']}" + (f" (target {pct(tgt['clean_acc'])}%, model `{tgt['model']}`)." if tgt else ".")
        + f" Seeds: {', '.join(map(str, seeds))}; mean ± {hl['std']}.")
    parts.append("")
    for s in hl["summary"]:
        paper = s["paper"]
        ptxt = (f" The paper reports {paper[1]:+.1f} points on average (min {paper[0]:+.1f}, max {paper[2]:+.1f})"
                f" on {res['pipeline']['paper_dataset']}." if paper else "")
        std = f" ± {s['seed_std']:.2f}" if s["seed_std"] is not None else ""
        hi, lo = s["pair"].split(" - ")
        one = " (one seed: no spread; add seeds with --seeds)" if len(seeds) == 1 else ""
        if s["verdict"] == "higher in every seed":
            verdict = f"**Our numbers show {hi} above {lo}** at matched clean accuracy{one}"
        elif s["verdict"] == "lower in every seed":
            verdict = f"**Our numbers do NOT show the gain: {hi} is below {lo}** at matched clean accuracy{one}"
        elif s["verdict"] == "no difference":
            verdict = f"**Our numbers do NOT show a gain: {hi} and {lo} are equal** at matched clean accuracy"
        else:
            verdict = (f"**Our numbers do NOT show a consistent gain of {hi} over {lo}**: the sign of the "
                       "mean gain differs across seeds")
        parts.append(
            f"- **{s['pair']}**: {verdict}: mean gain {s['mean']:+.2f}{std} points over {s['cells']} "
            f"attack×budget cells (cell means from {s['min']:+.2f} to {s['max']:+.2f}; positive in "
            f"{s['cells_positive']}/{s['cells']} cells; per-seed means "
            f"{', '.join(f'{v:+.2f}' for v in s['per_seed_mean'])}).{ptxt}")
        by = "; ".join(f"{a} {v['mean']:+.2f}" + (f" ± {v['std']:.2f}" if v["std"] is not None else "")
                       + f" ({v['verdict']})" for a, v in s["by_attack"].items())
        parts.append(f"  - per attack (mean over budgets): {by}.")
    parts += ["", "Matched instances (clean accuracy %, evaluation images):", ""]
    rows = []
    for s in seeds:
        row = [str(s)]
        for f in fams:
            r = next(x for x in hl["selection"] if x["seed"] == s and x["family"] == f)
            cands = ", ".join(f"{c['model']} {pct(c['clean_acc'])}" for c in r["candidates"])
            row.append(f"**{r['model']}** {pct(r['clean_acc'])} ({cands})")
        rows.append(row)
    rows.append(["mean ± std"] + [_pm(c["mean"], c["std"]) for c in hl["clean"]])
    parts += [md_table(["seed"] + [f"{f} (candidates)" for f in fams], rows), ""]
    parts += ["Robust accuracy (%) of the matched instances, mean ± std over seeds; gains in points "
              "(mean ± std over seeds of the per-seed difference, and the number of seeds where it is positive):", ""]
    cell = {(c["attack"], c["budget"], c["family"]): c for c in hl["cells"]}
    gain = {(g["attack"], g["budget"], g["pair"]): g for g in hl["gains"]}
    pairs = [s["pair"] for s in hl["summary"]]
    rows = []
    for a in res["runs"][str(hl["main_seed"])]["config"]["attacks"]:
        for b in a["budgets"]:
            if (a["name"], b, fams[0]) not in cell:
                continue
            row = [a["name"], f"{b:g}"]
            row += [_pm(cell[(a["name"], b, f)]["mean"], cell[(a["name"], b, f)]["std"]) for f in fams]
            for pr in pairs:
                g = gain[(a["name"], b, pr)]
                row.append(_pm(g["mean"], g["std"], scale=1.0, sign=True) + f" ({g['seeds_positive']}/{len(seeds)})")
            rows.append(row)
    parts += [md_table(["attack", "budget (px)"] + fams + pairs, rows), ""]
    return parts


def _training_section(res: dict[str, Any]) -> list[str]:
    p = res["pipeline"]
    size = _size(p["dataset"])
    rows = []
    for t in res["training"]:
        w = t.get("weight")
        lam = t.get("lam")
        if w is not None and lam is None:
            lam_txt = f"≈{lam_of_weight(w, t['defense'], size, p['lam_batch_size']):.4g} (equivalent)"
        else:
            lam_txt = f"{lam:g}" if lam is not None else ""
        cfg = t.get("defense_config", {})
        extra = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items()
                          if k in ("sigma_px", "eps", "steps"))
        rows.append([str(t["seed"]), t["model"], t["defense"], f"{w:.4g}" if w is not None else "", lam_txt, extra,
                     f"{t['train_s']:.1f}" + (" (cached)" if t["cached"] else ""),
                     f"{100 * t['train_acc']:.2f}" if t.get("train_acc") is not None else ""])
    sched = p["schedule"]
    lines = [
        "## Setup", "",
        f"- Data: `{p['dataset']}` (train: {'all' if p['train_limit'] is None else p['train_limit']} images, "
        f"augmentation {'on' if p['augment'] else 'off'}; evaluation: the first "
        f"{'all' if p['n'] is None else p['n']} test images). Model: `{p['model']}`.",
        f"- Schedule `{sched['name']}`: {sched['optimizer']} lr {sched['lr']:g}, batch {sched['batch_size']}, "
        f"{sched['epochs']} epochs, "
        + (f"LR x{sched['gamma']:g} at epochs {', '.join(map(str, sched['milestones']))}" if sched["milestones"]
           else "constant LR")
        + (f", momentum {sched['momentum']:g}" if sched["momentum"] else "")
        + (f", weight decay {sched['weight_decay']:g}" if sched["weight_decay"] else "") + ".",
        f"- Weights: `weight` is this package's per-example weight (flows in pixels); `lam` is the paper's lambda "
        f"(batch-mean CE, normalized align_corners=True flow, batch {p['lam_batch_size']}), converted by "
        f"`fgr_defense.paper_lambda_to_weight` (FGR: weight = lam·((W-1)/2)²/B; IGR: weight = lam/B; W = {size}).",
        *[f"- {n}" for n in p["notes"]],
        "- Attacks: " + "; ".join(
            f"{a.get('name', a['family'])} ({a['family']}, budgets {', '.join(f'{b:g}' for b in a['budgets'])} px"
            + (", " + ", ".join(f"{k}={v}" for k, v in a.get("params", {}).items()) if a.get("params") else "")
            + ")" for a in p["attacks"]) + ".",
        "",
        "Training (seconds of wall time for this model; cached = trained by an earlier run):", "",
        md_table(["seed", "model", "defense", "weight", "paper lambda", "other", "train s", "train acc %"], rows), "",
    ]
    return lines


def _size(dataset: str) -> int:
    from fgr_defense import dataset_info

    return int(dataset_info(dataset)["size"])


def _table1_section(res: dict[str, Any]) -> list[str]:
    from .report import table1

    main = res["runs"][str(res["headline"]["main_seed"])]
    t1 = table1(main)
    key = res["pipeline"]["paper_dataset"]
    rows = [[d, str(c["TOTAL"]), str(PAPER_TABLE1.get(d, {}).get(key, "")),
             str(sum(PAPER_TABLE1.get(d, {}).values())) if d in PAPER_TABLE1 else ""]
            for d, c in t1["counts"].items()]
    n = len(t1["cells"])
    return [f"## Table 1: which defense resists best (seed {res['headline']['main_seed']})", "",
            f"Cells won out of {n} (attack × budget; ties count for every tied defense), representatives matched "
            f"to {t1['reference']}'s clean accuracy as in the paper; the paper's counts are over its own cells "
            "(Fig. 6; per dataset two architectures).", "",
            md_table(["defense", "ours", f"paper ({key})", "paper (total)"], rows), ""]


def _anchor_section(res: dict[str, Any]) -> list[str]:
    a = res["pipeline"]["anchor"]
    rows = res["anchor"] or []
    out = [f"## Anchor: {a['title']}", "", a["description"], ""]
    table = []
    for r in rows:
        table.append([r["label"], r["model"], f"{r['clean']:.2f}", f"{r['adv']:.2f}",
                      pct(r["our_clean"]) if r["our_clean"] is not None else "n/a",
                      pct(r["our_adv"]) if r["our_adv"] is not None else "n/a"])
    out += [md_table(["defense", "our model", "published clean %", "published adv. %", "our clean %",
                       "our adv. %"], table), ""]
    return out


def render_pipeline_report(res: dict[str, Any]) -> str:
    """The Markdown report of a pipeline results dict (``results.json``)."""
    h = res["header"]
    main = str(res["headline"]["main_seed"])
    parts = [
        f"# {h['title']}", "",
        f"- Command: `{h['command']}`",
        f"- Git revision: `{h['git_revision']}` (code sha256 {h['code_sha256']}: eval, fgr_defense, "
        "torchattacks_deform sources)",
        f"- Seeds: training {', '.join(map(str, h['seeds']))} (main seed {h['main_seed']}); attack seed {h['eval_seed']}",
        f"- Wall time: {h['wall_s']:.0f} s (training {h['train_s']:.0f} s: {h['models_trained']} model(s) trained, "
        f"{h['models_cached']} from cache; evaluation {h['eval_s']:.0f} s)",
        f"- Hardware: device `{h['device']}`, {h['threads']} torch thread(s); torch {h['torch']}, "
        f"Python {h['python']}; finished {h['finished_at']}",
        "",
    ]
    parts += [n for n in res["pipeline"]["notes"] if n.startswith("**")] + [""] * any(
        n.startswith("**") for n in res["pipeline"]["notes"])
    parts += _headline_section(res)
    parts += _table1_section(res)
    if res.get("anchor"):
        parts += _anchor_section(res)
    figs = res.get("figures", [])
    captions = {"headline.png": "matched robust accuracy vs budget (mean ± std over seeds)",
                "matching.png": "clean accuracy of every instance vs its weight, and the matched ones",
                "tradeoff.png": f"robust vs clean accuracy of every instance of seed {main}"}
    own = [f for f in captions if f in figs]
    if own:
        parts += ["Figures: " + "; ".join(captions[f] for f in own) + ".", ""]
        parts += [f"![{f[:-4]}]({f})" for f in own] + [""]
    parts += _training_section(res)
    all_main = res["pipeline"]["attack_all_main"]
    attacked_txt = (f"seed {main}: every model; " if all_main else "") + (
        "seeds " + ", ".join(k for k in res["runs"] if all_main is False or k != main))
    parts += [f"Clean accuracy of every instance was measured by the harness on the evaluation images; attacked: "
              f"{attacked_txt}: the matched IGR, FGR and FGR+RS instances"
              + ("" if all_main else f" (and, for seed {main}, the single-instance defenses)")
              + ". Every attack cell is in results.json / results.csv.", ""]
    body = render_report(res["runs"][main], [f for f in figs if f not in captions])
    lines = [("#" + ln if ln.startswith("## ") else ln) for ln in body.splitlines()]
    lines[0] = f"## Seed {main}: every model (eval harness report)"
    parts += lines
    return "\n".join(parts).rstrip() + "\n"


def _write_outputs(res: dict[str, Any], out: Path) -> None:
    rows = []
    for s, r in res["runs"].items():
        by_model = {m["name"]: m for m in r["models"]}
        rows += [{**c, "seed": s, "defense": by_model[c["model"]]["defense"], "group": by_model[c["model"]]["group"]}
                 for c in r["cells"]]
    write_csv(out / "results.csv", rows, ["seed"] + CSV_FIELDS)
    hl = res["headline"]
    hrows = [{"kind": "robust_acc", "attack": c["attack"], "budget": c["budget"], "what": c["family"],
              "mean": c["mean"], "std": c["std"], "values": c["values"]} for c in hl["cells"]]
    hrows += [{"kind": "gain_points", "attack": g["attack"], "budget": g["budget"], "what": g["pair"],
               "mean": g["mean"], "std": g["std"], "values": g["values"]} for g in hl["gains"]]
    write_csv(out / "headline.csv", hrows, ["kind", "attack", "budget", "what", "mean", "std", "values"])
    # the cells' fingerprint components (what the cache compares) stay in the cache's cell
    # files; results.json keeps each cell's fingerprint hash
    slim = {**res, "runs": {s: {**r, "cells": [{k: v for k, v in c.items() if k != "components"}
                                               for c in r["cells"]]} for s, r in res["runs"].items()}}
    atomic_write_text(out / "results.json", json.dumps(slim, indent=1, default=str) + "\n")
    atomic_write_text(out / "report.md", render_pipeline_report(res))


def format_headline(res: dict[str, Any]) -> str:
    """A few plain-text lines: the headline gains and where the report is."""
    lines = []
    for s in res["headline"]["summary"]:
        std = f" ± {s['seed_std']:.2f}" if s["seed_std"] is not None else ""
        paper = f" (paper: {s['paper'][1]:+.1f})" if s["paper"] else ""
        lines.append(f"{s['pair']:<14} mean gain {s['mean']:+6.2f}{std} points over {s['cells']} cells, "
                     f"{s['verdict']}{paper}")
    h = res["header"]
    lines.append(f"wall time {h['wall_s']:.0f}s (train {h['train_s']:.0f}s, eval {h['eval_s']:.0f}s); "
                 f"revision {h['git_revision']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# the demo presets
def _demo_schedule(epochs: int) -> Any:
    from fgr_defense.presets import get_schedule

    return scaled_schedule(get_schedule("fast", "mnist5k"), epochs)


#: Attack suite of the CPU demo, few steps so that it fits 15 minutes. Budgets (pixels) were
#: chosen on the Standard model only, so that no attack is saturated: the gradient attacks
#: leave it about 60-85% (0.25 px) down to 0-30% (0.75 px); the gradient-free FlowES is much
#: weaker per pixel and gets larger budgets.
DEMO_ATTACKS: tuple[dict[str, Any], ...] = (
    {"family": "FlowFGSM", "budgets": [0.25, 0.5, 0.75]},
    {"family": "FlowPGD", "budgets": [0.25, 0.5, 0.75], "params": {"steps": 10, "alpha_ratio": 0.25}},
    {"family": "StAdv", "budgets": [0.25, 0.5, 0.75], "params": {"steps": 20}},
    {"family": "FlowES", "budgets": [0.5, 1.0, 1.5], "params": {"population": 10, "steps": 5}},
)

#: Weights (per-example convention) of the CPU demo's sweeps, chosen on clean accuracy only
#: so that the three families span the same clean-accuracy range around AT-PGD's.
#: Two per family keep ``make demo`` within 15 minutes on 2 cores; a first run with a third,
#: stronger weight (IGR 8, FGR and FGR+RS 40) gave 82-91% clean accuracy, never matched.
DEMO_WEIGHTS: dict[str, tuple[float, ...]] = {"IGR": (2.0, 4.0), "FGR": (10.0, 20.0), "FGR+RS": (10.0, 20.0)}
DEMO_COMBINED_WEIGHT = 20.0


def _instances(weights: dict[str, tuple[float, ...]], combined: float) -> tuple[Instance, ...]:
    out = [Instance("Standard"), Instance("AT-FGSM"), Instance("AT-PGD")]
    for fam in ("IGR", "FGR", "FGR+RS"):
        out += [Instance(fam, weight=w, all_seeds=True) for w in weights[fam]]
    out.append(Instance("FGR+RS+AT-PGD", weight=combined))
    return tuple(out)


def _demo_mnist5k(seeds: tuple[int, ...] | None, epochs: int | None, n: int | None) -> Pipeline:
    return Pipeline(
        name="demo", title="deform-robust demo: the paper's comparison on MNIST-5k (SmallCNN, CPU)",
        command="make demo  (= python -m eval demo)", dataset="mnist5k", model="smallcnn", group="SmallCNN",
        schedule=_demo_schedule(epochs or 3), instances=_instances(DEMO_WEIGHTS, DEMO_COMBINED_WEIGHT),
        attacks=DEMO_ATTACKS, seeds=seeds or (0, 1, 2), n=n or 400, attack_all_main=False,
        notes=(
            "Scale: the paper trains VGG-11/ResNet-18 on 60k MNIST images for 30 epochs (SGD); this demo trains "
            "a SmallCNN on 4,000 MNIST-5k images with the `fast` preset of fgr_defense.presets (Adam) shortened "
            "to the epochs above, so that the whole run fits 15 minutes on a 2-core CPU.",
            "Weights: the paper's lambdas, converted, are too strong for this model and schedule (IGR lam "
            "1000-7000 -> weight 3.9-27; FGR lam 100-1000 -> weight 71-712, below 90% clean accuracy), so the "
            "sweeps use per-example weights chosen on clean accuracy only (IGR 2, 4; FGR and FGR+RS 10, "
            "20; FGR+RS+AT-PGD 20), so that the families cover the same clean-accuracy range; the equivalent "
            "paper lambdas are listed below. FGR+RS uses the paper's sigma 0.01 (normalized) = 0.135 px.",
            "Adversarial training (AT-FGSM, AT-PGD) follows fgr_defense.presets: L-inf pixel-intensity eps 0.1, "
            "PGD 7 steps.",
        ),
    )


def _demo_tiny(seeds: tuple[int, ...] | None, epochs: int | None, n: int | None) -> Pipeline:
    """Seconds on a CPU: for tests of the pipeline (numbers mean nothing)."""
    from fgr_defense.presets import get_schedule

    sched = dataclasses.replace(get_schedule("fast", "mnist5k"), epochs=epochs or 1, milestones=(), batch_size=32)
    return Pipeline(
        name="demo-tiny", title="deform-robust demo (tiny test preset; numbers mean nothing)",
        command="python -m eval demo --preset tiny", dataset="mnist5k", model="smallcnn", group="SmallCNN",
        schedule=sched, instances=_instances({"IGR": (1.0, 8.0), "FGR": (5.0, 40.0), "FGR+RS": (5.0, 40.0)}, 20.0),
        attacks=(
            {"family": "FlowFGSM", "budgets": [0.5, 1.0]},
            {"family": "FlowPGD", "budgets": [0.5, 1.0], "params": {"steps": 2, "alpha_ratio": 0.5}},
            {"family": "StAdv", "budgets": [0.5, 1.0], "params": {"steps": 2}},
            {"family": "FlowES", "budgets": [0.5, 1.0], "params": {"population": 2, "steps": 2}},
        ),
        seeds=seeds or (0, 1), train_limit=512, n=n or 60, eval_batch_size=64,
        plots={"samples": 1, "grid": 5}, checks={"enabled": True, "batch": 16, "tolerance": 0.01},
    )


DEMO_PRESETS = {"mnist5k": _demo_mnist5k, "tiny": _demo_tiny}


def demo_pipeline(preset: str = "mnist5k", seeds: Sequence[int] | None = None, epochs: int | None = None,
                  n: int | None = None) -> Pipeline:
    """The demo's :class:`Pipeline` (``"mnist5k"``: ``make demo``; ``"tiny"``: tests).

    Example:
        >>> p = demo_pipeline()
        >>> p.seeds, p.schedule.epochs, [i.name for i in p.instances_for(1)][:3]
        ((0, 1, 2), 3, ['IGR(w=2)', 'IGR(w=4)', 'FGR(w=10)'])
    """
    if preset not in DEMO_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(DEMO_PRESETS)}, got {preset!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    return DEMO_PRESETS[preset](tuple(seeds) if seeds else None, epochs, n)


def run_demo(out: str | Path = "results/demo", preset: str = "mnist5k", seeds: Sequence[int] | None = None,
             epochs: int | None = None, n: int | None = None, device: str = "auto",
             command: str | None = None) -> dict[str, Any]:
    """Run the demo pipeline into ``out``; returns the results dict (as in ``out/results.json``)."""
    return run_pipeline(demo_pipeline(preset, seeds, epochs, n), out, device=device, command=command)
