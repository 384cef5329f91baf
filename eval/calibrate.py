"""Choose a preset's weight grids on calibration seeds: ``python -m eval calibrate --preset mnist5k``.

The comparison of defense families at equal clean accuracy (:mod:`eval.analysis`) is only as
good as each family's coverage of clean accuracy. This command picks the weights on a seed
that the preset's main run does not use, so that the grid is fixed before the main run sees
any data:

1. Train the zero-weight model (Standard) and every weight of each family's ``calibration.scan``
   on each calibration seed (``calibration.seed``: one seed or a list), with the preset's
   training recipe (schedule, stabilizer, data).
2. Read each model's clean accuracy on the test split (the images the pipeline evaluates).
   With several seeds, a weight's clean accuracy is the mean over the seeds of its accuracy
   relative to that seed's Standard (plus the mean Standard accuracy), so seed-to-seed shifts
   of the whole curve cancel and the noise of one model is averaged.
3. Per family, choose the weights whose clean accuracy is expected at each target drop below
   Standard (:func:`choose_weights`), and add the geometric mean of two chosen neighbours
   where the expected drop between them exceeds ``max_step`` (the steep part of the curve,
   where training noise makes clean accuracy jump).
4. Write ``calibration.json``, ``calibration.md`` (with the YAML lines to commit in the
   preset) and ``calibration.png`` (clean accuracy against weight).

A preset's ``calibration`` section::

    calibration:
      seed: [100, 101]            # one seed or a list; none of training.seeds
      targets: [0.5, 1.25, 2, 3]  # drops below Standard, in points
      max_step: 1.5               # points: a wider expected step gets a weight in between
      max_weights: 9              # optional: at most this many per family (or {family: n, ...})
      keep_noisy: true            # optional: also every scanned weight where the scan is not monotone
      scan: {IGR: [0.5, 2, 8], FGR: [5, 15, 50]}

Convention:
    Weights are this package's per-example ``weight``; clean accuracies fractions; drops and
    steps percentage points. The expected clean accuracy between two scanned weights is
    linear in ``log(weight)``, after the scan is made non-increasing in weight by isotonic
    regression (adjacent violators pooled to their mean), so a noisy scan never asks for a
    weight twice and one unlucky model does not pull its neighbours down.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from fgr_defense.defenses import resolve_defense_name

from .presets import Instance, Preset, PresetError
from .report import md_table, pct

__all__ = ["calibration_plan", "choose_weights", "expected_clean", "render_calibration", "run_calibration"]

logger = logging.getLogger(__name__)


def calibration_plan(p: Preset, seed: int | Sequence[int] | None = None
                     ) -> tuple[list[int], list[Instance], dict[str, Any]]:
    """``(seeds, instances, section)``: the models a calibration trains on each seed (Standard first).

    Raises:
        PresetError: no ``calibration`` section, a bad value, or a seed the main run uses.
    """
    cal = p.raw.get("calibration")
    if not isinstance(cal, dict) or not isinstance(cal.get("scan"), dict) or not cal["scan"]:
        raise PresetError(f"{p.source}: calibration: expected a mapping with a non-empty 'scan' "
                          "({family: [weights]}), got " + repr(cal))
    given = cal.get("seed", 100) if seed is None else seed
    seeds = [given] if isinstance(given, int) else list(given) if isinstance(given, (list, tuple)) else None
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise PresetError(f"calibration.seed: expected an integer or a list of distinct integers, got {given!r}")
    for s in seeds:
        if s in p.seeds:
            raise PresetError(f"--seed: expected a calibration seed that the main run does not use "
                              f"(training.seeds {list(p.seeds)}), got {s}")
    targets = cal.get("targets")
    if not isinstance(targets, list) or not targets or any(not isinstance(t, (int, float)) or t <= 0
                                                            for t in targets):
        raise PresetError(f"{p.source}: calibration.targets: expected positive drops in points, got {targets!r}")
    insts = [Instance(str(p.analysis.get("zero_weight") or "Standard"))]
    for family, weights in cal["scan"].items():
        if not isinstance(weights, list) or not weights or any(
                not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0 for w in weights):
            raise PresetError(f"{p.source}: calibration.scan.{family}: expected positive weights, got {weights!r}")
        insts += [Instance(resolve_defense_name(str(family)), weight=float(w)) for w in sorted(weights)]
    for family in cal["scan"]:
        cap = weight_cap(cal, str(family))
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 2):
            raise PresetError(f"{p.source}: calibration.max_weights: expected an integer >= 2 or a mapping "
                              f"{{family: integer >= 2}}, got {cal.get('max_weights')!r}")
    return seeds, insts, cal


def weight_cap(cal: Mapping[str, Any], family: str) -> Any:
    """A family's ``max_weights``: the one number of the section, or the family's entry of a mapping (None: no cap).

    Example:
        >>> weight_cap({"max_weights": {"FGR": 13}}, "FGR"), weight_cap({"max_weights": 11}, "IGR")
        (13, 11)
    """
    cap = cal.get("max_weights")
    return cap.get(family) if isinstance(cap, dict) else cap


def pooled_scan(rows: Sequence[Mapping[str, Any]], family: str) -> tuple[list[tuple[float, float]], float]:
    """``(scan, zero)``: a family's ``(weight, clean)`` pooled over calibration seeds, and the mean zero.

    Each row has ``seed``, ``defense``, ``weight`` and ``clean_acc``; rows of weight 0 are each
    seed's zero-weight model. A weight's pooled clean accuracy is the mean over its seeds of
    ``clean - zero[seed]``, plus the mean of ``zero``.

    Example:
        >>> rows = [{"seed": 1, "defense": "S", "weight": 0.0, "clean_acc": 0.96},
        ...         {"seed": 2, "defense": "S", "weight": 0.0, "clean_acc": 0.98},
        ...         {"seed": 1, "defense": "F", "weight": 2.0, "clean_acc": 0.94},
        ...         {"seed": 2, "defense": "F", "weight": 2.0, "clean_acc": 0.92}]
        >>> scan, zero = pooled_scan(rows, "F")
        >>> [(w, round(c, 6)) for w, c in scan], round(zero, 6)
        ([(2.0, 0.93)], 0.97)
    """
    zeros = {r["seed"]: float(r["clean_acc"]) for r in rows if float(r["weight"]) == 0.0}
    zero = sum(zeros.values()) / len(zeros)
    by_weight: dict[float, list[float]] = {}
    for r in rows:
        if r["defense"] == family and float(r["weight"]) > 0:
            by_weight.setdefault(float(r["weight"]), []).append(float(r["clean_acc"]) - zeros[r["seed"]])
    return [(w, zero + sum(d) / len(d)) for w, d in sorted(by_weight.items())], zero


def expected_clean(scan: Sequence[tuple[float, float]], weight: float) -> float:
    """Clean accuracy expected at ``weight`` from ``(weight, clean)`` scan points (see the Convention).

    Example:
        >>> scan = [(1.0, 0.96), (4.0, 0.92), (16.0, 0.70)]
        >>> round(expected_clean(scan, 2.0), 6), expected_clean(scan, 0.5), expected_clean(scan, 32.0)
        (0.94, 0.96, 0.7)
        >>> round(expected_clean([(1.0, 0.96), (2.0, 0.88), (4.0, 0.90), (8.0, 0.80)], 4.0), 6)  # 0.88, 0.90 pooled
        0.89
    """
    pts = _monotone(scan)
    if weight <= pts[0][0]:
        return pts[0][1]
    for (w0, c0), (w1, c1) in zip(pts, pts[1:]):
        if w0 <= weight <= w1:
            return c0 + (c1 - c0) * (math.log(weight) - math.log(w0)) / (math.log(w1) - math.log(w0))
    return pts[-1][1]


def _pooled_runs(scan: Sequence[tuple[float, float]]) -> list[tuple[list[float], float]]:
    """The non-increasing least-squares fit of clean accuracy on weight (pool adjacent violators):
    ``(weights of a pooled run, its fitted clean accuracy)`` in weight order."""
    runs: list[tuple[list[float], float, float]] = []  # weights, sum, count
    for w, c in sorted((float(w), float(c)) for w, c in scan):
        runs.append(([w], c, 1.0))
        while len(runs) > 1 and runs[-2][1] / runs[-2][2] < runs[-1][1] / runs[-1][2]:
            ws, s1, n1 = runs.pop()
            runs[-1] = (runs[-1][0] + ws, runs[-1][1] + s1, runs[-1][2] + n1)
    return [(ws, total / count) for ws, total, count in runs]


def _monotone(scan: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-increasing least-squares fit of clean accuracy on weight (pool adjacent violators)."""
    return [(w, fit) for ws, fit in _pooled_runs(scan) for w in ws]


