"""The experiment pipeline behind ``make demo`` and ``python -m eval reproduce``: train, evaluate, compare.

1. **Train** every instance of a preset (:mod:`eval.presets`) for its seeds through the one
   shared :func:`fgr_defense.train_from_spec` (``mode="auto"``: a finished checkpoint with the
   same spec is reused, an unfinished one resumed, a changed one retrained). Checkpoints live
   in ``out/cache/train/seed<s>/<instance>/``.
2. **Evaluate** each seed's models with the installed harness
   (:func:`deform_robust.runner.run_config`; every instance against every attack and budget,
   resumable cell by cell in ``out/cache/eval/seed<s>``).
3. **Compare** the families at equal clean accuracy over seeds (:mod:`eval.analysis`).
4. **Report**: ``out/report.md`` (:mod:`eval.pipeline_report`), ``out/results.json``,
   ``out/results.csv`` (every cell of every seed), ``out/frontier.csv`` and the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deform_robust import TrainSpec, train_from_spec
from deform_robust.config import EvalConfig, parse_config
from deform_robust.data import TestData, load_test_data
from deform_robust.runner import run_config
from fgr_defense.checkpoint import load_model
from fgr_defense.constants import DATASETS, REFERENCE_DEFENSE
from fgr_defense.defenses import paper_weight
from fgr_defense.device import resolve_device
from fgr_defense.naming import file_slug

from .analysis import analyze, attack_strength
from .figures import frontier_plot, matched_plot, matching_plot
from .fill_in import fill_in_options, next_fill_weight
from .pipeline_report import RESULTS_FORMAT, write_pipeline_outputs
from .plots import budget_plots, model_plots
from .presets import Instance, Preset, load_preset
from .provenance import code_fingerprint, git_revision, machine
from .report import PLOT_PATTERNS, table1
from .stats import seed_stats

__all__ = ["RESULTS_FORMAT", "describe", "eval_config", "instance_spec", "prepare", "run_pipeline", "train_specs"]

logger = logging.getLogger(__name__)

_FIGURES = ("frontier.png", "matched.png", "matching.png")


def instance_spec(p: Preset, inst: Instance, seed: int) -> TrainSpec:
    """The training spec of one instance of a preset on one seed (the preset's recipe for every instance)."""
    tr = p.training
    kw: dict[str, Any] = {k: getattr(inst, k) for k in ("weight", "lam", "sigma", "eps") if getattr(inst, k) is not None}
    if inst.lam is not None:
        kw["lam_batch_size"] = int(tr.get("lam_batch_size", 256))
    if inst.variant != "paper":
        kw["variant"] = inst.variant
    for key in ("augment", "pipeline", "limit", "keep_best", "data_root", "grad_clip"):
        if tr.get(key) is not None:
            kw[key] = tr[key]
    return TrainSpec(dataset=tr.get("dataset", "mnist5k"), model=tr.get("model", "smallcnn"), defense=inst.defense,
                     schedule=tr.get("schedule", "fast"), seed=seed, progress=False, **kw)


def train_specs(p: Preset) -> dict[tuple[int, Instance], TrainSpec]:
    """The training spec of every (seed, instance) of a preset (raises on a bad value)."""
    out = {}
    for seed in p.seeds:
        for inst in p.instances_for(seed):
            try:
                out[(seed, inst)] = instance_spec(p, inst, seed)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{p.source}: training ({inst.name}, seed {seed}): {err}") from None
    return out


def eval_config(p: Preset, seed: int, models: list[dict[str, Any]], device: str | None = None,
                plots: dict[str, Any] | None = None, check_files: bool = True) -> EvalConfig:
    """The harness config of one seed: the preset's eval part with ``models`` (checkpoints)."""
    raw = p.eval_part()
    raw["name"] = f"{p.name}-seed{seed}"
    raw["models"] = models
    if device is not None:
        raw["device"] = device
    raw["plots"] = plots if plots is not None else {"enabled": False}
    return parse_config(raw, source=f"{p.source} (seed {seed})", check_files=check_files)


def prepare(name: str, **overrides: Any) -> Preset:
    """:func:`eval.presets.load_preset`, then every training spec built and the eval part parsed.

    Raises:
        ValueError: a bad value anywhere in the preset (the message names the file and key).
    """
    p = load_preset(name, **overrides)
    train_specs(p)
    eval_config(p, p.main_seed, [{"name": "stand-in", "source": "checkpoint", "path": "unused.pt"}],
                check_files=False)
    return p


def describe(p: Preset) -> str:
    """A plain-text plan: the training specs (with paper-lambda conversions), attacks and cell counts."""
    lines = [p.title, f"preset {p.name} ({p.source}); seeds {list(p.seeds)} (main {p.main_seed})"]
    lines += [f"change: {c}" for c in p.changes]
    for (seed, inst), spec in train_specs(p).items():
        if seed != p.main_seed:
            continue
        lam = f"lam {spec.lam:g} (batch {spec.lam_batch_size}) -> " if spec.lam is not None else ""
        weight = _weight(spec)
        lines.append(f"  {inst.name:<24} {spec.defense:<14} {lam}weight {weight:.6g}" if weight is not None
                     else f"  {inst.name:<24} {spec.defense}")
    first = train_specs(p)[(p.main_seed, p.instances[0])]
    lines.append(f"schedule (every instance): {first.training_schedule()}; grad_clip {first.grad_clip}")
    fill = fill_in_options(p.training, p.analysis, p.source)
    if fill is not None:
        lines.append(f"fill-in (after the grid; eval/fill_in.py): up to {fill['max_extra']} more weight(s) per family "
                     f"and seed, of {', '.join(fill['families'])} where the family has models, while a gap between "
                     f"neighbouring clean accuracies exceeds {100 * fill['max_gap']:g} points"
                     + ("; a gap whose neighbours' mean weight is trained is subdivided" if fill["subdivide"] else ""))
    for s in p.seeds[1:]:
        lines.append(f"seed {s}: {', '.join(i.name for i in p.instances_for(s))}")
    cells = 0
    for a in p.raw.get("attacks", []):
        lines.append(f"attack {a.get('name', a['family'])}: {a['family']} budgets {a['budgets']} params "
                     f"{a.get('params', {})}")
        cells += len(a["budgets"])
    lines.append(f"evaluation: {p.raw.get('data', {})}; {cells} attack cells per model")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)



