"""Figures of a pipeline report (matplotlib's Agg canvas; no torch).

- ``frontier.png``: the robust-vs-clean frontier, one panel per metric (attack at a budget,
  and the worst case over the suite), one line per family through the seed-averaged
  instances, every seed's instance as a faint point, single-instance defenses as markers.
- ``matched.png``: robust accuracy of the instances matched to the reference's clean accuracy
  vs budget, mean and 95% interval over seeds, one panel per attack.
- ``matching.png``: clean accuracy of every instance of the compared families vs its
  regularizer strength, one line per seed; circles mark the matched instances.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fgr_defense.files import atomic_write

from .analysis import robust_of

__all__ = ["frontier_plot", "matched_plot", "matching_plot", "save_figure"]

_MARKERS = "osD^v<>ph*"


def save_figure(fig: Figure, path: Path) -> str:
    """Render ``fig`` with the Agg canvas into ``path`` atomically; returns the path."""
    FigureCanvasAgg(fig)
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=100, format="png"))
    return str(path)


def _mean_points(runs: Mapping[int, Mapping[str, Any]], robust_by_seed: Mapping[int, Mapping[Any, float]],
                 family: str, attack: str, budget: float
                 ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Seed-averaged (clean, robust) per instance name, and every seed's points (percent)."""
    per_name: dict[str, list[tuple[float, float]]] = {}
    for seed, res in runs.items():
        robust = robust_by_seed[seed]
        for m in res["models"]:
            if m["defense"] == family and (m["name"], attack, budget) in robust:
                per_name.setdefault(m["name"], []).append(
                    (100 * m["clean_acc"], 100 * robust[(m["name"], attack, budget)]))
    every = [p for pts in per_name.values() for p in pts]
    means = sorted((statistics.fmean(c for c, _ in pts), statistics.fmean(r for _, r in pts))
                   for pts in per_name.values())
    return means, every


def frontier_plot(runs: Mapping[int, Mapping[str, Any]], analysis: Mapping[str, Any], path: Path,
                  others: Sequence[str] = ("Standard", "AT-PGD")) -> str:
    """The robust-vs-clean frontier (module docstring) over every seed of ``runs``."""
    metrics = [tuple(m) for m in analysis["metrics"]]
    cols = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.5 * rows))
    robust = {seed: robust_of(res) for seed, res in runs.items()}
    for i, (attack, budget) in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, fam in enumerate(analysis["families"]):
            means, every = _mean_points(runs, robust, fam, attack, float(budget))
            if not means:
                continue
            line = ax.plot([c for c, _ in means], [r for _, r in means], "-" + _MARKERS[j % len(_MARKERS)],
                           label=fam, markersize=4)[0]
            ax.plot([c for c, _ in every], [r for _, r in every], _MARKERS[j % len(_MARKERS)],
                    color=line.get_color(), alpha=0.25, markersize=3)
        for k, d in enumerate(others):
            means, _ = _mean_points(runs, robust, d, attack, float(budget))
            if means:
                ax.plot([means[0][0]], [means[0][1]], "kx" if k == 0 else "k+", markersize=8, label=d)
        ax.set_title(f"{attack} @ {float(budget):g} px", fontsize=9)
        ax.set_xlabel("clean accuracy (%)", fontsize=8)
        ax.set_ylabel("robust accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Robust vs clean accuracy: lines through the instances averaged over seeds "
                 f"{', '.join(map(str, analysis['seeds']))}; faint points: each seed", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def matched_plot(analysis: Mapping[str, Any], path: Path) -> str:
    """Matched instances' robust accuracy vs budget, mean and 95% interval over seeds."""
    matched = analysis["matched"]
    attacks = list(dict.fromkeys(c["attack"] for c in matched["cells"]))
    fig = Figure(figsize=(4.0 * max(len(attacks), 1), 3.6))
    for i, attack in enumerate(attacks):
        ax = fig.add_subplot(1, max(len(attacks), 1), i + 1)
        for fam in matched["families"]:
            cells = sorted((c for c in matched["cells"] if c["attack"] == attack and c["family"] == fam
                            and c["mean"] is not None), key=lambda c: c["budget"])
            xs = [c["budget"] for c in cells]
            ys = [100 * c["mean"] for c in cells]
            err = [100 * (c["ci95"][1] - c["mean"]) if c["ci95"] else 0.0 for c in cells]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=fam)
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("budget (px)", fontsize=8)
        ax.set_ylabel("robust accuracy (%)", fontsize=8)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Instances matched to {matched['reference']}'s clean accuracy: mean and 95% interval over "
                 f"{len(analysis['seeds'])} seed(s)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def matching_plot(analysis: Mapping[str, Any], strength: Mapping[str, float], path: Path) -> str:
    """Clean accuracy of each instance vs its regularizer strength (log x), one line per seed."""
    matched = analysis["matched"]
    fams = matched["families"]
    fig = Figure(figsize=(4.0 * max(len(fams), 1), 3.4))
    chosen = {(r["seed"], r["model"]) for r in matched["selection"]}
    for i, fam in enumerate(fams):
        ax = fig.add_subplot(1, max(len(fams), 1), i + 1)
        for seed in analysis["seeds"]:
            row = next(r for r in matched["selection"] if r["seed"] == seed and r["family"] == fam)
            pts = sorted((strength[c["model"]], 100 * c["clean_acc"], c["model"]) for c in row["candidates"]
                         if c["model"] in strength)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", markersize=3, label=f"seed {seed}")
            for x, y, name in pts:
                if (seed, name) in chosen:
                    ax.plot([x], [y], "o", markersize=10, markerfacecolor="none", markeredgecolor="black")
            if row["target"] is not None:
                ax.axhline(100 * row["target"], color="gray", linestyle="--", linewidth=0.8)
        if any(v > 0 for v in strength.values()):
            ax.set_xscale("log")
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("weight (per-example convention)", fontsize=8)
        ax.set_ylabel("clean accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Matching: circles are the instances closest to {matched['reference']}'s clean accuracy "
                 "(dashed)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)

