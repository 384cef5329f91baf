"""``report.md`` of a harness run (``python -m eval run``), rendered from ``results.json``.

Pure rendering: no torch, no runner. The headline is the worst case over the suite
(:mod:`deform_robust.results`); then one table per attack, the paper's Table 1 and the
gradient-masking checks.

Table 1 (the paper's count of which defense wins most cells):
    Models carry a ``defense`` and a ``group`` (a Table 1 column). Within a group, a defense
    with several instances is represented by the instance whose clean accuracy is closest to
    the reference defense's (``report.reference_defense``, AT-PGD as in the paper;
    :func:`eval.stats.representatives`). A *cell* is one (group, attack, budget > 0) of the
    flow attacks; the representative(s) with the highest robust accuracy win it (every tied
    defense is counted).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

from fgr_defense.constants import REFERENCE_DEFENSE
from fgr_defense.files import atomic_write_text

from .stats import representatives

__all__ = ["PLOT_PATTERNS", "md_table", "pct", "plots_on_disk", "render_report", "table1", "write_report"]

#: The figures of a run, in the order the report shows them.
PLOT_PATTERNS = ("robust_vs_budget_*.png", "landscape.png", "flow_vs_pixel_distance.png", "samples_*.png")


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals (the report's number format).

    Example:
        >>> pct(0.12345)
        '12.35'
    """
    return f"{100 * x:.2f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline).

    Example:
        >>> print(md_table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(results: dict[str, Any], reference: str | None = None,
           exclude: Sequence[str] | None = None) -> dict[str, Any]:
    """The paper's Table 1 from results: representatives, cell winners and counts.

    Example:
        >>> res = {"config": {"report": {"reference_defense": "AT-PGD"}},
        ...        "models": [{"name": "AT-PGD", "defense": "AT-PGD", "group": "g", "clean_acc": 0.80},
        ...                   {"name": "FGR(1)", "defense": "FGR", "group": "g", "clean_acc": 0.95},
        ...                   {"name": "FGR(2)", "defense": "FGR", "group": "g", "clean_acc": 0.82}],
        ...        "cells": [{"model": m, "attack": "PGD", "budget": 1.0, "robust_acc": r}
        ...                  for m, r in [("AT-PGD", 0.5), ("FGR(1)", 0.9), ("FGR(2)", 0.6)]]}
        >>> t = table1(res)
        >>> t["selection"]["g"]["FGR"], t["counts"]["FGR"]["TOTAL"], t["counts"]["AT-PGD"]["TOTAL"]
        ('FGR(2)', 1, 0)
    """
    settings = results["config"].get("report", {})
    ref = reference or settings.get("reference_defense", REFERENCE_DEFENSE)
    skip = set(settings.get("table1_exclude", ["Standard"]) if exclude is None else exclude)
    models = [m for m in results["models"] if m["defense"] not in skip]
    groups, selection, notes = representatives(models, ref)
    defenses = list(OrderedDict.fromkeys(m["defense"] for m in models))
    cells = [c for c in results["cells"] if c.get("space", "flow") == "flow" and c["budget"] > 0]
    acc = {(c["model"], c["attack"], c["budget"]): c["robust_acc"] for c in cells}
    keys = list(OrderedDict.fromkeys((c["attack"], c["budget"]) for c in cells))
    counts = {d: {**{g: 0 for g in groups}, "TOTAL": 0} for d in defenses}
    won: list[dict[str, Any]] = []
    for g in groups:
        for attack, budget in keys:
            scores = {d: acc[(m, attack, budget)] for d, m in selection[g].items() if (m, attack, budget) in acc}
            if not scores:
                continue
            best = max(scores.values())
            winners = [d for d, s in scores.items() if s == best]
            for d in winners:
                counts[d][g] += 1
                counts[d]["TOTAL"] += 1
            won.append({"group": g, "attack": attack, "budget": budget, "winners": winners, "robust_acc": best})
    return {"reference": ref, "groups": groups, "selection": selection, "counts": counts,
            "cells": won, "notes": notes, "excluded": sorted(skip)}


def _unit(cells: Sequence[dict[str, Any]]) -> str:
    return cells[0].get("budget_unit", "px") if cells else "px"


def _attack_sections(results: dict[str, Any]) -> list[str]:
    models = results["models"]
    cells = {(c["model"], c["attack"], c["budget_index"]): c for c in results["cells"]}
    parts: list[str] = []
    for a in results["config"]["attacks"]:
        own = [c for c in results["cells"] if c["attack"] == a["name"]]
        unit = _unit(own)
        first = own[0] if own else {}
        kind = f"{first.get('attack_kind', '?')}, {first.get('space', 'flow')} space, budget norm " \
               f"{first.get('budget_norm', '?')}" if first else ""
        params = ", ".join(f"{k}={v}" for k, v in a["params"].items()) or "defaults"
        heads = [f"{b:g} {unit}" for b in a["budgets"]]
        rows = [[m["name"], pct(m["clean_acc"])]
                + [pct(cells[(m["name"], a["name"], i)]["robust_acc"]) for i in range(len(a["budgets"]))]
                for m in models]
        cost_rows = [[m["name"]] + [
            "{linf_mean:.3f} / {l2_mean:.2f} / {queries_per_sample:.0f} / {time_s:.1f}".format(
                **cells[(m["name"], a["name"], i)]) for i in range(len(a["budgets"]))] for m in models]
        parts += ["", f"## {a['name']} ({a['family']}; {kind}; {params})", "",
                  "Robust accuracy (%):", "", md_table(["model", "clean"] + heads, rows), "",
                  f"Mean perturbation size Linf ({unit}) / L2 ({unit}) over attacked examples / model queries per "
                  "attacked example / attack time (s):", "", md_table(["model"] + heads, cost_rows)]
    return parts


def _worst_section(results: dict[str, Any]) -> list[str]:
    worst = {(w["model"], w["budget"]): w for w in results["worst_case"]}
    budgets = sorted({w["budget"] for w in results["worst_case"]})
    if not budgets:
        return ["", "## Worst case over the suite", "", "No flow attack with a positive budget in this run."]
    legend = []
    for b in budgets:
        w = next(x for x in results["worst_case"] if x["budget"] == b)
        legend.append(f"- {b:g} px: {', '.join(w['attacks'])}")
    rows = [[m["name"], pct(m["clean_acc"])]
            + [pct(worst[(m["name"], b)]["robust_acc"]) if (m["name"], b) in worst else "" for b in budgets]
            for m in results["models"]]
    return ["", "## Worst case over the suite (headline)", "",
            f"Rule: {results['worst_case_rule']}. Attacks counted at each budget:", "", *legend, "",
            md_table(["model", "clean"] + [f"{b:g} px" for b in budgets], rows)]


def _table1_section(results: dict[str, Any]) -> list[str]:
    t1 = table1(results)
    groups = t1["groups"]
    parts = ["", "## Table 1: defenses with the best resistance", "",
             f"Cells are (group, flow attack, budget > 0). Defenses with several instances are represented by the "
             f"instance whose clean accuracy is closest to {t1['reference']}'s (paper, Table 1); ties in robust "
             f"accuracy count for every tied defense. Not competing (as in the paper): "
             f"{', '.join(t1['excluded']) or 'none'}.", ""]
    if t1["counts"]:
        sel_rows = [[g, d, name] for g in groups for d, name in t1["selection"][g].items()]
        parts += [md_table(["defense"] + groups + ["TOTAL"],
                           [[d] + [str(c[g]) for g in groups] + [str(c["TOTAL"])] for d, c in t1["counts"].items()]),
                  "", "Representatives:", "", md_table(["group", "defense", "model"], sel_rows)]
    else:
        parts.append("No competing defenses in this run.")
    return parts + ([""] + [f"- {n}" for n in t1["notes"]] if t1["notes"] else [])


def render_report(results: dict[str, Any], plot_files: Sequence[str] = ()) -> str:
    """The Markdown report of a results dict (``plot_files``: figure names next to the report)."""
    cfg = results["config"]
    data = results["data"]
    parts = [
        f"# Deformation robustness: {results['name']}", "",
        f"Suite `{results['suite_version']}` (torch {results['versions']['torch']}, torchattacks_deform "
        f"{results['versions']['torchattacks_deform']}); data `{data['source']}`, n = {data['n']} test examples "
        f"({data['num_classes']} classes, images {'x'.join(map(str, data['shape']))}); device `{results['device']}`; "
        f"seed {cfg['seed']}.", "",
        "Robust accuracy in % over all n examples (an example counts when it is classified correctly clean and "
        "after the attack; only clean-correct examples are attacked). Flow budgets are displacements in **pixels**; "
        "pixel-space baselines (torchattacks) are in pixel values on [0, 1].", "",
        "## Models", "",
        md_table(["model", "defense", "group", "source", "architecture", "clean acc"],
                 [[m["name"], m["defense"], m["group"], m["source"], str(m.get("architecture")), pct(m["clean_acc"])]
                  for m in results["models"]]),
    ]
    parts += _worst_section(results)
    parts += _attack_sections(results)
    parts += _table1_section(results)
    parts += ["", "## Gradient-masking checks", ""]
    if results["checks"]:
        parts += [f"- WARNING {f['message']}" for f in results["checks"]]
    else:
        parts.append("No check fired (probabilities, zero gradients, randomness, gradient-free vs gradient attacks "
                     "at equal budgets, monotonicity in the budget, budget compliance).")
    if plot_files:
        parts += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plot_files]
    return "\n".join(parts) + "\n"


def plots_on_disk(out: str | Path) -> list[str]:
    """The figures already in ``out``, in report order (kept by a resumed ``--no-plots`` run)."""
    out = Path(out)
    return [p.name for pat in PLOT_PATTERNS for p in sorted(out.glob(pat))]


def write_report(results: dict[str, Any], out: str | Path, plot_files: Sequence[str] | None = None) -> Path:
    """Write ``out/report.md``; ``plot_files`` None shows the figures found in ``out``."""
    path = Path(out) / "report.md"
    atomic_write_text(path, render_report(results, plots_on_disk(out) if plot_files is None else plot_files))
    return path
