"""Statistics and matching of the experiment harness: pure functions on numbers and dicts.

Nothing here imports torch or the runner.

Conventions:
    - Accuracies are fractions; gains are percentage points.
    - Over seeds, a quantity is summarized by its mean, its sample standard deviation
      (``ddof=1``) and a two-sided 95% Student-t interval, ``mean ± t(0.975, n-1) · sd / √n``
      (undefined for one seed).
    - *Frontier interpolation*: a family's robust accuracy at clean accuracy ``c`` is the
      piecewise-linear interpolation between its instances sorted by clean accuracy (instances
      with equal clean accuracy are averaged); outside the family's clean-accuracy range it is
      undefined (no extrapolation).
    - *Frontier of a family* (the registered endpoint, issue 15): from its ``(clean, robust)``
      points, ``R(c)`` is the best robust accuracy among the points whose clean accuracy is at
      least ``c`` (a step function; a point that another point dominates never counts). The
      second fair rule, ``"pareto-linear"``, joins the non-dominated points by straight lines
      (``R(c)`` is the most robust point's value below its clean accuracy).
    - *Frontier gain* of ``hi`` over ``lo``: the mean of ``R_hi(c) - R_lo(c)`` over
      :data:`FRONTIER_GRID` evenly spaced ``c`` in the shared range ``[L, U]``, ``L`` the larger of
      the two lowest clean accuracies, ``U`` the smaller of the two highest; undefined when
      ``L > U``. The lowest and highest are taken over all of each family's points (the
      registered rule; a dominated point counts only there, never in ``R``);
      ``range_over="pareto"`` takes the non-dominated points only (a secondary view).
    - *Matching* (the paper's Table 1 rule): a family with several instances is represented by
      the instance whose clean accuracy is closest to a target's; ties go to the first instance.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from typing import Any, Optional, Sequence

__all__ = ["FRONTIER_GRID", "FRONTIER_RULES", "frontier_at", "frontier_gain", "interpolate", "match_instances",
           "pareto_points", "representatives", "seed_stats", "shared_range", "t_quantile", "verdict"]

#: Number of evenly spaced clean accuracies at which two frontiers are compared (the registered endpoint).
FRONTIER_GRID = 201

#: Frontier shapes: ``"step"`` (the registered endpoint) and ``"pareto-linear"`` (the second fair rule).
FRONTIER_RULES = ("step", "pareto-linear")


def t_quantile(df: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(2), 3), round(t_quantile(10), 3)
        (4.303, 2.228)
    """
    # scipy: only for intervals (the reports import this module torch- and scipy-free)
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"df: expected >= 1 degrees of freedom, got {df}")
    return float(t.ppf(q, df))


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95% t-interval of per-seed values (None where undefined).

    Example:
        >>> s = seed_stats([0.5, 0.7, 0.6])
        >>> round(s["mean"], 6), round(s["std"], 6), s["n"], [round(v, 4) for v in s["ci95"]]
        (0.6, 0.1, 3, [0.3516, 0.8484])
        >>> seed_stats([0.5])["ci95"] is None
        True
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: expected at least one per-seed value")
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    ci = None
    if std is not None:
        half = t_quantile(len(vals) - 1) * std / math.sqrt(len(vals))
        ci = [mean - half, mean + half]
    return {"values": vals, "n": len(vals), "mean": mean, "std": std, "ci95": ci, "min": min(vals), "max": max(vals)}


def interpolate(points: Sequence[tuple[float, float]], at: float) -> Optional[float]:
    """Piecewise-linear ``y`` at ``x = at`` through ``points`` ``(x, y)``; None outside their x range.

    Points with equal ``x`` are averaged first.

    Example:
        >>> pts = [(0.90, 0.40), (0.95, 0.20), (0.99, 0.10)]
        >>> round(interpolate(pts, 0.93), 6), interpolate(pts, 0.80), interpolate(pts, 0.99)
        (0.28, None, 0.1)
        >>> interpolate([(0.9, 0.1), (0.9, 0.3)], 0.9)
        0.2
    """
    grouped: dict[float, list[float]] = {}
    for x, y in points:
        grouped.setdefault(float(x), []).append(float(y))
    xs = sorted(grouped)
    ys = [statistics.fmean(grouped[x]) for x in xs]
    if not xs or at < xs[0] or at > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= at <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return ys[0]  # a single point equal to ``at``


