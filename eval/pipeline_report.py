"""``report.md`` and the CSV/JSON outputs of a pipeline (:mod:`eval.pipeline`). Pure rendering: no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from deform_robust.results import CSV_FIELDS, WORST_FIELDS, write_csv
from fgr_defense.constants import REFERENCE_DEFENSE
from fgr_defense.files import atomic_write_text

from .analysis import WORST, analyze, meets_coverage
from .report import md_table, pct, render_report

__all__ = ["RESULTS_FORMAT", "format_summary", "read_pipeline_results", "reanalyze", "render_pipeline_report",
           "write_pipeline_outputs"]

#: Format name of a pipeline's ``results.json``.
RESULTS_FORMAT = "deform-robust-pipeline/3"
#: Earlier formats that ``python -m eval report`` still reads (their analysis is recomputed).
READ_FORMATS = (RESULTS_FORMAT, "deform-robust-pipeline/2")

_CAPTIONS = {"frontier.png": "robust vs clean accuracy of every instance (frontier)",
             "matched.png": "the matched instances' robust accuracy vs budget, mean and 95% interval over seeds",
             "matching.png": "clean accuracy of every instance vs its weight, and the matched ones"}


def _pm(st: dict[str, Any], scale: float = 1.0, sign: bool = False) -> str:
    if st.get("mean") is None:
        return "n/a"
    m = scale * st["mean"]
    text = f"{m:+.2f}" if sign else f"{m:.2f}"
    if st.get("ci95"):
        lo, hi = (scale * v for v in st["ci95"])
        if scale == 100:  # an accuracy: its interval is shown within [0, 100]
            lo, hi = max(lo, 0.0), min(hi, 100.0)
        text += f" [{lo:+.2f}, {hi:+.2f}]" if sign else f" [{lo:.2f}, {hi:.2f}]"
    return text


def _seeds(values: Sequence[Optional[float]]) -> str:
    return ", ".join("n/a" if v is None else f"{v:+.2f}" for v in values)


_RULE_TEXT = {"step": "frontier: best model at least as accurate (registered)",
              "pareto-linear": "frontier: non-dominated models joined by lines (second fair rule)",
              "step-pareto-range": "registered frontier, shared range over non-dominated models only",
              "step-own-range": "registered frontier, range cut at the lower of the families' own top models",
              "interpolate": "each instance vs the baseline's polyline (the withdrawn first rule)"}


def _verdict_rows(a: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("attacks", s) for s in a["frontier"]["summary"]] + [(WORST, s) for s in a["frontier"]["summary_worst"]]


def _robustness(a: dict[str, Any], pair: str, over: str, registered: str) -> str:
    """The registered verdict checked against the second fair rule: it stands, or it is no verdict."""
    other = next((x for x in a.get("secondary", []) if x["rule"] == "pareto-linear" and x["pair"] == pair
                  and x["over"] == over), None)
    if other is None:
        return ""
    return "stands" if other["verdict"] == registered else f"**no verdict** (pareto-linear: {other['verdict']})"


#: Secondary views whose disagreement the verdict table names (the second fair rule has its own column; the
#: withdrawn first rule is not a fair one).
_OTHER_VIEWS = {"step-pareto-range": "non-dominated range", "step-own-range": "range cut at the lower top model"}


def _disagreements(a: dict[str, Any], pair: str, over: str, registered: str) -> str:
    """The other fair views and the leave-one-out drops that give another verdict than the registered one."""
    said = [f"{_OTHER_VIEWS[x['rule']]}: {x['verdict']}" for x in a.get("secondary", [])
            if x["rule"] in _OTHER_VIEWS and x["pair"] == pair and x["over"] == over and x["verdict"] != registered]
    inf = next((r for r in a.get("influence", []) if r["pair"] == pair and r["over"] == over), None)
    if inf and inf["flips"]:
        said.append(f"leave one model out: {len(inf['flips'])} of {inf['models']} drops")
    return "; ".join(said) or "none"


def _verdict_section(res: dict[str, Any]) -> list[str]:
    a = res["analysis"]
    crit = res["preset"]["analysis"].get("criterion")
    parts = ["## Verdict", ""]
    if crit:
        parts += [f"**Registered endpoint** (written in the preset before the run): {crit.strip()}", ""]
    rows = []
    for label, s in _verdict_rows(a):
        paper = f"{s['paper'][1]:+.1f} ({s['paper'][0]:+.1f} to {s['paper'][2]:+.1f})" if s.get("paper") else ""
        rows.append([s["pair"], label, _seeds(s["per_seed"]), _pm(s, sign=True), f"**{s['verdict']}**",
                     _robustness(a, s["pair"], label, s["verdict"]),
                     _disagreements(a, s["pair"], label, s["verdict"]), f"{s['cells_positive']}/{s['cells_defined']}",
                     paper])
    parts += [md_table(["pair", "over", "per-seed mean gain (points)", "mean [95% CI]", "verdict",
                        "under the second fair rule", "other views that disagree (not the endpoint)", "cells > 0",
                        "paper: mean (min to max)"], rows), ""]
    zero = a.get("zero_weight")
    parts += ["Rule: for a seed, an attack × budget cell and a family, the points are the family's instances"
              + (f" plus the {zero} model (every family at weight 0)" if zero else "")
              + "; the family's frontier R(c) is the best robust accuracy among the points with clean accuracy at "
              "least c (dominated points never count). The gain of a cell is the mean of R_hi(c) - R_lo(c) over 201 "
              "evenly spaced c between the larger of the two families' lowest clean accuracies and the smaller of "
              "their highest (over all their models). A seed's gain is the mean over the attack × budget cells (row `attacks`) or the "
              "worst-case budgets (row `worst case`); the interval is a 95% Student-t interval over seeds. "
              "The column *under the second fair rule* recomputes the verdict with the non-dominated models joined "
              "by straight lines: where it differs, the data do not decide and there is no verdict. The column "
              "*other views that disagree* names the secondary views below (the non-dominated range, the range cut at "
              "the lower of the two families' top models) and the single-model drops that give another verdict: "
              "where it is not 'none', the verdict is fragile.", ""]
    return parts


def _frontier_section(res: dict[str, Any]) -> list[str]:
    a = res["analysis"]
    pairs = [f"{hi} - {lo}" for hi, lo in a["pairs"]]
    gain = {(g["pair"], g["attack"], g["budget"]): g for g in a["frontier"]["gains"]}
    rows = [[attack, f"{budget:g}"] + [_pm(gain[(p, attack, budget)], sign=True)
                                       + f" ({gain[(p, attack, budget)]['n']}/{len(a['seeds'])})" for p in pairs]
            for attack, budget in a["metrics"]]
    parts = ["## Frontier: robust vs clean accuracy", ""]
    if "frontier.png" in res["figures"]:
        parts += ["![frontier](frontier.png)", ""]
    parts += ["Frontier gain in points under the registered rule, mean [95% CI] over seeds (seeds where it is "
              "defined):", "", md_table(["metric", "budget (px)"] + pairs, rows), ""]
    return parts


def _coverage_section(res: dict[str, Any]) -> list[str]:
    a = res["analysis"]
    cov = a.get("coverage")
    if not cov:
        return []
    need = res["preset"]["analysis"].get("coverage") or {}
    min_drop, max_gap = need.get("min_drop"), need.get("max_gap")
    rows = []
    for c in cov:
        ok = ""
        if min_drop is not None and max_gap is not None and c["drop"] is not None:
            ok = "yes" if meets_coverage(c, min_drop, max_gap) else "**no**"
        rows.append([c["family"], str(c["seed"]), str(c["instances"]), pct(c["top"]) if c["top"] is not None else "",
                     pct(c["lowest"]) if c["lowest"] is not None else "",
                     f"{100 * c['drop']:.1f}" if c["drop"] is not None else "",
                     f"{100 * c['max_gap']:.1f}" if c["max_gap"] is not None else "", ok])
    head = "## Coverage of clean accuracy"
    text = (f"Each family with the {a.get('zero_weight')} model, per seed: the drop below it and the largest gap "
            "between neighbouring clean accuracies (points)")
    if min_drop is not None and max_gap is not None:
        text += f"; required: a drop of at least {100 * min_drop:g} and no gap over {100 * max_gap:g}"
    filled = [f"{t['model']} seed {t['seed']}" for t in res.get("training", []) if t.get("fill_in")]
    if filled:
        text += (f". Added by the per-seed fill-in rule (training.fill_in, eval/fill_in.py: clean accuracy only): "
                 f"{', '.join(filled)}")
    return [head, "", text + ".", "", md_table(["family", "seed", "instances", "top %", "lowest %", "drop",
                                               "largest gap", "meets the requirement"], rows), ""]


def _secondary_section(res: dict[str, Any]) -> list[str]:
    sec = res["analysis"].get("secondary")
    if not sec:
        return []
    rows = [[_RULE_TEXT.get(s["rule"], s["rule"]), s["pair"], s["over"], _seeds(s["per_seed"]), _pm(s, sign=True),
             s["verdict"]] for s in sec]
    return ["### Secondary views (not the endpoint)", "",
            "The same summaries under the second fair rule (the registered rule's frontiers joined by straight lines "
            "between non-dominated models), with the shared range taken over the non-dominated models only, "
            "with the range cut at the lower of the two families' own most accurate models (above that cut one "
            "family has a model and the other only Standard), "
            "and under the rule of the withdrawn first report (each instance against "
            "the baseline's polyline through every baseline model, Standard included; instances outside the "
            "baseline's range not counted; dominated models bend the line).", "",
            md_table(["rule", "pair", "over", "per-seed mean gain (points)", "mean [95% CI]", "verdict"], rows), ""]


def _influence_section(res: dict[str, Any]) -> list[str]:
    inf = res["analysis"].get("influence")
    if not inf:
        return []
    need = res["preset"]["analysis"].get("coverage") or {}

    def still(f: dict[str, Any]) -> str:
        if f["max_gap"] is None or need.get("min_drop") is None or need.get("max_gap") is None:
            return ""
        return ("; the coverage requirement still met" if meets_coverage(f, need["min_drop"], need["max_gap"])
                else "; the coverage requirement then fails")

    rows, flips = [], []
    for r in inf:
        span = ("n/a" if r["mean_min"] is None else f"{r['mean_min']:+.2f} to {r['mean_max']:+.2f}")
        rows.append([r["pair"], r["over"], r["verdict"], str(r["models"]), span, str(len(r["flips"]))])
        flips += [f"- {r['pair']} ({r['over']}) without {f['model']} of seed {f['seed']}: {_pm(f, sign=True)}, "
                  f"{f['verdict']}; its family's largest gap on that seed becomes "
                  + ("n/a" if f["max_gap"] is None else f"{100 * f['max_gap']:.1f}") + " points" + still(f)
                  for f in r["flips"]]
    return ["### Leave one model out (not the endpoint)", "",
            "The registered summary with each model of the pair's two families (not Standard) left out of its seed "
            "in turn: the range of the mean (points) and the drops that change the verdict. A verdict that one "
            "model carries is fragile. A drop after which the coverage requirement fails leaves a comparison the "
            "rule was not meant to make; one after which it is still met is as fair as the run itself.", "",
            md_table(["pair", "over", "verdict with every model", "models left out in turn", "mean (points)",
                      "drops that change the verdict"], rows), "", *flips, *([""] if flips else [])]


def _matched_section(res: dict[str, Any]) -> list[str]:
    m = res["analysis"]["matched"]
    seeds = res["analysis"]["seeds"]
    parts = [f"## Matched to {m['reference']}'s clean accuracy (the paper's Table 1 rule)", ""]
    rows = []
    for s in seeds:
        row = [str(s), pct(m["targets"][str(s)]) if m["targets"][str(s)] is not None else "n/a"]
        for f in m["families"]:
            r = next(x for x in m["selection"] if x["seed"] == s and x["family"] == f)
            row.append(f"{r['model']} ({pct(r['clean_acc'])})")
        rows.append(row)
    parts += [md_table(["seed", f"{m['reference']} clean %"] + m["families"], rows), ""]
    cell = {(c["attack"], c["budget"], c["family"]): c for c in m["cells"]}
    gain = {(g["attack"], g["budget"], g["pair"]): g for g in m["gains"]}
    pairs = list(dict.fromkeys(g["pair"] for g in m["gains"]))
    rows = []
    for attack, budget in res["analysis"]["metrics"]:
        rows.append([attack, f"{budget:g}"] + [_pm(cell[(attack, budget, f)], scale=100) for f in m["families"]]
                    + [_pm(gain[(attack, budget, p)], sign=True) for p in pairs])
    parts += ["Robust accuracy (%) of the matched instances, mean [95% CI, shown within 0-100] over seeds, and their "
              "differences (points):", "", md_table(["metric", "budget (px)"] + m["families"] + pairs, rows), ""]
    parts += [f"![{f[:-4]}]({f})" for f in ("matched.png", "matching.png") if f in res["figures"]]
    return parts + [""]


def _strength_section(res: dict[str, Any]) -> list[str]:
    rows = [[f"{r['a']} vs {r['b']}", f"{r['budget']:g}", f"{100 * r['mean_a']:.2f}", f"{100 * r['mean_b']:.2f}",
             f"{r['mean_gap']:+.2f}", f"{r['pairs'] - r['weaker']}/{r['pairs']}", f"{r['max_excess']:.2f}"]
            for r in res.get("strength") or []]
    if not rows:
        return []
    return ["## Attack strength check", "",
            "Is the first attack at least as strong as the second on every model of every seed (lower robust "
            "accuracy is stronger)?", "",
            md_table(["attacks", "budget (px)", "mean robust % (first)", "mean robust % (second)",
                      "mean gap (points)", "models where first <= second", "largest excess of first (points)"], rows),
            ""]


def _table1_section(res: dict[str, Any]) -> list[str]:
    t1 = res["table1"]
    rows = [[d, str(c["TOTAL"])] for d, c in t1["counts"].items()]
    return [f"## Table 1 count (seed {res['header']['main_seed']})", "",
            f"Cells won out of {len(t1['cells'])} (flow attack × budget; ties count for every tied defense); "
            f"representatives matched to {t1['reference']}. The paper's Table 1 (MNIST: AT-PGD 3, FGR+RS+AT-PGD 5; "
            "CIFAR-10: FGR+RS 2, FGR+RS+AT-PGD 6; CIFAR-100: FGR+RS 6, FGR+RS+AT-PGD 2) counts its own cells.", "",
            md_table(["defense", "cells won"], rows), ""]


def _anchor_section(res: dict[str, Any]) -> list[str]:
    a = res["preset"]["anchor"]
    rows = [[r["label"], r["model"], f"{r['clean']:.2f}", f"{r['adv']:.2f}",
             _pm(r["our_clean"], scale=100) if r["our_clean"] else "n/a",
             _pm(r["our_adv"], scale=100) if r["our_adv"] else "n/a"] for r in res["anchor"]]
    return [f"## Anchor: {a['title']}", "", a["description"].strip(), "",
            md_table(["setting", "our model", "published clean %", "published adv. %", "our clean % [95% CI]",
                      "our adv. % [95% CI]"], rows), ""]


def _setup_section(res: dict[str, Any]) -> list[str]:
    pre = res["preset"]
    sched = pre["training"].get("schedule")
    rows = []
    for t in res["training"]:
        spec = t["spec"]
        lam = f"{spec['lam']:g} (batch {spec.get('lam_batch_size')})" if spec.get("lam") is not None else ""
        rows.append([str(t["seed"]), t["model"], t["defense"], f"{t['weight']:.4g}" if t["weight"] else "", lam,
                     f"{t['train_s']:.0f}" + (" (cached)" if t["cached"] else ""),
                     pct(t["train_acc"]) if t.get("train_acc") is not None else ""])
    attacks = "; ".join(f"{a.get('name', a['family'])} ({a['family']}, budgets "
                        f"{', '.join(f'{b:g}' for b in a['budgets'])} px"
                        + (", " + ", ".join(f"{k}={v}" for k, v in a.get("params", {}).items()) if a.get("params") else "")
                        + ")" for a in pre["eval"].get("attacks", []))
    return ["## Setup", "",
            f"- Training: `{pre['training'].get('dataset')}`, model `{pre['training'].get('model')}`, schedule "
            f"`{json.dumps(sched)}`, augmentation {pre['training'].get('augment', True)}, pipeline "
            f"`{pre['training'].get('pipeline', 'paper')}`.",
            f"- Evaluation: `{json.dumps(pre['eval'].get('data', {}))}`; attacks: {attacks}.",
            "- `weight` is this package's per-example penalty weight (flows in pixels); `lam` is the paper's lambda "
            "(the authors' reduction: gradient of the batch-mean cross-entropy, squared norm summed per example and "
            "averaged over the batch, flows in normalized align_corners=True units), converted by "
            "`fgr_defense.paper_lambda_to_weight`: FGR weight = lam·((W-1)/2)²/B², IGR weight = lam/B².",
            *[f"- {n}" for n in pre["notes"]], "",
            md_table(["seed", "model", "defense", "weight", "paper lambda", "train s", "train acc %"], rows), ""]


def render_pipeline_report(res: dict[str, Any]) -> str:
    """The Markdown report of a pipeline results dict (``results.json``)."""
    h = res["header"]
    main = str(h["main_seed"])
    parts = [f"# {h['title']}", "",
             f"- Command: `{h['command']}`",
             f"- Git revision: `{h['git_revision']}` (code sha256 {h['code_sha256']})",
             f"- Seeds: training {', '.join(map(str, h['seeds']))} (main seed {h['main_seed']}); attack seed "
             f"{h['eval_seed']}",
             f"- Wall time: {h['wall_s']:.0f} s (training {h['train_s']:.0f} s: {h['models_trained']} model(s) trained, "
             f"{h['models_cached']} from cache; evaluation and figures {h['eval_s']:.0f} s)",
             f"- Hardware: {h['cpu']} ({h['cpu_count']} cores), device `{h['device']}`"
             + (f" ({h['gpu']})" if h.get("gpu") else "")
             + f", {h['threads']} torch thread(s); torch {h['torch']}, Python {h['python']}; finished {h['finished_at']}",
             ""]
    if h.get("rerendered"):
        r = h["rerendered"]
        parts[-1:] = [f"- Re-rendered: `{r['command']}` at revision `{r['git_revision']}` on {r['at']} (the analysis "
                      "recomputed from the stored cells; models, cells and figures unchanged)", ""]
    if res["preset"]["changes"]:
        parts += ["**Changed from the preset for this run: " + "; ".join(res["preset"]["changes"]) + ".**", ""]
    if res.get("anchor"):
        parts += _anchor_section(res)
    if res.get("analysis"):
        parts += (_verdict_section(res) + _frontier_section(res) + _secondary_section(res) + _influence_section(res)
                  + _coverage_section(res)
                  + _matched_section(res))
    parts += _strength_section(res) + _table1_section(res) + _setup_section(res)
    body = render_report(res["runs"][main], [f for f in res["figures"] if f not in _CAPTIONS])
    lines = [("#" + ln if ln.startswith("## ") else ln) for ln in body.splitlines()]
    lines[0] = f"## Seed {main}: every model (harness report)"
    return "\n".join(parts + lines).rstrip() + "\n"


def write_pipeline_outputs(res: dict[str, Any], out: Path) -> None:
    """``results.json`` (cells without their fingerprint components), ``results.csv`` (every cell; columns
    ``train_seed`` and ``attack_seed``), ``worst_case.csv``, ``frontier.csv``, ``report.md``."""
    rows = []
    for s, r in res["runs"].items():
        by_model = {m["name"]: m for m in r["models"]}
        rows += [{**c, "train_seed": s, "attack_seed": c.get("seed"), "defense": by_model[c["model"]]["defense"],
                  "group": by_model[c["model"]]["group"]} for c in r["cells"]]
    # one column per meaning: the training seed of the model and the seed of the attack
    write_csv(out / "results.csv", rows, ["train_seed", *("attack_seed" if f == "seed" else f for f in CSV_FIELDS)])
    worst = [{**w, "train_seed": s} for s, r in res["runs"].items() for w in r.get("worst_case", [])]
    write_csv(out / "worst_case.csv", worst, ["train_seed", *WORST_FIELDS])
    if res.get("analysis"):
        gains = [{"view": "frontier", **g} for g in res["analysis"]["frontier"]["gains"]]
        gains += [{"view": "matched", **g} for g in res["analysis"]["matched"]["gains"]]
        write_csv(out / "frontier.csv", gains, ["view", "pair", "attack", "budget", "mean", "ci95", "std", "n",
                                                "per_seed"])
    slim = {**res, "runs": {s: {**r, "cells": [{k: v for k, v in c.items() if k != "components"} for c in r["cells"]]}
                            for s, r in res["runs"].items()}}
    atomic_write_text(out / "results.json", json.dumps(slim, indent=1, default=str) + "\n")
    atomic_write_text(out / "report.md", render_pipeline_report(res))


def format_summary(res: dict[str, Any]) -> str:
    """A few plain-text lines: the verdict of each pair and the wall time."""
    lines = []
    for r in res.get("anchor") or []:
        lines.append(f"anchor {r['label']}: published {r['clean']:.2f} / {r['adv']:.2f}, ours "
                     f"{_pm(r['our_clean'], scale=100) if r['our_clean'] else 'n/a'} / "
                     f"{_pm(r['our_adv'], scale=100) if r['our_adv'] else 'n/a'}")
    summaries = (("attacks", res["analysis"]["frontier"]["summary"]),
                 (WORST, res["analysis"]["frontier"]["summary_worst"])) if res.get("analysis") else ()
    for label, summary in summaries:
        for s in summary:
            paper = f" (paper: {s['paper'][1]:+.1f})" if s.get("paper") else ""
            lines.append(f"{s['pair']:<14} over {label:<10} frontier gain {_pm(s, sign=True)} points: "
                         f"{s['verdict']}{paper}")
    h = res["header"]
    lines.append(f"wall time {h['wall_s']:.0f}s (train {h['train_s']:.0f}s, eval {h['eval_s']:.0f}s); "
                 f"revision {h['git_revision']}")
    return "\n".join(lines)


def read_pipeline_results(path: str | Path) -> Optional[dict[str, Any]]:
    """A pipeline's ``results.json`` as a dict, or None when the file holds something else (e.g. a run's).

    Raises:
        ValueError: the file is not readable JSON (its path named).
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the harness reader reports it, naming the file
    if isinstance(obj, dict) and obj.get("format") in READ_FORMATS:
        return obj
    return None


def reanalyze(res: dict[str, Any]) -> dict[str, Any]:
    """A copy of a pipeline results dict whose analysis is recomputed by this code from its stored cells."""
    a = res.get("analysis")
    if not a:
        return dict(res)
    paper = {s["pair"]: tuple(s["paper"]) for s in a["frontier"]["summary"] if s.get("paper")}
    runs = {int(s): r for s, r in res["runs"].items()}
    new = analyze(runs, a["families"], a["pairs"], res["preset"]["analysis"].get("reference", REFERENCE_DEFENSE), paper,
                  a.get("zero_weight"))
    return {**res, "analysis": new}
