"""The comparison a pipeline reports: families of defenses at equal clean accuracy, over seeds.

Views, all from the harness results of each seed (no torch, no runner):

**Frontier (the registered endpoint, issue 15).** For a seed, a metric (an attack at a budget,
or the worst case over the suite at a budget) and a family ``F``, the points are ``F``'s
instances plus the ``zero_weight`` model (Standard: every family at weight 0). ``F``'s frontier
``R_F(c)`` is the best robust accuracy among the points with clean accuracy at least ``c``
(:func:`eval.stats.frontier_at`; dominated points never count). The gain of ``hi - lo`` is the
mean of ``R_hi(c) - R_lo(c)`` over 201 evenly spaced ``c`` in the shared clean-accuracy range
(:func:`eval.stats.frontier_gain`). A seed's gain is the mean over the attack x budget metrics
(the *summary*) or over the worst-case budgets (*summary_worst*); over seeds, the mean and
95% t-interval (:func:`eval.stats.seed_stats`) and the verdict of :func:`eval.stats.verdict`.

**Secondary (not the endpoint).** The same summaries under ``"pareto-linear"`` (the second fair
rule: non-dominated points joined by straight lines; a verdict that flips under it is no
verdict), ``"step-pareto-range"`` (the registered frontiers over a shared range taken from the
non-dominated models only), ``"step-own-range"`` (the registered frontiers over the shared range
cut at the lower of the two families' own most accurate models: above it one family is its model
and the other Standard alone, so there the gain is decided by which family's top model lands
nearer Standard's clean accuracy) and ``"interpolate"`` (the rule of the withdrawn first mnist5k report: each ``hi``
instance against ``lo``'s polyline through every ``lo`` point, interpolated at its clean
accuracy; instances outside ``lo``'s range are not counted).

**Leave one model out (not the endpoint).** Each model of the pair's two families (not the
zero-weight model) is dropped in turn from its seed, and the registered summary is recomputed
(:func:`influence`): the range of the mean, and every drop that changes the verdict, with the
family's largest gap on that seed after the drop (so a reader sees whether the drop breaks the
coverage the rule relies on).

**Coverage.** Per seed and family (with the zero-weight model): the clean-accuracy range, the
drop below the zero-weight model and the largest gap between neighbours.

**Matched (the paper's Table 1 rule).** Per seed, each family is represented by its instance
whose clean accuracy is closest to the reference defense's (AT-PGD) of the same seed (of the
first seed that has one, when a seed trains no reference); the robust accuracies of these
instances and their differences are summarized over seeds.

Gains are percentage points; accuracies fractions.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Optional, Sequence

from .stats import frontier_gain, interpolate, match_instances, seed_stats, verdict

__all__ = ["ACC_RESOLUTION", "RULES", "WORST", "analyze", "attack_strength", "coverage", "influence",
           "meets_coverage", "metrics_of", "robust_of"]

#: The metric name of the worst case over the suite.
WORST = "worst case"

#: Clean accuracies are ``count / n`` fractions that arrive through float32 (96.3% reads 0.9629999995), so a
#: difference of exactly 2 points can read 0.0200000003: requirements are compared at this resolution
#: (far below ``1 / n`` for any test split).
ACC_RESOLUTION = 1e-6

#: Frontier rules: the registered endpoint first, then the secondary views.
RULES = ("step", "pareto-linear", "step-pareto-range", "step-own-range", "interpolate")


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


def _points(pool: Sequence[dict[str, Any]], robust: Mapping[tuple[str, str, float], float], family: str,
            zero: Optional[str], metric: tuple[str, float]) -> list[tuple[float, float]]:
    attack, budget = metric
    return [(m["clean_acc"], robust[(m["name"], attack, budget)]) for m in pool
            if m["defense"] in (family, zero) and (m["name"], attack, budget) in robust]


def _interpolated_gain(pool: Sequence[dict[str, Any]], robust: Mapping[tuple[str, str, float], float], hi: str,
                       lo: str, metric: tuple[str, float], zero: Optional[str]) -> Optional[float]:
    """The withdrawn rule: each ``hi`` instance against ``lo``'s polyline through all its points."""
    attack, budget = metric
    lo_pts = _points(pool, robust, lo, zero, metric)
    diffs = []
    for m in pool:
        if m["defense"] == hi and (m["name"], attack, budget) in robust:
            base = interpolate(lo_pts, m["clean_acc"])
            if base is not None:
                diffs.append(100.0 * (robust[(m["name"], attack, budget)] - base))
    return statistics.fmean(diffs) if diffs else None


