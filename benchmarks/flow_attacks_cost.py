"""What decides the cost clause of issue 17's second check per model x budget pair.

Both FlowAutoAttack versions end with the same masking check, FlowES, which spends its whole
budget (``1 + population * steps`` model queries) on every example still robust when it starts
and never fooled by it. Every example robust at the end of a suite therefore cost that suite
exactly this much in FlowES alone, a lower bound on the check's share of the suite's queries.
Per pair, the standard version then costs more than the legacy one about when it leaves as many
robust examples or more; :func:`cost_decomposition` counts, per attack seed, the pairs where the
standard version cost more by the difference in robust examples ``d = standard - legacy``.

Example:
    >>> rows = [dict(model="m", eps=0.5, attack=f"FlowAutoAttack {v}", robust=r, queries=q)
    ...         for v, r, q in [("legacy", 2, 5000), ("standard", 3, 7100)]]
    >>> cost_decomposition(rows, es_queries=2001)["costlier"]
    {1: 1}
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["cost_decomposition", "cost_lines", "suite_es_queries"]

LEGACY, STANDARD = "FlowAutoAttack legacy", "FlowAutoAttack standard"


def suite_es_queries(eps: float) -> int:
    """Model queries FlowES spends on an example it does not fool in both versions at ``eps`` (its clean check too).

    Example:
        >>> suite_es_queries(0.5)
        2001
    """
    # torch and the attacks: imported when a report is drawn, so that --help stays fast
    from torchattacks_deform.autoattack import version_members

    budgets = set()
    for version in ("standard", "legacy"):
        (kwargs,) = [kw for name, _, kw in version_members(version, eps) if name == "FlowES"]
        budgets.add(1 + int(kwargs["population"]) * int(kwargs["steps"]))
    if len(budgets) != 1:
        raise ValueError(f"FlowES: expected the same budget in both versions, got {sorted(budgets)}")
    return budgets.pop()


def cost_decomposition(rows: Sequence[Mapping[str, Any]], es_queries: int) -> dict[str, Any]:
    """One seed's pairs: ``costlier`` maps ``d`` (standard minus legacy robust examples) to the number
    of pairs where the standard version cost more model queries, ``cheaper`` the same for the pairs
    where it cost no more, ``excess_at_0`` the most it cost more at ``d = 0``; ``es_share`` maps each budget to ``(standard, legacy)``: the lower bound
    on FlowES's share of each suite's queries summed over the models (``es_queries`` per robust example)."""
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
        for a, r in ((STANDARD, new), (LEGACY, old)):
            t[a][0] += es_queries * int(r["robust"])
            t[a][1] += int(r["queries"])
    share = {eps: tuple(t[a][0] / t[a][1] if t[a][1] else float("nan") for a in (STANDARD, LEGACY))
             for eps, t in totals.items()}
    return {"costlier": dict(sorted(costlier.items())), "cheaper": dict(sorted(cheaper.items())), "es_share": share,
            "excess_at_0": excess_at_0}


def _floor_percent(fraction: float) -> str:
    """A lower bound as a percentage, rounded down ("n/a" where nothing was queried)."""
    return "n/a" if math.isnan(fraction) else f"{math.floor(100 * fraction)}%"


def _by_d(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{n} at d = {d:+d}" for d, n in counts.items()) or "none"


def cost_lines(seeds: Mapping[int, Sequence[Mapping[str, Any]]], budgets: Sequence[float]) -> list[str]:
    """The report section: per attack seed (its rows), the pairs where the standard version cost
    more or no more, by ``d``, and FlowES's share of the queries."""
    es = {eps: suite_es_queries(eps) for eps in budgets}
    if len(set(es.values())) != 1:
        raise ValueError(f"FlowES: expected one budget at every eps, got {es}")
    es_queries = next(iter(es.values()))
    lines = ["## What decides the cost clause per pair", "",
             f"Both versions end with the same masking check, FlowES, which spends all its {es_queries:,} model "
             f"queries on every example it does not fool, so each example still robust at the end cost a suite "
             f"{es_queries:,} queries in FlowES alone. Pairs by d = standard minus legacy robust examples:", "",
             "| attack seed | pairs where standard cost more | pairs where it cost no more |", "|---|---|---|"]
    decomposition = {s: cost_decomposition(rows, es_queries) for s, rows in seeds.items()}
    for s, dec in decomposition.items():
        lines.append(f"| {s} | {_by_d(dec['costlier'])} | {_by_d(dec['cheaper'])} |")
    first = next(iter(decomposition.values()))
    share = "; ".join(f"{eps:g} px: at least {_floor_percent(first['es_share'][eps][0])} of standard's and "
                      f"{_floor_percent(first['es_share'][eps][1])} of legacy's" for eps in budgets)
    costlier_d = sorted({d for dec in decomposition.values() for d in dec["costlier"]})
    lines += ["", f"FlowES's share of the queries at attack seed {next(iter(decomposition))} (robust examples x "
                  f"{es_queries:,} over all queries): {share}."]
    if costlier_d and min(costlier_d) >= 0:
        lines += ["", f"At every seed, each pair where the standard version cost more is one where it left at least as "
                      f"many robust examples as legacy (d >= 0), though not every such pair cost more; at d = 0 the members before "
                      f"the check and the examples the check fooled decide (standard cost at most "
                      f"{max(dec['excess_at_0'] for dec in decomposition.values()):,} more there, over the seeds). Per "
                      f"pair, \"at no more than its cost\" thus comes close to \"no more robust examples than legacy\", "
                      f"without the one example of slack that the robust-accuracy clause allows."]
    lines += ["", "A smaller check would make each robust example cost less, and fool fewer examples; what it would "
                  "lose on gradient-masked models is measured by `python -m benchmarks.flow_es_masking` (masking.md "
                  "beside this report)."]
    return lines + [""]
