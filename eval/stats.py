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
    - *Matching* (the paper's Table 1 rule): a family with several instances is represented by
      the instance whose clean accuracy is closest to a target's; ties go to the first instance.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from typing import Any, Optional, Sequence

__all__ = ["interpolate", "match_instances", "representatives", "seed_stats", "t_quantile", "verdict"]


def t_quantile(df: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(2), 3), round(t_quantile(10), 3)
        (4.303, 2.228)
    """
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