def noisy_weights(scan: Sequence[tuple[float, float]]) -> list[float]:
    """The scanned weights where the scan is not monotone: runs that the fit had to pool.

    There the seed-to-seed noise of clean accuracy exceeds its trend between neighbouring
    weights, so an interpolated weight says little about where a model lands; each of these
    weights is a separate draw across that stretch of the curve.

    Example:
        >>> noisy_weights([(1.0, 0.96), (2.0, 0.90), (3.0, 0.92), (4.0, 0.85)])
        [2.0, 3.0]
    """
    return [w for ws, _ in _pooled_runs(scan) if len(ws) > 1 for w in ws]


def _weight_at(pts: Sequence[tuple[float, float]], clean: float) -> float | None:
    """The weight whose expected clean accuracy is ``clean`` (None when the scan does not reach it)."""
    for (w0, c0), (w1, c1) in zip(pts, pts[1:]):
        if c1 <= clean <= c0 and c0 > c1:
            t = (c0 - clean) / (c0 - c1)
            return math.exp(math.log(w0) + t * (math.log(w1) - math.log(w0)))
    return None


def _round(w: float) -> float:
    """Two significant digits (weights are written into the preset by hand)."""
    return float(f"{w:.2g}")


def choose_weights(scan: Sequence[tuple[float, float]], zero_clean: float, targets: Sequence[float],
                   max_step: float | None = None, max_weights: int | None = None,
                   keep_noisy: bool = False) -> list[float]:
    """Weights expected at each target drop (points) below ``zero_clean``, plus fill-ins on steep steps.

    Args:
        scan: ``(weight, clean accuracy)`` of the scanned models of one family.
        zero_clean: the zero-weight model's clean accuracy.
        targets: drops below ``zero_clean`` in points, e.g. ``[0.5, 1.5, 3, 6]``.
        max_step: where the expected clean accuracies of two neighbouring chosen weights differ by
            more than this (points), add their geometric mean (once per pair); None: no fill-ins.
        max_weights: keep at most this many: while there are more, drop the interior weight whose
            two neighbours are closest in expected clean accuracy (the lightest and heaviest stay,
            and with ``keep_noisy`` the noisy weights while others are left to drop).
        keep_noisy: also keep every scanned weight of :func:`noisy_weights` (where the curve is
            steep and noisy, models land anywhere across the stretch: more of them fill it).

    Returns:
        Sorted distinct weights (two significant digits); targets the scan does not reach are
        skipped (the scan must then extend further, which :func:`render_calibration` says).

    Example:
        >>> scan = [(1.0, 0.96), (4.0, 0.94), (16.0, 0.80)]
        >>> choose_weights(scan, 0.965, [1.5, 2.5])
        [2.0, 4.0]
        >>> # 0.86 lies 8/14 of the way from 0.94 (w 4) to 0.80 (w 16): 4 * 4 ** (4 / 7) = 8.83; the 8-point
        >>> # step from 4 to 8.8 gets sqrt(4 * 8.8) = 5.93
        >>> choose_weights(scan, 0.965, [2.5, 10.5], max_step=3)
        [4.0, 5.9, 8.8]
        >>> choose_weights(scan, 0.965, [1.5, 2.5, 10.5], max_step=3, max_weights=3)
        [2.0, 5.9, 8.8]
    """
    pts = _monotone(scan)
    chosen = []
    for drop in targets:
        w = _weight_at(pts, zero_clean - drop / 100.0)
        if w is not None:
            chosen.append(_round(w))
    chosen = sorted(set(chosen))
    if max_step is not None:
        extra = [_round(math.sqrt(a * b)) for a, b in zip(chosen, chosen[1:])
                 if 100.0 * (expected_clean(pts, a) - expected_clean(pts, b)) > max_step]
        chosen = sorted(set(chosen) | set(extra))
    kept = set(noisy_weights(scan)) if keep_noisy else set()
    chosen = sorted(set(chosen) | kept)
    while max_weights is not None and len(chosen) > max(max_weights, 2):
        span = [(w in kept, expected_clean(pts, chosen[i - 1]) - expected_clean(pts, chosen[i + 1]))
                for i, w in enumerate(chosen[1:-1], 1)]
        if all(k for k, _ in span):
            kept = set()  # only noisy weights left to drop: drop them by the same rule
            continue
        del chosen[1 + span.index(min(v for v in span if not v[0]))]
    return chosen