def representatives(models: Sequence[dict[str, Any]], reference: str
                    ) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """Per group, one model per defense: the instance closest in clean accuracy to ``reference``.

    Without the reference in a group, defenses with several instances are represented by
    their highest clean accuracy (and a note says so). Returns ``(groups, selection, notes)``.

    Example:
        >>> ms = [{"name": "AT", "defense": "AT-PGD", "group": "g", "clean_acc": 0.8},
        ...       {"name": "F1", "defense": "FGR", "group": "g", "clean_acc": 0.9},
        ...       {"name": "F2", "defense": "FGR", "group": "g", "clean_acc": 0.78}]
        >>> representatives(ms, "AT-PGD")[1]
        {'g': {'AT-PGD': 'AT', 'FGR': 'F2'}}
    """
    groups = list(OrderedDict.fromkeys(m.get("group", "all") for m in models))
    defenses = list(OrderedDict.fromkeys(m["defense"] for m in models))
    selection: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    for g in groups:
        ms = [m for m in models if m.get("group", "all") == g]
        refs = [m for m in ms if m["defense"] == reference]
        if len(refs) > 1:
            notes.append(f"group {g!r}: {len(refs)} instances of the reference {reference!r}; "
                         f"matching to the first, {refs[0]['name']!r}")
        ref_acc = refs[0]["clean_acc"] if refs else None
        if ref_acc is None and any(sum(m["defense"] == d for m in ms) > 1 for d in defenses):
            notes.append(f"group {g!r}: no {reference!r} model; defenses with several instances are "
                         "represented by their highest clean accuracy")
        sel: dict[str, str] = {}
        for d in defenses:
            inst = [m for m in ms if m["defense"] == d]
            if not inst:
                continue
            if d == reference or ref_acc is None:
                best = inst[0] if d == reference else max(inst, key=lambda m: m["clean_acc"])
            else:
                best = min(inst, key=lambda m: abs(m["clean_acc"] - ref_acc))
            sel[d] = best["name"]
        selection[g] = sel
    return groups, selection, notes


def match_instances(models: Sequence[dict[str, Any]], families: Sequence[str], target: Optional[float]
                    ) -> dict[str, str]:
    """Per family, the instance whose clean accuracy is closest to ``target`` (ties: the first).

    With ``target=None`` the instance with the highest clean accuracy.

    Example:
        >>> ms = [{"name": "I1", "defense": "IGR", "clean_acc": 0.95},
        ...       {"name": "I2", "defense": "IGR", "clean_acc": 0.91},
        ...       {"name": "F1", "defense": "FGR", "clean_acc": 0.93}]
        >>> match_instances(ms, ["IGR", "FGR"], 0.92)
        {'IGR': 'I2', 'FGR': 'F1'}
    """
    out = {}
    for f in families:
        inst = [m for m in models if m["defense"] == f]
        if not inst:
            continue
        if target is None:
            out[f] = max(inst, key=lambda m: m["clean_acc"])["name"]
        else:
            out[f] = min(inst, key=lambda m: abs(m["clean_acc"] - target))["name"]
    return out


def verdict(ci: Optional[Sequence[float]], values: Sequence[float]) -> str:
    """The pre-registered verdict of a gain from its 95% interval over seeds.

    ``"reproduced"`` when the interval lies above 0, ``"contradicted"`` when it lies below 0,
    ``"not detected"`` otherwise; with one seed (no interval) the sign of the single value,
    marked ``"(one seed)"``.

    Example:
        >>> verdict([0.5, 3.0], [1, 2, 2]), verdict([-2.0, 1.0], [0, 1, -1]), verdict(None, [1.0])
        ('reproduced', 'not detected', 'positive (one seed)')
    """
    if ci is None:
        v = values[0] if values else 0.0
        return "positive (one seed)" if v > 0 else "negative (one seed)" if v < 0 else "zero (one seed)"
    if ci[0] > 0:
        return "reproduced"
    if ci[1] < 0:
        return "contradicted"
    return "not detected"


