"""The report of ``python -m benchmarks.flow_attacks --select-restarts``: the split of FlowAPGD's steps into runs.

On held-out images, FlowAPGD-CE's 100 steps per example as each split of runs x steps (the rule:
the lowest robust count summed over the models and budgets; ties: fewer runs), then FlowAPGD-T's
splits judged inside the suite (examples robust to the chosen FlowAPGD-CE, the split and StAdv;
the lowest total). The comparison's report is :mod:`benchmarks.flow_attacks_report`.
"""

from __future__ import annotations

from typing import Any, Mapping

from .flow_attacks_report import _cells, _resumed

__all__ = ["render_selection", "selection_totals", "suite_counts"]


def selection_totals(result: Mapping[str, Any]) -> dict[str, int]:
    """Total robust count of each FlowAPGD-CE split over the models and budgets of ``--select-restarts``."""
    totals: dict[str, int] = {}
    for r in result["rows"]:
        if r["attack"].startswith("FlowAPGD-CE "):
            totals[r["attack"]] = totals.get(r["attack"], 0) + int(r["robust"])
    return totals


def suite_counts(result: Mapping[str, Any], ce: str) -> dict[tuple[str, float, str], int]:
    """Per ``(model, budget, FlowAPGD-T split)``: the examples robust to ``ce``, the split and StAdv."""
    cell, models, budgets, attacks = _cells(result)
    out = {}
    for m in models:
        for eps in budgets:
            for t in (a for a in attacks if a.startswith("FlowAPGD-T ")):
                masks = [cell[(m, eps, a)]["robust_mask"] for a in (ce, t, "StAdv")]
                out[(m, eps, t)] = sum(all(v) for v in zip(*masks))
    return out


def render_selection(result: Mapping[str, Any]) -> str:
    """The Markdown report of ``--select-restarts``: robust counts per split, the chosen one."""
    cell, models, budgets, every = _cells(result)
    totals = selection_totals(result)
    attacks = [a for a in every if a in totals]
    chosen = min(attacks, key=lambda a: (totals[a], attacks.index(a)))
    lo, hi = result["images"]
    lines = ["# The split of FlowAPGD-CE's 100 steps into runs (held-out images)", "",
             f"- Command: `{result['command']}` at revision `{result['git_revision']}`; {result['machine']}; wall "
             f"time {result['wall_s']:.0f} s{_resumed(result)}",
             f"- MNIST-5k test images {lo}-{hi - 1} ({result['n']} images; the comparison in report.md uses images "
             f"0-119), {len(models)} models x budgets {', '.join(f'{b:g}' for b in budgets)} px; each row is "
             f"FlowAPGD-CE with 100 steps per example as runs x steps, from random starts (seeded).",
             "- Rule: the split with the lowest robust count summed over the models and budgets (ties: fewer runs).",
             "", "| model | budget | " + " | ".join(attacks) + " |", "|---|---|" + "---|" * len(attacks)]
    for m in models:
        for eps in budgets:
            lines.append(f"| {m} | {eps:g} | " + " | ".join(str(cell[(m, eps, a)]["robust"]) for a in attacks) + " |")
    lines += ["| **total** | | " + " | ".join(f"**{totals[a]}**" for a in attacks) + " |", "",
              f"Chosen: **{chosen}** (FlowAutoAttack's standard version runs {result['standard_apgd_ce']}).", ""]
    ts = [a for a in every if a.startswith("FlowAPGD-T ")]
    if ts:
        suite = suite_counts(result, chosen)
        t_totals = {t: sum(v for k, v in suite.items() if k[2] == t) for t in ts}
        t_chosen = min(ts, key=lambda t: (t_totals[t], ts.index(t)))
        lines += ["## FlowAPGD-T inside the suite", "",
                  f"Examples robust to {chosen}, the FlowAPGD-T split (targets x steps, or targets x runs x steps; "
                  f"99 steps per example) and StAdv, per model and budget; the rule: the lowest total (ties: the "
                  f"first listed).", "", "| model | budget | " + " | ".join(ts) + " |", "|---|---|" + "---|" * len(ts)]
        for m in models:
            for eps in budgets:
                lines.append(f"| {m} | {eps:g} | " + " | ".join(str(suite[(m, eps, t)]) for t in ts) + " |")
        lines += ["| **total** | | " + " | ".join(f"**{t_totals[t]}**" for t in ts) + " |", "",
                  f"Chosen: **{t_chosen}** (FlowAutoAttack's standard version runs "
                  f"{result.get('standard_apgd_t', 'FlowAPGD-T 3x33')}).", ""]
    return "\n".join(lines)
