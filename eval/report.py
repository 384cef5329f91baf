"""Outputs of a run: ``results.json``, ``results.csv``, ``worst_case.csv`` and ``report.md``.

Table 1 (the paper's count of which defense wins most cells):
    Models carry a ``defense`` (the family, e.g. ``IGR``; by default the model name without
    a trailing ``(...)``, so ``IGR(lam=1000)`` and ``IGR(lam=3000)`` are two instances of
    ``IGR``) and a ``group`` (a Table 1 column, e.g. the architecture or dataset). Within a
    group, a defense with several instances is represented by the instance whose clean
    accuracy is closest to the reference defense's (``report.reference_defense``, AT-PGD as
    in the paper; first in config order on ties). Without the reference in a group, the
    instance with the highest clean accuracy is used and the report says so. A *cell* is one
    (group, attack, budget > 0); the representative(s) with the highest robust accuracy win it
    (every tied defense is counted).
"""

from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

from .runner import atomic_write_text

__all__ = ["CSV_FIELDS", "md_table", "render_report", "representatives", "table1", "write_csv", "write_outputs"]

CSV_FIELDS = [
    "model", "defense", "group", "attack", "family", "attack_kind", "budget_index", "budget",
    "budget_norm", "n", "clean_count", "clean_acc", "n_attacked", "robust_count", "robust_acc",
    "flow_linf_mean", "flow_l2_mean", "flow_linf_max", "flow_l2_max", "queries_per_sample",
    "queries_reported", "time_s", "seed",
]
WORST_FIELDS = ["model", "defense", "group", "level", "budgets", "n", "robust_count", "robust_acc"]


def pct(x: float) -> str:
    """Format a fraction as a percentage with two decimals (the report's number format).

    Example:
        >>> pct(0.12345)
        '12.35'
    """
    return f"{100 * x:.2f}"


def representatives(models: Sequence[dict[str, Any]], reference: str
                    ) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """Per group, one model per defense: the instance closest in clean accuracy to ``reference``.

    Returns ``(groups, {group: {defense: model name}}, notes)``.

    Example:
        >>> ms = [{"name": "AT", "defense": "AT-PGD", "group": "g", "clean_acc": 0.8},
        ...       {"name": "F1", "defense": "FGR", "group": "g", "clean_acc": 0.9},
        ...       {"name": "F2", "defense": "FGR", "group": "g", "clean_acc": 0.78}]
        >>> representatives(ms, "AT-PGD")[1]
        {'g': {'AT-PGD': 'AT', 'FGR': 'F2'}}
    """
    groups = list(OrderedDict.fromkeys(m["group"] for m in models))
    defenses = list(OrderedDict.fromkeys(m["defense"] for m in models))
    selection: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    for g in groups:
        ms = [m for m in models if m["group"] == g]
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
    ref = reference or settings.get("reference_defense", "AT-PGD")
    skip = set(settings.get("table1_exclude", ["Standard"]) if exclude is None else exclude)
    models = [m for m in results["models"] if m["defense"] not in skip]
    groups, selection, notes = representatives(models, ref)
    defenses = list(OrderedDict.fromkeys(m["defense"] for m in models))
    acc = {(c["model"], c["attack"], c["budget"]): c["robust_acc"] for c in results["cells"]}
    keys = list(OrderedDict.fromkeys((c["attack"], c["budget"]) for c in results["cells"] if c["budget"] > 0))
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