def _gain(pool: Sequence[dict[str, Any]], robust: Mapping[tuple[str, str, float], float], hi: str, lo: str,
          metric: tuple[str, float], zero: Optional[str], rule: str) -> Optional[float]:
    if rule == "interpolate":
        return _interpolated_gain(pool, robust, hi, lo, metric, zero)
    if not all(any(m["defense"] == f for m in pool) for f in (hi, lo)):
        return None  # a family not trained on this seed (the zero-weight model alone is no family)
    hi_pts, lo_pts = _points(pool, robust, hi, zero, metric), _points(pool, robust, lo, zero, metric)
    if rule == "step-pareto-range":
        return frontier_gain(hi_pts, lo_pts, "step", range_over="pareto")
    if rule == "step-own-range":  # the range ends at the lower of the two families' own most accurate models
        own = [max((m["clean_acc"] for m in pool if m["defense"] == f), default=None) for f in (hi, lo)]
        return frontier_gain(hi_pts, lo_pts, "step", upper=min(c for c in own if c is not None))
    return frontier_gain(hi_pts, lo_pts, rule)


def coverage(pool: Sequence[dict[str, Any]], family: str, zero: Optional[str]) -> dict[str, Any]:
    """A family's clean-accuracy coverage in one seed (the zero-weight model included).

    Returns ``top`` (the zero-weight model's clean accuracy, else the family's highest),
    ``lowest``, ``drop`` (``top - lowest``), ``max_gap`` (the largest gap between neighbours
    sorted by clean accuracy), ``instances``; fractions.

    Example:
        >>> pool = [{"defense": "Standard", "clean_acc": 0.96}, {"defense": "F", "clean_acc": 0.95},
        ...         {"defense": "F", "clean_acc": 0.91}]
        >>> c = coverage(pool, "F", "Standard")
        >>> round(c["drop"], 4), round(c["max_gap"], 4), c["instances"]
        (0.05, 0.04, 2)
    """
    accs = sorted(m["clean_acc"] for m in pool if m["defense"] in (family, zero))
    zeros = [m["clean_acc"] for m in pool if m["defense"] == zero]
    top = zeros[0] if zeros else (accs[-1] if accs else None)
    gaps = [b - a for a, b in zip(accs, accs[1:])]
    return {"top": top, "lowest": accs[0] if accs else None,
            "drop": (top - accs[0]) if accs and top is not None else None,
            "max_gap": max(gaps) if gaps else None,
            "instances": sum(m["defense"] == family for m in pool)}


def meets_coverage(c: Mapping[str, Any], min_drop: float, max_gap: float) -> bool:
    """Whether a :func:`coverage` row reaches ``min_drop`` with no gap over ``max_gap`` (fractions).

    Differences are compared at :data:`ACC_RESOLUTION`, so a gap of exactly ``max_gap`` meets it.

    Example:
        >>> meets_coverage({"drop": 0.064, "max_gap": 0.952 - 0.932}, 0.06, 0.02)
        True
        >>> meets_coverage({"drop": 0.064, "max_gap": 0.021}, 0.06, 0.02)
        False
    """
    if c.get("drop") is None:
        return False
    return bool(c["drop"] >= min_drop - ACC_RESOLUTION and (c.get("max_gap") or 0.0) <= max_gap + ACC_RESOLUTION)


def _stats(values: Sequence[Optional[float]]) -> dict[str, Any]:
    defined = [v for v in values if v is not None]
    base = seed_stats(defined) if defined else {"values": [], "n": 0, "mean": None, "std": None, "ci95": None}
    return {**base, "per_seed": list(values)}


