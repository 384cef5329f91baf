"""What decides the cost clause of issue 17's second check per model x budget pair.

Each FlowAutoAttack version ends with a gradient-free check (standard: FlowSquare; legacy:
FlowES) that spends its whole budget on every example still robust when it starts and never
fooled by it. Every example robust at the end of a suite therefore cost that suite exactly the
check's budget in the check alone, a lower bound on the check's share of the suite's queries
(:func:`check_queries`). Per pair, which version costs more then follows the robust counts and
the two budgets; :func:`cost_decomposition` counts, per attack seed, the pairs where the standard
version cost more by the difference in robust examples ``d = standard - legacy``.

Example:
    >>> rows = [dict(model="m", eps=0.5, attack=f"FlowAutoAttack {v}", robust=r, queries=q)
    ...         for v, r, q in [("legacy", 2, 5000), ("standard", 3, 7100)]]
    >>> cost_decomposition(rows, {"standard": 2001, "legacy": 2001})["costlier"]
    {1: 1}
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["LEGACY", "LEGACY_CHECK_QUERIES", "STANDARD", "check_queries", "cost_decomposition", "cost_lines"]

#: The two suites' row names in the comparison's results.
LEGACY, STANDARD = "FlowAutoAttack legacy", "FlowAutoAttack standard"
#: The checks' budgets of results made before they were stored (both versions ended with FlowES, 2,001 queries).
LEGACY_CHECK_QUERIES = {"standard": 2001, "legacy": 2001}


def check_queries(version: str, eps: float) -> tuple[str, int]:
    """The gradient-free check that ends ``version`` at ``eps`` (Linf), and the model queries it
    spends on an example it does not fool (its clean check included).

    Example:
        >>> check_queries("standard", 0.5), check_queries("legacy", 0.5)
        (('FlowSquare', 1000), ('FlowES', 2001))
    """
    # torch and the attacks: imported when a report is drawn, so that --help stays fast
    from torchattacks_deform.autoattack import version_members

    name, _, kwargs = version_members(version, eps)[-1]
    if name == "FlowES":
        return name, 1 + int(kwargs["population"]) * int(kwargs["steps"])
    if name == "FlowSquare":
        return name, int(kwargs["queries"])
    raise ValueError(f"version {version!r}: expected FlowES or FlowSquare as its last member, got {name}")


def cost_decomposition(rows: Sequence[Mapping[str, Any]], checks: Mapping[str, int]) -> dict[str, Any]:
    """One seed's pairs: ``costlier`` maps ``d`` (standard minus legacy robust examples) to the number
    of pairs where the standard version cost more model queries, ``cheaper`` the same for the pairs
    where it cost no more, ``excess_at_0`` the most it cost more at ``d = 0``; ``check_share`` maps
    each budget to ``(standard, legacy)``: the lower bound on the check's share of each suite's
    queries summed over the models (``checks[version]`` queries per robust example)."""
    cell = {(r["model"], r["eps"], r["attack"]): r for r in rows if r["attack"] in (LEGACY, STANDARD)}
    pairs = sorted({(m, eps) for m, eps, _ in cell}, key=lambda p: (p[1], p[0]))
    costlier: dict[int, int] = {}
    cheaper: dict[int, int] = {}
    excess_at_0 = 0
    totals: dict[float, dict[str, list[int]]] = {}
    for m, eps in pairs:
        new, old = cell[(m, eps, STANDARD)], cell[(m, eps, LEGACY)]
        d = int(new["robust"]) - int(old["robust"])
        side = costlier if new["queries"] > old["queries"] else cheaper
        side[d] = side.get(d, 0) + 1
        if d == 0:
            excess_at_0 = max(excess_at_0, int(new["queries"]) - int(old["queries"]))
        t = totals.setdefault(eps, {a: [0, 0] for a in (STANDARD, LEGACY)})
        for a, r, version in ((STANDARD, new, "standard"), (LEGACY, old, "legacy")):
            t[a][0] += checks[version] * int(r["robust"])
            t[a][1] += int(r["queries"])
    share = {eps: tuple(t[a][0] / t[a][1] if t[a][1] else float("nan") for a in (STANDARD, LEGACY))
             for eps, t in totals.items()}
    return {"costlier": dict(sorted(costlier.items())), "cheaper": dict(sorted(cheaper.items())),
            "check_share": share, "excess_at_0": excess_at_0}


def _floor_percent(fraction: float) -> str:
    """A lower bound as a percentage, rounded down ("n/a" where nothing was queried)."""
    return "n/a" if math.isnan(fraction) else f"{math.floor(100 * fraction)}%"


def _by_d(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{n} at d = {d:+d}" for d, n in counts.items()) or "none"


def cost_lines(seeds: Mapping[int, Sequence[Mapping[str, Any]]], budgets: Sequence[float],
               checks: Mapping[str, Any] | None = None) -> list[str]:
    """The report section: per attack seed (its rows), the pairs where the standard version cost
    more or no more, by ``d``, and the checks' share of the queries. ``checks`` maps each version
    to ``[name, queries]`` of its check, as the run stored it (None: :data:`LEGACY_CHECK_QUERIES`)."""
    stored = checks or {v: ["FlowES", q] for v, q in LEGACY_CHECK_QUERIES.items()}
    budget = {v: int(stored[v][1]) for v in ("standard", "legacy")}
    name = {v: str(stored[v][0]) for v in ("standard", "legacy")}
    same = name["standard"] == name["legacy"] and budget["standard"] == budget["legacy"]
    what = (f"the same gradient-free check, {name['legacy']}, which spends all its {budget['legacy']:,} model queries"
            if same else f"a gradient-free check that spends all its model queries ({name['standard']}: "
            f"{budget['standard']:,} in standard, {name['legacy']}: {budget['legacy']:,} in legacy)")
    lines = ["## What decides the cost clause per pair", "",
             f"Both versions end with {what} on every example it does not fool, so each example still robust at the "
             f"end cost its suite that much in the check alone. Pairs by d = standard minus legacy robust examples:",
             "", "| attack seed | pairs where standard cost more | pairs where it cost no more |", "|---|---|---|"]
    decomposition = {s: cost_decomposition(rows, budget) for s, rows in seeds.items()}
    for s, dec in decomposition.items():
        lines.append(f"| {s} | {_by_d(dec['costlier'])} | {_by_d(dec['cheaper'])} |")
    first = next(iter(decomposition.values()))
    share = "; ".join(f"{eps:g} px: at least {_floor_percent(first['check_share'][eps][0])} of standard's and "
                      f"{_floor_percent(first['check_share'][eps][1])} of legacy's" for eps in budgets)
    costlier_d = sorted({d for dec in decomposition.values() for d in dec["costlier"]})
    lines += ["", f"The checks' share of the queries at attack seed {next(iter(decomposition))} (robust examples x "
                  f"the check's budget over all queries): {share}."]
    if costlier_d and min(costlier_d) >= 0:
        lines += ["", f"At every seed, each pair where the standard version cost more is one where it left at least as "
                      f"many robust examples as legacy (d >= 0), though not every such pair cost more; at d = 0 the "
                      f"members before the check and the examples the check fooled decide (standard cost at most "
                      f"{max(dec['excess_at_0'] for dec in decomposition.values()):,} more there, over the seeds)."]
    if not costlier_d:
        lines += ["", "At every seed the standard version cost no more than legacy on every pair."]
    lines += ["", "What the checks find on gradient-masked models, by their budgets: `python -m "
                  "benchmarks.flow_es_masking` (masking.md beside this report)."]
    return lines + [""]