def _weight(spec: TrainSpec) -> float | None:
    """The per-example weight a spec trains with (its ``lam`` converted), or None."""
    if spec.weight is not None or spec.lam is None:
        return spec.weight
    return paper_weight(spec.defense, spec.lam, spec.lam_batch_size, int(DATASETS[spec.dataset]["size"]))


def _train_one(spec: TrainSpec, inst: Instance, seed: int, cache: Path, device: str, which: str) -> dict[str, Any]:
    """Train (or reuse) one instance on one seed (``which``: its place in the log, e.g. ``"model 3/13"``);
    the record the report and the evaluation read."""
    res = train_from_spec(dataclasses.replace(spec, device=device), cache / f"seed{seed}" / file_slug(inst.name),
                          mode="auto")
    last = res.history[-1] if res.history else {}
    logger.info("train %s: %s seed %d: %s (%s)", which, inst.name, seed, res.checkpoint,
                "cached" if res.cached else f"{res.wall_s:.0f}s")
    return {"seed": seed, "model": inst.name, "defense": inst.defense, "spec": spec.to_dict(),
            "weight": _weight(spec), "path": str(res.checkpoint), "train_s": res.train_s,
            "cached": res.cached, "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"),
            "epochs": len(res.history)}


def _train_all(p: Preset, cache: Path, device: str, progress: bool) -> list[dict[str, Any]]:
    jobs = list(train_specs(p).items())
    trained = []
    bar = tqdm(jobs, desc=f"{p.name}: train", unit="model", disable=None if progress else True, dynamic_ncols=True)
    with contextlib.nullcontext() if bar.disable else logging_redirect_tqdm():  # log lines above the bar
        for k, ((seed, inst), spec) in enumerate(bar, 1):
            bar.set_postfix_str(f"model {k}/{len(jobs)}: {inst.name} seed {seed}")
            trained.append(_train_one(spec, inst, seed, cache, device, f"model {k}/{len(jobs)}"))
    bar.close()
    return trained