def pareto_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated ``(clean, robust)`` points, by increasing clean accuracy (so decreasing robustness).

    A point is dominated when another is at least as accurate and at least as robust, and better in one.
    Duplicates are kept once.

    Example:
        >>> pareto_points([(0.90, 0.40), (0.95, 0.20), (0.96, 0.30), (0.93, 0.10), (0.96, 0.30)])
        [(0.9, 0.4), (0.96, 0.3)]
    """
    out: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted({(float(x), float(y)) for x, y in points}, key=lambda p: (-p[0], -p[1])):
        if y > best:  # more robust than every more accurate point
            out.append((x, y))
            best = y
    return out[::-1]


def frontier_at(points: Sequence[tuple[float, float]], clean: float, rule: str = "step") -> Optional[float]:
    """A family's frontier ``R(clean)`` from its ``(clean, robust)`` points; None above its highest clean accuracy.

    ``"step"``: the best robust accuracy among the points with clean accuracy >= ``clean``.
    ``"pareto-linear"``: the non-dominated points joined by straight lines; below the lowest of
    them, the most robust point's value.

    Example:
        >>> pts = [(0.90, 0.40), (0.95, 0.20), (0.96, 0.30)]
        >>> frontier_at(pts, 0.93), frontier_at(pts, 0.97), frontier_at(pts, 0.5)
        (0.3, None, 0.4)
        >>> round(frontier_at(pts, 0.93, "pareto-linear"), 6)  # (0.90, 0.40) to (0.96, 0.30); (0.95, 0.20) is dominated
        0.35
    """
    if rule not in FRONTIER_RULES:
        raise ValueError(f"rule: expected one of {FRONTIER_RULES}, got {rule!r}")
    if rule == "step":
        cand = [float(y) for x, y in points if x >= clean]
        return max(cand) if cand else None
    front = pareto_points(points)
    if not front or clean > front[-1][0]:
        return None
    if clean <= front[0][0]:
        return front[0][1]
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= clean <= x1:
            return y0 + (y1 - y0) * (clean - x0) / (x1 - x0)
    return front[-1][1]  # pragma: no cover - the loop covers [front[0][0], front[-1][0]]


def shared_range(hi: Sequence[tuple[float, float]], lo: Sequence[tuple[float, float]], over: str = "all"
                 ) -> Optional[tuple[float, float]]:
    """``(L, U)``: the larger of the two lowest clean accuracies and the smaller of the two highest (None if L > U).

    ``over="all"`` (the registered rule) takes every point, ``over="pareto"`` each family's
    non-dominated points only.

    Example:
        >>> shared_range([(0.90, 0.4), (0.96, 0.1)], [(0.93, 0.3), (0.97, 0.0)])
        (0.93, 0.96)
        >>> shared_range([(0.90, 0.4)], [(0.93, 0.3)]) is None
        True
        >>> hi = [(0.96, 0.1), (0.92, 0.4), (0.88, 0.3)]   # (0.88, 0.3) is dominated by (0.92, 0.4)
        >>> shared_range(hi, [(0.85, 0.5), (0.97, 0.0)]), shared_range(hi, [(0.85, 0.5), (0.97, 0.0)], "pareto")
        ((0.88, 0.96), (0.92, 0.96))
    """
    if over not in ("pareto", "all"):
        raise ValueError(f"over: expected 'pareto' or 'all', got {over!r}")
    if not hi or not lo:
        return None
    if over == "pareto":
        hi, lo = pareto_points(hi), pareto_points(lo)
    low = max(min(x for x, _ in hi), min(x for x, _ in lo))
    up = min(max(x for x, _ in hi), max(x for x, _ in lo))
    return (float(low), float(up)) if low <= up else None


def frontier_gain(hi: Sequence[tuple[float, float]], lo: Sequence[tuple[float, float]], rule: str = "step",
                  grid: int = FRONTIER_GRID, range_over: str = "all", upper: Optional[float] = None
                  ) -> Optional[float]:
    """Mean of ``R_hi(c) - R_lo(c)`` over ``grid`` evenly spaced ``c`` in the shared range, in points.

    ``hi`` and ``lo`` are ``(clean, robust)`` fractions (each family's instances, plus the
    unregularized model where it belongs to both). None when the clean ranges do not overlap.
    ``range_over``: see :func:`shared_range`. ``upper`` (a secondary view): the range ends
    there when that is below the shared range's upper end.

    Example:
        >>> fgr = [(0.96, 0.50), (0.94, 0.60), (0.90, 0.70)]
        >>> igr = [(0.96, 0.50), (0.95, 0.52), (0.90, 0.60)]
        >>> # c = 0.90 + 0.0003 k: +10 at k = 0, +8 for k = 1..133, -2 for k = 134..166, 0 above: 1008 / 201
        >>> round(frontier_gain(fgr, igr), 4)
        5.0149
        >>> frontier_gain(fgr, igr) == frontier_gain(fgr, igr + [(0.93, 0.51), (0.91, 0.51)])  # dominated, inside
        True
        >>> # upper=0.94: c = 0.90 + 0.0002 k: +10 at k = 0, +8 for k = 1..200: 1610 / 201
        >>> round(frontier_gain(fgr, igr, upper=0.94), 4)
        8.01
    """
    check = shared_range(hi, lo, range_over)
    if check is None:
        return None
    low, up = check
    if upper is not None:
        if upper < low:
            return None
        up = min(up, upper)
    total = 0.0
    for k in range(grid):
        c = low + (up - low) * k / (grid - 1) if grid > 1 else low
        a, b = frontier_at(hi, c, rule), frontier_at(lo, c, rule)
        assert a is not None and b is not None  # c <= U <= both highest clean accuracies
        total += a - b
    return 100.0 * total / grid