def render_report(results: dict[str, Any], plot_files: Sequence[str] = ()) -> str:
    """The Markdown report of a results dict."""
    cfg = results["config"]
    models = results["models"]
    cells = {(c["model"], c["attack"], c["budget_index"]): c for c in results["cells"]}
    parts = [
        f"# Deformation robustness: {results['name']}",
        "",
        f"Suite `{results['suite_version']}` (torch {results['versions']['torch']}, "
        f"torchattacks_deform {results['versions']['torchattacks_deform']}); dataset "
        f"`{results['data']['dataset']}`, n = {results['data']['n']} test examples; device "
        f"`{results['device']}`; seed {cfg['seed']}.",
        "",
        "Robust accuracy in % over all n examples (an example counts when it is classified "
        "correctly clean and after the attack; only clean-correct examples are attacked). "
        "Budgets are flow sizes in **pixels** (Linf unless the attack says L2).",
        "",
        "## Models",
        "",
        md_table(["model", "defense", "group", "source", "architecture", "clean acc"],
                  [[m["name"], m["defense"], m["group"], m["source"], str(m.get("architecture")),
                    pct(m["clean_acc"])] for m in models]),
    ]
    for a in cfg["attacks"]:
        first = next((c for c in results["cells"] if c["attack"] == a["name"]), None)
        kind = f"{first['attack_kind']}, budget norm {first['budget_norm']}" if first else ""
        params = ", ".join(f"{k}={v}" for k, v in a["params"].items()) or "defaults"
        header = ["model", "clean"] + [f"{b:g} px" for b in a["budgets"]]
        rows = [[m["name"], pct(m["clean_acc"])]
                + [pct(cells[(m["name"], a["name"], i)]["robust_acc"]) for i in range(len(a["budgets"]))]
                for m in models]
        cost_rows = []
        for m in models:
            row = [m["name"]]
            for i in range(len(a["budgets"])):
                c = cells[(m["name"], a["name"], i)]
                row.append(f"{c['flow_linf_mean']:.3f} / {c['flow_l2_mean']:.2f} / "
                           f"{c['queries_per_sample']:.0f} / {c['time_s']:.1f}")
            cost_rows.append(row)
        parts += [
            "", f"## {a['name']} ({a['family']}; {kind}; {params})", "",
            "Robust accuracy (%):", "", md_table(header, rows), "",
            "Mean flow norm Linf (px) / L2 (px) over attacked examples / queries per attacked "
            "example / attack time (s):", "",
            md_table(["model"] + [f"{b:g} px" for b in a["budgets"]], cost_rows),
        ]
    levels = sorted({w["level"] for w in results["worst_case"]})
    legend = []
    for lvl in levels:
        w = next(x for x in results["worst_case"] if x["level"] == lvl)
        legend.append(f"- level {lvl}: " + ", ".join(f"{k} {v:g} px" for k, v in w["budgets"].items()))
    worst = {(w["model"], w["level"]): w for w in results["worst_case"]}
    parts += [
        "", "## Worst case over the suite", "",
        f"Rule: {results['worst_case_rule']}.", "", *legend, "",
        md_table(["model", "clean"] + [f"level {lvl}" for lvl in levels],
                  [[m["name"], pct(m["clean_acc"])] + [pct(worst[(m["name"], lvl)]["robust_acc"]) for lvl in levels]
                   for m in models]),
    ]
    t1 = results.get("table1") or table1(results)
    groups = t1["groups"]
    sel_rows = [[g, d, name] for g in groups for d, name in t1["selection"][g].items()]
    parts += [
        "", "## Table 1: defenses with the best resistance", "",
        f"Cells are (group, attack, budget > 0). Defenses with several instances are represented "
        f"by the instance whose clean accuracy is closest to {t1['reference']}'s (paper, Table 1); "
        f"ties in robust accuracy count for every tied defense. Not competing (as in the "
        f"paper): {', '.join(t1.get('excluded', [])) or 'none'}.", "",
    ]
    if t1["counts"]:
        parts += [
            md_table(["defense"] + groups + ["TOTAL"],
                      [[d] + [str(c[g]) for g in groups] + [str(c["TOTAL"])] for d, c in t1["counts"].items()]),
            "", "Representatives:", "", md_table(["group", "defense", "model"], sel_rows),
        ]
    else:
        parts.append("No competing defenses in this run.")
    if t1["notes"]:
        parts += [""] + [f"- {n}" for n in t1["notes"]]
    parts += ["", "## Gradient-masking checks", ""]
    if results["checks"]:
        parts += [f"- WARNING {f['message']}" for f in results["checks"]]
    else:
        parts.append("No check fired (probabilities, zero gradients, randomness, ES vs gradient "
                     "attacks, monotonicity in the budget, budget compliance).")
    if plot_files:
        parts += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plot_files]
    return "\n".join(parts) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                         for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def write_outputs(results: dict[str, Any], out: str | Path, plot_files: Sequence[str] = (),
                  budget_plots: bool = True) -> dict[str, Any]:
    """Write results.json, results.csv, worst_case.csv, report.md (and budget plots).

    Returns the results dict with ``table1`` and ``plots`` added (as written).
    """
    out = Path(out)
    results = dict(results)
    results["table1"] = table1(results)
    files = list(plot_files)
    if budget_plots:
        from .plots import budget_plots as draw

        files = draw(results, out) + files
    results["plots"] = [Path(f).name for f in files]
    by_model = {m["name"]: m for m in results["models"]}
    rows = [{**c, "defense": by_model[c["model"]]["defense"], "group": by_model[c["model"]]["group"]}
            for c in results["cells"]]
    write_csv(out / "results.csv", rows, CSV_FIELDS)
    write_csv(out / "worst_case.csv",
              [{**w, "defense": by_model[w["model"]]["defense"], "group": by_model[w["model"]]["group"]}
               for w in results["worst_case"]], WORST_FIELDS)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, sort_keys=False) + "\n")
    atomic_write_text(out / "report.md", render_report(results, files))
    return results