def _clean_accuracy(path: str, data: TestData, device: str) -> float:
    """A checkpoint's clean accuracy on the run's test images (the fill-in rule's only input)."""
    model, _ = load_model(path, map_location=device)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data.labels), 500):
            x, y = data.images[i:i + 500].to(device), data.labels[i:i + 500].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data.labels)


def _fill_in(p: Preset, opts: dict[str, Any], trained: list[dict[str, Any]], data: TestData, cache: Path,
             device: str) -> list[dict[str, Any]]:
    """The models that ``training.fill_in`` adds (:mod:`eval.fill_in`), trained; per seed and family."""
    zero = p.analysis.get("zero_weight")
    acc: dict[str, float] = {}

    def clean(t: dict[str, Any]) -> float:
        if t["path"] not in acc:
            acc[t["path"]] = _clean_accuracy(t["path"], data, device)
        return acc[t["path"]]

    added: list[dict[str, Any]] = []
    for seed in p.seeds:
        zeros = [(0.0, clean(t)) for t in trained if t["seed"] == seed and t["defense"] == zero]
        for family in opts["families"]:
            mine = [t for t in trained if t["seed"] == seed and t["defense"] == family and t["weight"] is not None]
            for _ in range(opts["max_extra"] if mine else 0):
                w = next_fill_weight(zeros + [(t["weight"], clean(t)) for t in mine], opts["max_gap"],
                                     [t["weight"] for t in mine], opts["resolution"], opts["subdivide"])
                if w is None:
                    break
                inst = Instance(family, weight=w)
                rec = {**_train_one(instance_spec(p, inst, seed), inst, seed, cache, device, "fill-in"), "fill_in": True}
                logger.info("fill-in: %s seed %d at %.1f%% clean", inst.name, seed, 100 * clean(rec))
                mine.append(rec)
                added.append(rec)
    return added


