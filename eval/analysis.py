"""The comparison a pipeline reports: families of defenses at equal clean accuracy, over seeds.

Two views, both from the harness results of each seed (no torch, no runner):

**Frontier (the primary analysis).** For a pair ``hi - lo`` (e.g. ``FGR - IGR``), a metric
(an attack at a budget, or the worst case over the suite at a budget) and a seed: every
instance ``i`` of ``hi`` whose clean accuracy ``c_i`` lies inside the clean-accuracy range of
``lo``'s instances contributes ``robust_hi(i) - robust_lo(c_i)``, where ``robust_lo(c)`` is
``lo``'s frontier interpolated at ``c`` (:func:`eval.stats.interpolate`). The seed's gain is
the mean over those instances (undefined when none is inside the range). Over seeds: mean
and 95% t-interval (:func:`eval.stats.seed_stats`). The *summary* of a pair is, per seed, the
mean gain over all attack x budget metrics, then its mean and interval over seeds; its
verdict follows the pre-registered rule of :func:`eval.stats.verdict`.

**Matched (the paper's Table 1 rule).** Per seed, each family is represented by its instance
whose clean accuracy is closest to the reference defense's (AT-PGD) of the same seed (of the
first seed that has one, when a seed trains no reference); the robust accuracies of these
instances and their differences are summarized over seeds.

With ``zero_weight`` (e.g. ``"Standard"``: every family at weight 0 is standard training), that
defense's model joins the baseline family's frontier points.

**Sensitivity (post hoc, not an endpoint).** The summaries recomputed with two other baselines,
both of which favour the baseline (they take the best of several noisy baseline models):
``"dominance"``, the best robust accuracy of any baseline model at least as accurate as the
instance (counted only when one exists, so instances below the baseline's range count too), and
``"tolerance"``, the best baseline model within ``tolerance`` of the instance's clean accuracy
(default 0.006, about one standard error of a clean accuracy near 96% on 1,000 images).

Gains are percentage points; accuracies fractions.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Optional, Sequence

from .stats import interpolate, match_instances, seed_stats, verdict

__all__ = ["RULES", "WORST", "analyze", "attack_strength", "baseline_at", "metrics_of", "robust_of"]

#: The metric name of the worst case over the suite.
WORST = "worst case"

#: Baselines of a frontier gain: the pre-registered one first, then the sensitivity rules.
RULES = ("interpolate", "dominance", "tolerance")


def metrics_of(results: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``(attack, budget)`` of every attack cell with a positive budget, then ``(WORST, budget)``.

    Example:
        >>> res = {"config": {"attacks": [{"name": "A", "budgets": [0.0, 0.5]}]},
        ...        "worst_case": [{"model": "m", "budget": 0.5}]}
        >>> metrics_of(res)
        [('A', 0.5), ('worst case', 0.5)]
    """
    out = [(a["name"], float(b)) for a in results["config"]["attacks"] for b in a["budgets"] if b > 0]
    out += [(WORST, float(b)) for b in sorted({w["budget"] for w in results["worst_case"]})]
    return out


def robust_of(results: Mapping[str, Any]) -> dict[tuple[str, str, float], float]:
    """``{(model, metric, budget): robust accuracy}`` of attack cells and worst cases."""
    out = {(c["model"], c["attack"], float(c["budget"])): c["robust_acc"] for c in results["cells"]}
    out.update({(w["model"], WORST, float(w["budget"])): w["robust_acc"] for w in results["worst_case"]})
    return out