def run_calibration(p: Preset, out: str | Path, seed: int | Sequence[int] | None = None, device: str = "auto",
                    progress: bool = True) -> dict[str, Any]:
    """Train the scan on the calibration seeds, choose the grids, write the outputs; returns the JSON dict."""
    # torch, training, matplotlib: only when calibrating (rendering the report needs none)
    from deform_robust import train_from_spec
    from fgr_defense.device import resolve_device
    from fgr_defense.naming import file_slug

    from .pipeline import instance_spec
    from .provenance import git_revision, machine

    seeds, insts, cal = calibration_plan(p, seed)
    out = Path(out)
    dev = resolve_device(device)
    rows: list[dict[str, Any]] = []
    jobs = [(s, inst) for s in seeds for inst in insts]
    bar = tqdm(jobs, desc=f"{p.name}: calibrate (seeds {', '.join(map(str, seeds))})", unit="model",
               disable=None if progress else True)
    for k, (s, inst) in enumerate(bar, 1):
        bar.set_postfix_str(f"model {k}/{len(jobs)}: seed {s} {inst.name}")
        spec = dataclasses.replace(instance_spec(p, inst, s), device=str(dev))
        res = train_from_spec(spec, out / "cache" / f"seed{s}" / file_slug(inst.name), mode="auto")
        clean = res.history[-1].get("val_acc") if res.history else None
        if clean is None:
            raise RuntimeError(f"{inst.name}: training kept no test accuracy; calibration needs validation")
        rows.append({"seed": s, "model": inst.name, "defense": inst.defense, "weight": inst.weight or 0.0,
                     "clean_acc": float(clean), "train_s": res.train_s,
                     "val_curve": [h.get("val_acc") for h in res.history]})
    bar.close()
    targets = [float(t) for t in cal["targets"]]
    max_step = cal.get("max_step")
    max_weights = cal.get("max_weights")  # recorded as given (a number, or a mapping per family)
    grids: dict[str, list[float]] = {}
    reach: dict[str, float] = {}
    pooled: dict[str, list[list[float]]] = {}
    zero = float(rows[0]["clean_acc"])
    for family in cal["scan"]:
        scan, zero = pooled_scan(rows, resolve_defense_name(str(family)))
        pooled[family] = [[w, c] for w, c in scan]
        grids[family] = choose_weights(scan, zero, targets, max_step, weight_cap(cal, str(family)),
                                       keep_noisy=bool(cal.get("keep_noisy", False)))
        reach[family] = 100.0 * (zero - min(c for _, c in scan))
    result = {"preset": p.name, "source": p.source, "seed": seeds[0] if len(seeds) == 1 else seeds,
              "seeds": seeds, "targets": targets, "max_step": max_step, "max_weights": max_weights,
              "keep_noisy": bool(cal.get("keep_noisy", False)),
              "zero_clean": zero, "models": rows, "pooled": pooled, "grids": grids, "reach": reach,
              "header": {"command": f"python -m eval calibrate --preset {p.name}", "git_revision": git_revision(exclude=out),
                         **machine(dev)}}
    out.mkdir(parents=True, exist_ok=True)
    # torch, training, matplotlib: only when calibrating (rendering the report needs none)
    from fgr_defense.files import atomic_write_text

    atomic_write_text(out / "calibration.json", json.dumps(result, indent=1) + "\n")
    figure = _plot(result, out / "calibration.png")
    atomic_write_text(out / "calibration.md", render_calibration(result, figure))
    return result