def _models(p: Preset, trained: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    group = p.training.get("model", "model")
    return [{"name": t["model"], "defense": t["defense"], "group": group, "source": "checkpoint", "path": t["path"]}
            for t in trained if t["seed"] == seed]


def _plot_models(p: Preset, analysis: dict[str, Any] | None, trained: list[dict[str, Any]]) -> list[str]:
    """Standard, the reference, the matched instances of the main seed and the combined defense."""
    main = [t for t in trained if t["seed"] == p.main_seed]
    if analysis is None:
        return [t["model"] for t in main]
    ref = analysis["matched"]["reference"]
    first = {d: next((t["model"] for t in main if t["defense"] == d), None) for d in ("Standard", ref, "FGR+RS+AT-PGD")}
    matched = [r["model"] for r in analysis["matched"]["selection"] if r["seed"] == p.main_seed]
    want = [first["Standard"], first[ref], *matched, first["FGR+RS+AT-PGD"]]
    return list(dict.fromkeys(w for w in want if w))


def run_pipeline(p: Preset, out: str | Path, device: str = "auto", progress: bool = True,
                 command: str | None = None) -> dict[str, Any]:
    """Train, evaluate, compare and report one preset; returns the dict written to results.json."""
    t0 = time.perf_counter()
    out = Path(out)
    dev = resolve_device(device)
    cache = out / "cache"
    revision = git_revision(exclude=out)
    if revision.endswith("+dirty"):  # say it now, not after the run: committed results need a clean tree
        logger.warning("%s: the checkout has changes outside %s (git status); the report will say %s. For results "
                       "to commit, run from a clean commit and keep logs outside the checkout", p.name, out, revision)
    fill = fill_in_options(p.training, p.analysis, p.source)
    logger.info("%s: %d training run(s)%s over seeds %s on %s -> %s", p.name,
                sum(len(p.instances_for(s)) for s in p.seeds), " and the fill-in's" if fill else "", list(p.seeds), dev,
                out)
    trained = _train_all(p, cache / "train", str(dev), progress)
    d = eval_config(p, p.main_seed, _models(p, trained, p.main_seed), str(dev)).data
    data = load_test_data(d.dataset, d.root, d.n, d.pipeline)  # the preset's one data section: loaded once
    if fill is not None:
        trained += _fill_in(p, fill, trained, data, cache / "train", str(dev))
    t_train = time.perf_counter() - t0
    runs: dict[int, dict[str, Any]] = {}
    cfgs = {seed: eval_config(p, seed, _models(p, trained, seed), str(dev)) for seed in p.seeds}
    first = 1
    for seed, cfg in cfgs.items():  # the runner's bar and log count the models of the seed: "model k/N"
        logger.info("evaluate models %d-%d of %d (seed %d)", first, first + len(cfg.models) - 1, len(trained), seed)
        first += len(cfg.models)
        res = run_config(cfg, cache / "eval" / f"seed{seed}", overwrite_stale=True, data=data,
                         progress=None if progress else False)
        assert res is not None  # a single process
        runs[seed] = res
    analysis = None
    if p.analysis.get("families"):
        analysis = analyze(runs, p.analysis["families"],
                           p.analysis.get("pairs", [["FGR", "IGR"], ["FGR+RS", "IGR"], ["FGR+RS", "FGR"]]),
                           p.analysis.get("reference", REFERENCE_DEFENSE), p.paper_gains(), p.analysis.get("zero_weight"))
    out.mkdir(parents=True, exist_ok=True)
    figures: list[str] = []
    if p.raw.get("plots", {}).get("enabled", True):
        plot_models = _plot_models(p, analysis, trained)
        main_cfg = eval_config(p, p.main_seed, _models(p, trained, p.main_seed), str(dev),
                               plots={**p.raw.get("plots", {}), "enabled": True, "models": plot_models})
        if analysis is not None:
            strength = {t["model"]: t["weight"] for t in trained if t["weight"]}
            figures += [Path(f).name for f in (
                frontier_plot(runs, analysis, out / "frontier.png"), matched_plot(analysis, out / "matched.png"),
                matching_plot(analysis, strength, out / "matching.png"))]
        figures += [Path(f).name for f in budget_plots(runs[p.main_seed], out)]
        figures += [Path(f).name for f in model_plots(main_cfg, out, data, dev)]
    t_eval = time.perf_counter() - t0 - t_train
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "header": {"title": p.title, "command": command or p.command, "git_revision": git_revision(exclude=out),
                   "code_sha256": code_fingerprint(), "seeds": list(p.seeds), "main_seed": p.main_seed,
                   "eval_seed": p.raw.get("seed", 0), **machine(dev), "train_s": t_train, "eval_s": t_eval,
                   "models_trained": sum(not t["cached"] for t in trained),
                   "models_cached": sum(t["cached"] for t in trained), "wall_s": time.perf_counter() - t0},
        "preset": {"name": p.name, "source": p.source, "changes": list(p.changes), "notes": list(p.notes),
                   "analysis": p.analysis, "anchor": p.anchor, "training": p.training,
                   "eval": {k: v for k, v in p.eval_part().items() if k != "plots"}},
        "training": trained, "runs": {str(s): r for s, r in runs.items()}, "analysis": analysis,
        "table1": table1(runs[p.main_seed]), "figures": figures,
        "strength": attack_strength(runs, p.analysis.get("stronger", [])),
        "anchor": _anchor_rows(p, runs) if p.anchor else None,
    }
    _remove_stale(out, figures)
    write_pipeline_outputs(results, out)
    logger.info("%s: done in %.0fs (train %.0fs, eval %.0fs)", p.name, results["header"]["wall_s"], t_train, t_eval)
    return results


def _remove_stale(out: Path, keep: list[str]) -> None:
    for pat in (*_FIGURES, *PLOT_PATTERNS):
        for f in out.glob(pat):
            if f.name not in keep:
                logger.info("removing %s (not produced by this run)", f)
                f.unlink()


def _anchor_rows(p: Preset, runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Our numbers of the anchor cell (mean over seeds, and per seed) beside the published ones."""
    assert p.anchor is not None
    rows = []
    for a in p.anchor["rows"]:
        clean, adv = [], []
        for res in runs.values():
            ours = next((m for m in res["models"] if m["name"] == a["model"]), None)
            cell = next((c for c in res["cells"] if c["model"] == a["model"] and c["attack"] == p.anchor["attack"]),
                        None)
            if ours is not None and cell is not None:
                clean.append(ours["clean_acc"])
                adv.append(cell["robust_acc"])
        rows.append({**a, "our_clean": seed_stats(clean) if clean else None, "our_adv": seed_stats(adv) if adv else None})
    return rows