def _pool(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": m["name"], "defense": m["defense"], "clean_acc": m["clean_acc"]} for m in results["models"]]


def baseline_at(points: Sequence[tuple[float, float]], clean: float, rule: str = "interpolate",
                tolerance: float = 0.006) -> Optional[float]:
    """The baseline's robust accuracy at clean accuracy ``clean`` from its ``(clean, robust)`` points.

    ``"interpolate"``: the piecewise-linear frontier (None outside the points' clean range);
    ``"dominance"``: the best robust accuracy of the points with clean accuracy >= ``clean``;
    ``"tolerance"``: the best of the points within ``tolerance`` of ``clean``. None when no point qualifies.

    Example:
        >>> pts = [(0.90, 0.40), (0.95, 0.20), (0.96, 0.30)]
        >>> round(baseline_at(pts, 0.93), 6), baseline_at(pts, 0.80), baseline_at(pts, 0.80, "dominance")
        (0.28, None, 0.4)
        >>> baseline_at(pts, 0.955, "dominance"), baseline_at(pts, 0.955, "tolerance"), baseline_at(pts, 0.97, "tolerance")
        (0.3, 0.3, None)
    """
    if rule == "interpolate":
        return interpolate(points, clean)
    if rule == "dominance":
        cand = [y for x, y in points if x >= clean]
    elif rule == "tolerance":
        cand = [y for x, y in points if abs(x - clean) <= tolerance + 1e-12]
    else:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    return max(cand) if cand else None


def _frontier_gain(pool: Sequence[dict[str, Any]], robust: Mapping[tuple[str, str, float], float], hi: str,
                   lo: str, metric: tuple[str, float], zero: Optional[str] = None, rule: str = "interpolate",
                   tolerance: float = 0.006) -> tuple[Optional[float], list[str]]:
    attack, budget = metric
    lo_pts = [(m["clean_acc"], robust[(m["name"], attack, budget)]) for m in pool
              if m["defense"] in (lo, zero) and (m["name"], attack, budget) in robust]
    diffs, used = [], []
    for m in pool:
        if m["defense"] != hi or (m["name"], attack, budget) not in robust:
            continue
        base = baseline_at(lo_pts, m["clean_acc"], rule, tolerance)
        if base is not None:
            diffs.append(100.0 * (robust[(m["name"], attack, budget)] - base))
            used.append(m["name"])
    return (statistics.fmean(diffs) if diffs else None), used


def _stats(values: Sequence[Optional[float]]) -> dict[str, Any]:
    defined = [v for v in values if v is not None]
    base = seed_stats(defined) if defined else {"values": [], "n": 0, "mean": None, "std": None, "ci95": None}
    return {**base, "per_seed": list(values)}


def analyze(runs: Mapping[int, Mapping[str, Any]], families: Sequence[str], pairs: Sequence[Sequence[str]],
            reference: str, paper: Optional[Mapping[str, Sequence[float]]] = None,
            zero_weight: Optional[str] = None) -> dict[str, Any]:
    """Frontier and matched comparisons of ``families`` over the seeds of ``runs``.

    Args:
        runs: ``{seed: harness results}``, every instance of the families attacked in each.
        families: the defenses compared, e.g. ``["IGR", "FGR", "FGR+RS"]``.
        pairs: ``[[hi, lo], ...]``, e.g. ``[["FGR", "IGR"]]``.
        reference: the defense whose clean accuracy the matched view targets (per seed).
        paper: ``{"FGR - IGR": (min, mean, max)}`` of the paper, shown beside ours.
        zero_weight: a defense that is every family at weight 0 (``"Standard"``): its models join the
            baseline's frontier points, so that the frontier reaches the unregularized model.

    Returns:
        A JSON-able dict: ``seeds``, ``metrics``, ``frontier`` (``gains`` per pair x metric,
        ``summary`` per pair over the attack metrics, ``summary_worst`` over the worst-case
        metrics), ``matched`` (``selection``, ``cells``, ``gains``).
    """
    seeds = sorted(runs)
    first = runs[seeds[0]]
    metrics = metrics_of(first)
    attack_metrics = [m for m in metrics if m[0] != WORST]
    worst_metrics = [m for m in metrics if m[0] == WORST]
    pools = {s: _pool(runs[s]) for s in seeds}
    robust = {s: robust_of(runs[s]) for s in seeds}
    gains: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    summary_worst: list[dict[str, Any]] = []
    sens: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES[1:]}
    for hi, lo in pairs:
        pair = f"{hi} - {lo}"
        for rule in RULES:
            per_metric = {metric: _gain_per_seed(pools, robust, seeds, hi, lo, metric, zero_weight, rule)
                          for metric in metrics}
            if rule == "interpolate":
                gains += [{"pair": pair, "attack": metric[0], "budget": metric[1], **_stats(vals),
                           "instances_used": used} for metric, (vals, used) in per_metric.items()]
            for label, chosen, target in (("attacks", attack_metrics, summary), (WORST, worst_metrics, summary_worst)):
                st = _stats(_seed_means([per_metric[m][0] for m in chosen], len(seeds)))
                row = {"pair": pair, **st, "verdict": verdict(st["ci95"], st["values"]) if st["n"] else "undefined"}
                if rule != "interpolate":
                    used = [sorted({name for m in chosen for name in per_metric[m][1][k]}) for k in range(len(seeds))]
                    sens[rule].append({"rule": rule, "pair": pair, "over": label, **row, "instances_used": used})
                    continue
                cells = [statistics.fmean(v for v in per_metric[m][0] if v is not None) for m in chosen
                         if any(v is not None for v in per_metric[m][0])]
                target.append({**row, "metrics": len(chosen), "cells_defined": len(cells),
                               "cells_positive": sum(c > 0 for c in cells),
                               "paper": list(paper[pair]) if paper and pair in paper else None})
    return {"seeds": seeds, "families": list(families), "pairs": [list(p) for p in pairs], "zero_weight": zero_weight,
            "sensitivity": [row for rule in RULES[1:] for row in sens[rule]],
            "metrics": [list(m) for m in metrics],
            "frontier": {"gains": gains, "summary": summary, "summary_worst": summary_worst},
            "matched": _matched(runs, seeds, pools, robust, families, pairs, reference, metrics)}