def render_calibration(result: Mapping[str, Any], figure: str | None = None) -> str:
    """The Markdown summary: every scanned model, the chosen grids and the YAML lines for the preset."""
    zero = result["zero_clean"]
    seeds = result.get("seeds") or [result["seed"]]
    lines = [f"# Calibration of `{result['preset']}` on seed{'s' if len(seeds) > 1 else ''} "
             f"{', '.join(map(str, seeds))}", "",
             f"- Command: `{result['header']['command']}` at revision `{result['header']['git_revision']}`",
             f"- Zero-weight model: {pct(zero)}% clean{' (mean over the seeds)' if len(seeds) > 1 else ''}; "
             "target drops (points): "
             f"{', '.join(f'{t:g}' for t in result['targets'])}; fill-in above a step of {result['max_step']} points"
             + ("; every scanned weight of a non-monotone stretch kept" if result.get("keep_noisy") else "")
             + (f"; at most {_caps(result['max_weights'])} weights" if result.get("max_weights") else ""),
             ""]
    if figure:
        lines += [f"![calibration]({figure})", ""]
    zeros = {r.get("seed"): r["clean_acc"] for r in result["models"] if r["weight"] == 0}
    rows = [[str(r.get("seed", seeds[0])), r["model"], f"{r['weight']:g}", pct(r["clean_acc"]),
             f"{100 * (zeros[r.get('seed')] - r['clean_acc']):+.1f}", f"{r['train_s']:.0f}"] for r in result["models"]]
    lines += [md_table(["seed", "model", "weight", "clean %", "drop below the seed's Standard (points)", "train s"],
                       rows), ""]
    if len(seeds) > 1 and result.get("pooled"):
        lines += ["Pooled over the seeds (the mean drop below each seed's Standard; the grids are chosen from these):",
                  ""]
        prow = [[f, f"{w:g}", pct(c), f"{100 * (zero - c):+.2f}"] for f, pts in result["pooled"].items()
                for w, c in pts]
        lines += [md_table(["family", "weight", "pooled clean %", "mean drop (points)"], prow), ""]
    lines += ["Chosen grids (commit them in the preset before the main run):", "", "```yaml"]
    lines += [f"    - {{defense: {f}, weight: [{', '.join(f'{w:g}' for w in ws)}]}}"
              for f, ws in result["grids"].items()]
    lines += ["```", ""]
    short = [f for f, r in result["reach"].items() if r < max(result["targets"])]
    if short:
        lines += [f"The scan of {', '.join(short)} does not reach the largest target drop: extend it.", ""]
    return "\n".join(lines)


