"""Per-seed fill-in of a family's grid: a rule fixed before the run, applied to clean accuracy only.

A fixed grid chosen on calibration seeds cannot guarantee "no gap over ``max_gap`` between
neighbouring clean accuracies" on every main seed: on a family's cliff one weight's clean
accuracy varies by about +-2 points from seed to seed (issue 15). With ``training.fill_in`` in a
preset, after the grid of a seed is trained the pipeline measures every model's clean accuracy
on the run's test images, and while the family's largest gap (Standard included, as in
:func:`eval.analysis.coverage`) is over ``max_gap``, trains one more instance at the mean of the
weights of the gap's two neighbours, up to ``max_extra`` per family and seed. The rule reads
clean accuracy only, never a robust accuracy, and treats every family alike; the added models
are listed in the report.

Preset keys (``training.fill_in``): ``max_gap`` (fraction, default: ``analysis.coverage.max_gap``),
``max_extra`` (models per family and seed, default 3), ``resolution`` (weights are rounded to
it, default 0.1), ``families`` (default: ``analysis.families``), ``subdivide`` (default false:
when the neighbours' mean weight is already trained, as on a stretch where clean accuracy is not
monotone in the weight, train the midpoint of the widest untried stretch between trained weights
inside the gap's weight interval instead of moving on).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from .analysis import ACC_RESOLUTION

__all__ = ["fill_in_options", "next_fill_weight"]


def next_fill_weight(points: Sequence[tuple[float, float]], max_gap: float, trained: Sequence[float],
                     resolution: float = 0.1, subdivide: bool = False) -> Optional[float]:
    """The weight to train next for one family and seed, or None when no gap is over ``max_gap``.

    ``points`` are ``(weight, clean accuracy)`` of the family's models and the zero-weight model
    (weight 0). Sorted by clean accuracy, the gaps between neighbours over ``max_gap`` are taken
    largest first; the first whose neighbours' mean weight (rounded to ``resolution``) is not in
    ``trained`` is the answer. With ``subdivide``, a gap whose mean weight is trained gives the
    midpoint of the widest stretch between consecutive trained weights inside its weight interval
    (the first untried one, widest first).

    Example:
        >>> pts = [(0, 0.963), (15, 0.951), (21, 0.950), (27, 0.924), (30, 0.920)]
        >>> next_fill_weight(pts, 0.02, [15, 21, 27, 30])
        24.0
        >>> next_fill_weight(pts + [(24, 0.940)], 0.02, [15, 21, 24, 27, 30]) is None
        True
        >>> pts = [(0, 0.925), (35, 0.911), (36, 0.915), (37, 0.888)]  # 36 is trained: 35.5 or 36.5
        >>> next_fill_weight(pts, 0.02, [35, 36, 37]) is None, next_fill_weight(pts, 0.02, [35, 36, 37], subdivide=True)
        (True, 35.5)
    """
    ordered = sorted(points, key=lambda p: p[1])
    gaps = sorted(((hi[1] - lo[1], lo[0], hi[0]) for lo, hi in zip(ordered, ordered[1:])), reverse=True)
    have = {round(w / resolution) for w in trained}
    for gap, w_lo, w_hi in gaps:
        if gap <= max_gap + ACC_RESOLUTION:  # as eval.analysis.meets_coverage: a gap of exactly max_gap meets it
            return None
        stretches = [(w_lo, w_hi)]  # the neighbours' mean first; then, with subdivide, inside the gap widest first
        if subdivide:
            lo, hi = min(w_lo, w_hi), max(w_lo, w_hi)
            cuts = sorted({lo, hi, *(t for t in trained if lo < t < hi)})
            stretches += sorted(zip(cuts, cuts[1:]), key=lambda ab: ab[1] - ab[0], reverse=True)
        for a, b in stretches:
            w = round((a + b) / 2 / resolution) * resolution
            if w > 0 and round(w / resolution) not in have:
                return float(round(w, 10))
    return None


def fill_in_options(training: Mapping[str, Any], analysis: Mapping[str, Any], source: str) -> Optional[dict[str, Any]]:
    """``training.fill_in`` with its defaults, or None when the preset has none (raises ValueError naming the key)."""
    raw = training.get("fill_in")
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping) or set(raw) - {"max_gap", "max_extra", "resolution", "families", "subdivide"}:
        raise ValueError(f"{source}: training.fill_in: expected true or a mapping with keys max_gap, max_extra, "
                         f"resolution, families, subdivide, got {raw!r}")
    opts = {"max_gap": raw.get("max_gap", (analysis.get("coverage") or {}).get("max_gap")),
            "max_extra": raw.get("max_extra", 3), "resolution": raw.get("resolution", 0.1),
            "families": list(raw.get("families", analysis.get("families") or [])),
            "subdivide": raw.get("subdivide", False)}
    if not isinstance(opts["subdivide"], bool):
        raise ValueError(f"{source}: training.fill_in.subdivide: expected true or false, got {opts['subdivide']!r}")
    for key, lo, hi in (("max_gap", 0.0, 1.0), ("resolution", 0.0, math.inf)):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v < hi:
            raise ValueError(f"{source}: training.fill_in.{key}: expected a number in ({lo:g}, {hi:g}), got {v!r}")
    if isinstance(opts["max_extra"], bool) or not isinstance(opts["max_extra"], int) or opts["max_extra"] < 1:
        raise ValueError(f"{source}: training.fill_in.max_extra: expected an int >= 1, got {opts['max_extra']!r}")
    if not opts["families"]:
        raise ValueError(f"{source}: training.fill_in.families: expected the families to fill, got none "
                         f"(analysis.families is empty)")
    return opts