def analyze(runs: Mapping[int, Mapping[str, Any]], families: Sequence[str], pairs: Sequence[Sequence[str]],
            reference: str, paper: Optional[Mapping[str, Sequence[float]]] = None,
            zero_weight: Optional[str] = None) -> dict[str, Any]:
    """Frontier, secondary, coverage and matched comparisons of ``families`` over the seeds of ``runs``.

    Args:
        runs: ``{seed: harness results}``, every instance of the families attacked in each.
        families: the defenses compared, e.g. ``["IGR", "FGR", "FGR+RS"]``.
        pairs: ``[[hi, lo], ...]``, e.g. ``[["FGR", "IGR"]]``.
        reference: the defense whose clean accuracy the matched view targets (per seed).
        paper: ``{"FGR - IGR": (min, mean, max)}`` of the paper, shown beside ours.
        zero_weight: a defense that is every family at weight 0 (``"Standard"``): its model joins
            every family's points.

    Returns:
        A JSON-able dict: ``seeds``, ``metrics``, ``frontier`` (the registered rule: ``gains``
        per pair x metric, ``summary`` per pair over the attack metrics, ``summary_worst`` over
        the worst-case metrics), ``secondary`` (the summaries
        under the other rules), ``coverage``, ``influence`` (:func:`influence`) and ``matched``
        (``selection``, ``cells``, ``gains``).
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
    secondary: list[dict[str, Any]] = []
    for hi, lo in pairs:
        pair = f"{hi} - {lo}"
        for rule in RULES:
            per_metric = {metric: [_gain(pools[s], robust[s], hi, lo, metric, zero_weight, rule) for s in seeds]
                          for metric in metrics}
            if rule == RULES[0]:
                gains += [{"pair": pair, "attack": metric[0], "budget": metric[1], **_stats(vals)}
                          for metric, vals in per_metric.items()]
            for label, chosen, target in (("attacks", attack_metrics, summary), (WORST, worst_metrics, summary_worst)):
                st = _stats(_seed_means([per_metric[m] for m in chosen], len(seeds)))
                row = {"pair": pair, **st, "verdict": verdict(st["ci95"], st["values"]) if st["n"] else "undefined"}
                if rule != RULES[0]:
                    secondary.append({"rule": rule, "over": label, **row})
                    continue
                cells = [statistics.fmean(v for v in per_metric[m] if v is not None) for m in chosen
                         if any(v is not None for v in per_metric[m])]
                target.append({**row, "metrics": len(chosen), "cells_defined": len(cells),
                               "cells_positive": sum(c > 0 for c in cells),
                               "paper": list(paper[pair]) if paper and pair in paper else None})
    cover = [{"seed": s, "family": f, **coverage(pools[s], f, zero_weight)} for f in families for s in seeds
             if any(m["defense"] == f for m in pools[s])]
    return {"seeds": seeds, "families": list(families), "pairs": [list(p) for p in pairs], "zero_weight": zero_weight,
            "rule": RULES[0], "metrics": [list(m) for m in metrics],
            "frontier": {"gains": gains, "summary": summary, "summary_worst": summary_worst},
            "secondary": secondary, "coverage": cover,
            "influence": influence(pools, robust, pairs, zero_weight,
                                   (("attacks", attack_metrics), (WORST, worst_metrics))),
            "matched": _matched(runs, seeds, pools, robust, families, pairs, reference, metrics)}


def _seed_gain(pool: Sequence[dict[str, Any]], robust: Mapping[tuple[str, str, float], float], hi: str, lo: str,
               chosen: Sequence[tuple[str, float]], zero: Optional[str]) -> Optional[float]:
    """One seed's registered gain: the mean over ``chosen`` metrics where it is defined (None where none is)."""
    return _seed_means([[_gain(pool, robust, hi, lo, m, zero, RULES[0])] for m in chosen], 1)[0]


def influence(pools: Mapping[int, Sequence[dict[str, Any]]], robust: Mapping[int, Mapping[tuple[str, str, float], float]],
              pairs: Sequence[Sequence[str]], zero: Optional[str],
              overs: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> list[dict[str, Any]]:
    """The registered summary with each model of a pair's families left out in turn (a secondary view).

    Args:
        pools: ``{seed: [{"name", "defense", "clean_acc"}, ...]}``.
        robust: ``{seed: {(model, attack, budget): robust accuracy}}``.
        pairs: ``[[hi, lo], ...]``.
        zero: the zero-weight defense (never left out: it is every family's weight 0).
        overs: ``[(label, metrics), ...]``, e.g. the attack metrics and the worst-case metrics.

    Returns:
        Per pair and ``over``: ``verdict`` (with every model), ``models`` (how many were left
        out in turn), ``mean_min``/``mean_max`` (points) and ``flips``: each drop that changes
        the verdict, with ``seed``, ``model``, ``mean``, ``ci95``, ``verdict`` and the family's
        coverage on that seed after the drop (``drop``, ``max_gap``; fractions).
    """
    seeds = sorted(pools)
    out: list[dict[str, Any]] = []
    for hi, lo in pairs:
        for label, chosen in overs:
            if not chosen:
                continue
            base = [_seed_gain(pools[s], robust[s], hi, lo, chosen, zero) for s in seeds]
            st0 = _stats(base)
            v0 = verdict(st0["ci95"], st0["values"]) if st0["n"] else "undefined"
            means: list[float] = []
            flips: list[dict[str, Any]] = []
            for k, s in enumerate(seeds):
                for m in pools[s]:
                    if m["defense"] not in (hi, lo):
                        continue
                    rest = [x for x in pools[s] if x is not m]
                    st = _stats([*base[:k], _seed_gain(rest, robust[s], hi, lo, chosen, zero), *base[k + 1:]])
                    if not st["n"]:
                        continue
                    means.append(st["mean"])
                    v = verdict(st["ci95"], st["values"])
                    if v != v0:
                        cov = coverage(rest, m["defense"], zero)
                        flips.append({"seed": s, "model": m["name"], "mean": st["mean"], "ci95": st["ci95"],
                                      "verdict": v, "drop": cov["drop"], "max_gap": cov["max_gap"]})
            out.append({"pair": f"{hi} - {lo}", "over": label, "verdict": v0, "models": len(means),
                        "mean_min": min(means) if means else None, "mean_max": max(means) if means else None,
                        "flips": flips})
    return out


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