def _caps(cap: Any) -> str:
    """``11`` or ``IGR 11, FGR 12`` (a ``max_weights`` as the report states it)."""
    return ", ".join(f"{f} {n}" for f, n in cap.items()) if isinstance(cap, dict) else str(cap)


def _plot(result: Mapping[str, Any], path: Path) -> str | None:
    # torch, training, matplotlib: only when calibrating (rendering the report needs none)
    import matplotlib

    matplotlib.use("Agg")
    # torch, training, matplotlib: only when calibrating (rendering the report needs none)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    zeros = {r.get("seed"): r["clean_acc"] for r in result["models"] if r["weight"] == 0}
    for family, weights in result["grids"].items():
        name = resolve_defense_name(str(family))
        scan, zero = pooled_scan([{**r, "seed": r.get("seed")} for r in result["models"]], name)
        line = ax.plot([w for w, _ in scan], [100 * c for _, c in scan], "o-", label=f"{family} (scan, pooled)")[0]
        ax.plot([r["weight"] for r in result["models"] if r["defense"] == name],
                [100 * (r["clean_acc"] - zeros[r.get("seed")] + zero) for r in result["models"] if r["defense"] == name],
                ".", color=line.get_color(), alpha=0.5)
        for w in weights:
            ax.axvline(w, color=line.get_color(), alpha=0.25, lw=1)
    ax.axhline(100 * result["zero_clean"], color="k", ls="--", lw=1, label="Standard")
    for t in result["targets"]:
        ax.axhline(100 * result["zero_clean"] - t, color="grey", lw=0.5, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("weight (log scale); vertical lines: the chosen grid")
    ax.set_ylabel("clean accuracy %")
    ax.set_title(f"{result['preset']}: calibration on seed(s) "
                 f"{', '.join(map(str, result.get('seeds') or [result['seed']]))}; dots: single seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