def _gain_per_seed(pools: Mapping[int, Any], robust: Mapping[int, Any], seeds: Sequence[int], hi: str, lo: str,
                   metric: tuple[str, float], zero: Optional[str], rule: str
                   ) -> tuple[list[Optional[float]], list[list[str]]]:
    """The frontier gain of ``hi - lo`` at ``metric`` under ``rule`` per seed, and the instances counted."""
    out = [_frontier_gain(pools[s], robust[s], hi, lo, metric, zero, rule) for s in seeds]
    return [g for g, _ in out], [names for _, names in out]


def _seed_means(per_metric: Sequence[Sequence[Optional[float]]], n_seeds: int) -> list[Optional[float]]:
    """Per seed, the mean over the metrics where the gain is defined (None where none is)."""
    out: list[Optional[float]] = []
    for k in range(n_seeds):
        vals = [x for x in (v[k] for v in per_metric) if x is not None]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def _matched(runs: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], pools: Mapping[int, Any],
             robust: Mapping[int, Any], families: Sequence[str], pairs: Sequence[Sequence[str]], reference: str,
             metrics: Sequence[tuple[str, float]]) -> dict[str, Any]:
    selection, targets = [], {}
    chosen: dict[int, dict[str, str]] = {}
    for s in seeds:
        refs = [m for m in pools[s] if m["defense"] == reference]
        targets[s] = refs[0]["clean_acc"] if refs else None
    main_target = next((targets[s] for s in seeds if targets[s] is not None), None)
    for s in seeds:  # a seed without the reference model is matched to the main seed's target
        if targets[s] is None:
            targets[s] = main_target
        chosen[s] = match_instances(pools[s], families, targets[s])
        by_name = {m["name"]: m for m in pools[s]}
        for f, name in chosen[s].items():
            selection.append({"seed": s, "family": f, "model": name, "clean_acc": by_name[name]["clean_acc"],
                              "target": targets[s],
                              "candidates": [{"model": m["name"], "clean_acc": m["clean_acc"]}
                                             for m in pools[s] if m["defense"] == f]})
    fams = [f for f in families if all(f in chosen[s] for s in seeds)]
    cells, gains = [], []
    for attack, budget in metrics:
        acc = {f: [robust[s].get((chosen[s][f], attack, budget)) for s in seeds] for f in fams}
        for f in fams:
            cells.append({"attack": attack, "budget": budget, "family": f, **_stats(acc[f])})
        for hi, lo in pairs:
            if hi in acc and lo in acc:
                diff = [None if a is None or b is None else 100.0 * (a - b) for a, b in zip(acc[hi], acc[lo])]
                gains.append({"pair": f"{hi} - {lo}", "attack": attack, "budget": budget, **_stats(diff)})
    clean = [{"family": f, **_stats([next(r["clean_acc"] for r in selection if r["seed"] == s and r["family"] == f)
                                     for s in seeds])} for f in fams]
    return {"reference": reference, "targets": {str(s): targets[s] for s in seeds}, "selection": selection,
            "families": fams, "clean": clean, "cells": cells, "gains": gains}


def attack_strength(runs: Mapping[int, Mapping[str, Any]], pairs: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Is attack ``a`` at least as strong as attack ``b`` on every model, seed and shared budget?

    For each pair ``[a, b]`` and budget both were run at: the robust accuracy of every model of
    every seed under ``a`` and under ``b``, the number of (model, seed) where ``a`` left *more*
    robust examples than ``b`` (``a`` weaker), the largest such excess (points), and the mean
    robust accuracy of each.

    Example:
        >>> run = {"cells": [{"model": "m", "attack": "A", "budget": 0.5, "robust_acc": 0.2},
        ...                  {"model": "m", "attack": "B", "budget": 0.5, "robust_acc": 0.3}]}
        >>> r = attack_strength({0: run}, [["A", "B"]])[0]
        >>> r["weaker"], r["pairs"], round(r["mean_a"], 3), round(r["mean_b"], 3)
        (0, 1, 0.2, 0.3)
    """
    out = []
    for a, b in pairs:
        budgets = sorted({c["budget"] for r in runs.values() for c in r["cells"] if c["attack"] == a}
                         & {c["budget"] for r in runs.values() for c in r["cells"] if c["attack"] == b})
        for budget in budgets:
            diffs, ra, rb = [], [], []
            for res in runs.values():
                acc = {(c["model"], c["attack"]): c["robust_acc"] for c in res["cells"] if c["budget"] == budget}
                for model in sorted({m for m, att in acc if att == a}):
                    if (model, b) in acc:
                        ra.append(acc[(model, a)])
                        rb.append(acc[(model, b)])
                        diffs.append(100.0 * (acc[(model, a)] - acc[(model, b)]))
            if diffs:
                out.append({"a": a, "b": b, "budget": budget, "pairs": len(diffs),
                            "weaker": sum(d > 0 for d in diffs), "max_excess": max(0.0, max(diffs)),
                            "mean_a": statistics.fmean(ra), "mean_b": statistics.fmean(rb),
                            "mean_gap": statistics.fmean(diffs)})
    return out
