"""The report of :mod:`benchmarks.flow_attacks`: Markdown tables, the issue's checks, a figure.

Robust accuracy counts the clean-misclassified examples as not robust. "FlowPGD-CE, best step"
is, per model and budget, the lowest robust count of FlowPGD-CE over its step sizes at 1 x 100
steps (the issue's reference); "FlowPGD-CE, best of 8" also takes the step sizes at the
standard version's split of the 100 steps into runs.

The checks (issue 17):

1. the standard version's FlowAPGD-CE (100 steps per example) at least as strong as
   FlowPGD-CE at its best step on at least 90% of the model x budget pairs;
2. FlowAutoAttack ``"standard"`` at or below ``"legacy"`` within one example on every pair;
3. ... at no more model queries on every pair (the wall time is reported beside it). Its second
   reading, "no more than its cost" as the model queries summed over the pairs (the summed wall
   time beside it), is reported too; where the two readings disagree the report says the
   verdict flips. With ``noise.json`` the second reading is also given at the other seeds. What
   decides the per-pair reading (the robust examples, through the masking check both versions
   share) is :mod:`benchmarks.flow_attacks_cost`.

With ``noise.json`` (``--noise-floor``: both suites again at other attack seeds) the report adds the
second check's noise floor: how often a suite passes the check against itself run with another
seed, and the check at each seed and on the mean over the seeds.

The report of ``--select-restarts`` (the split of FlowAPGD's steps into runs, on held-out images)
is :mod:`benchmarks.flow_attacks_selection`.

Example:
    >>> rows = [dict(model="m", eps=0.5, attack=a, n=10, clean=9, robust=r, robust_acc=r / 10, time_s=1.0,
    ...              queries=100) for a, r in [("FlowAPGD-CE 10x10", 3), ("FlowPGD-CE eps/8", 4),
    ...                                        ("FlowAutoAttack legacy", 2), ("FlowAutoAttack standard", 3)]]
    >>> checks({"rows": rows, "standard_apgd_ce": "FlowAPGD-CE 10x10"})["ce"]
    [True]
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from .flow_attacks_cost import LEGACY, LEGACY_CHECK_QUERIES, STANDARD, cost_lines

__all__ = ["attacks_plot", "checks", "noise_floor", "other_weights", "render"]

BEST = "FlowPGD-CE, best step"
BEST8 = "FlowPGD-CE, best of 8"

Cell = Mapping[tuple[str, float, str], Mapping[str, Any]]


def _cells(result: Mapping[str, Any]) -> tuple[Cell, list[str], list[float], list[str]]:
    rows = result["rows"]
    cell = {(r["model"], r["eps"], r["attack"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    budgets = list(dict.fromkeys(r["eps"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    return cell, models, budgets, attacks


def _pgd(attacks: Sequence[str], all_splits: bool) -> list[str]:
    """FlowPGD-CE's rows: the 1 x 100 step sizes ("FlowPGD-CE eps/k"), or every split too."""
    return [a for a in attacks if a.startswith("FlowPGD-CE eps/") and (all_splits or " " not in a[len("FlowPGD-CE "):])]


def _robust(cell: Cell, attacks: Sequence[str], model: str, eps: float, name: str) -> int:
    """Robust count of ``name`` (an attack, or the best-of rows) for one model and budget."""
    if name in (BEST, BEST8):
        return min(int(cell[(model, eps, a)]["robust"]) for a in _pgd(attacks, name == BEST8))
    return int(cell[(model, eps, name)]["robust"])


def checks(result: Mapping[str, Any]) -> dict[str, list[bool]]:
    """The three checks (module docstring) per model x budget pair, budgets outer."""
    cell, models, budgets, attacks = _cells(result)
    ce = result["standard_apgd_ce"]
    out: dict[str, list[bool]] = {"ce": [], "aa": [], "aa_queries": [], "aa_time": []}
    for eps in budgets:
        for m in models:
            out["ce"].append(_robust(cell, attacks, m, eps, ce) <= _robust(cell, attacks, m, eps, BEST))
            old, new = cell[(m, eps, LEGACY)], cell[(m, eps, STANDARD)]
            out["aa"].append(new["robust"] <= old["robust"] + 1)
            out["aa_queries"].append(new["queries"] <= old["queries"])
            out["aa_time"].append(new["time_s"] <= old["time_s"])
    return out


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    # matplotlib and eval: imported when a report is drawn, so that --help stays fast
    from eval.stats import seed_stats

    s = seed_stats(list(values))
    lo, hi = s["ci95"] if s.get("ci95") else (math.nan, math.nan)
    return float(s["mean"]), float(lo), float(hi)


def other_weights(mine: Mapping[str, str] | None, theirs: Mapping[str, str] | None) -> list[str]:
    """The models whose weight hashes differ between two runs' ``"models"`` (none where either
    run predates the hashes): attack seeds are compared only on the same weights.

    Example:
        >>> other_weights({"a": "1", "b": "2"}, {"a": "1", "b": "3"}), other_weights(None, {"a": "1"})
        (['b'], [])
    """
    if not mine or not theirs:
        return []
    return sorted(m for m in {**mine, **theirs} if mine.get(m) != theirs.get(m))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else "n/a"


def _total_cost(rows: Sequence[Mapping[str, Any]], budgets: Sequence[float]) -> tuple[bool, str]:
    """The cost check's second reading over ``rows`` (one seed's): whether the standard suite's model
    queries summed over the pairs are no more than legacy's, and the line that says so (ratios per
    budget, the summed wall time beside)."""
    def total(a: str, key: str, eps: float | None = None) -> float:
        return sum(float(r[key]) for r in rows if r["attack"] == a and eps in (None, r["eps"]))

    q, t = ({a: total(a, key) for a in (LEGACY, STANDARD)} for key in ("queries", "time_s"))
    ok = q[STANDARD] <= q[LEGACY]
    per_budget = ", ".join(f"{eps:g} px {_ratio(total(STANDARD, 'queries', eps), total(LEGACY, 'queries', eps))}"
                           for eps in budgets)
    return ok, (f"{q[STANDARD]:,.0f} vs {q[LEGACY]:,.0f} (ratio {_ratio(q[STANDARD], q[LEGACY])}; by budget: "
                f"{per_budget}); wall time beside it {t[STANDARD]:.0f} s vs {t[LEGACY]:.0f} s (ratio "
                f"{_ratio(t[STANDARD], t[LEGACY])}) -> {_verdict(ok)}")


def _resumed(result: Mapping[str, Any]) -> str:
    """The note on a run resumed after a crash (its pairs each measured within one process)."""
    return " (resumed after an interruption: the finished work of the runs)" if result.get("resumed") else ""


def _check(result: Mapping[str, Any], version: str) -> str:
    """The gradient-free check that ends ``version`` in ``result`` (:data:`LEGACY_CHECK_QUERIES` before it was stored)."""
    name, queries = (result.get("checks") or {}).get(version, ["FlowES", LEGACY_CHECK_QUERIES[version]])
    return f"{name} ({int(queries):,} queries)"


def _verdict(ok: bool) -> str:
    return f"**{'met' if ok else 'not met'}**"


def noise_floor(result: Mapping[str, Any], noise: Mapping[str, Any]) -> dict[str, Any]:
    """Robust counts of both suites per ``(model, budget)`` and seed (0 from ``result``), and the
    second check's pass counts: ``self`` maps each suite against itself at another seed (both
    ways) to ``(passes, comparisons)``; ``at_seed`` maps each seed to the pairs where standard
    passes against legacy, ``on_mean`` counts the pairs where it passes on the mean over the seeds
    (each of ``len(pairs)``)."""
    cell, models, budgets, _ = _cells(result)
    pairs = [(m, eps) for eps in budgets for m in models]
    theirs = sorted({(r["model"], r["eps"]) for r in noise["rows"]})
    if noise.get("n") != result["n"] or theirs != sorted(pairs):
        raise ValueError(f"noise.json: expected the n ({result['n']}) and the {len(pairs)} model x budget pairs of "
                         f"results.json, got n {noise.get('n')} and {len(theirs)} pairs (run --noise-floor again)")
    other = other_weights(result.get("models"), noise.get("models"))
    if other:
        raise ValueError(f"noise.json: expected the models of results.json, got other weights for {', '.join(other)} "
                         f"(trained on another machine? run the comparison and --noise-floor on one machine)")
    runs = {(m, eps, 0): {a: int(cell[(m, eps, a)]["robust"]) for a in (LEGACY, STANDARD)} for m, eps in pairs}
    for r in noise["rows"]:
        if int(r["seed"]) == 0:
            raise ValueError("noise.json: expected attack seeds other than the comparison's 0, got seed 0")
        runs.setdefault((r["model"], r["eps"], int(r["seed"])), {})[r["attack"]] = int(r["robust"])
    seeds = sorted({k[2] for k in runs})
    counts = {(m, eps): {a: [runs[(m, eps, s)][a] for s in seeds] for a in (LEGACY, STANDARD)} for m, eps in pairs}

    def within(new: float, old: float) -> bool:
        return new <= old + 1

    comparisons = len(pairs) * (len(seeds) - 1)
    self_passes: dict[str, tuple[int, int]] = {}
    for a in (LEGACY, STANDARD):
        self_passes[f"{a}: another seed vs seed 0"] = (sum(
            within(c[a][k], c[a][0]) for c in counts.values() for k in range(1, len(seeds))), comparisons)
        self_passes[f"{a}: seed 0 vs another seed"] = (sum(
            within(c[a][0], c[a][k]) for c in counts.values() for k in range(1, len(seeds))), comparisons)
    at_seed = {s: sum(within(c[STANDARD][k], c[LEGACY][k]) for c in counts.values()) for k, s in enumerate(seeds)}
    on_mean = sum(within(statistics.fmean(c[STANDARD]), statistics.fmean(c[LEGACY])) for c in counts.values())
    return {"seeds": seeds, "pairs": pairs, "counts": counts, "self": self_passes, "at_seed": at_seed,
            "on_mean": on_mean}


def _noise_lines(result: Mapping[str, Any], noise: Mapping[str, Any]) -> list[str]:
    f = noise_floor(result, noise)
    k = len(f["pairs"])
    lines = ["## The second check's noise floor", "",
             f"Both suites again at attack seed(s) {', '.join(str(s) for s in f['seeds'][1:])} (`{noise['command']}` "
             f"at revision `{noise['git_revision']}`, {noise['wall_s']:.0f} s{_resumed(noise)}); seed 0 is the comparison above. "
             f"Robust counts of {result['n']} images, seeds {', '.join(map(str, f['seeds']))}:", "",
             "| model | budget | legacy | standard |", "|---|---|---|---|"]
    for m, eps in f["pairs"]:
        c = f["counts"][(m, eps)]
        lines.append(f"| {m} | {eps:g} | {', '.join(map(str, c[LEGACY]))} | {', '.join(map(str, c[STANDARD]))} |")
    lines += ["", "The second check's test (the first at or below the second plus one example), model x budget pairs "
              "that pass:", ""]
    for name, (n_pass, of) in f["self"].items():
        lines.append(f"- {name}: {n_pass} of {of}")
    for s, n_pass in f["at_seed"].items():
        lines.append(f"- standard vs legacy at seed {s}: {n_pass} of {k}")
    lines.append(f"- standard vs legacy, mean over the seeds: {f['on_mean']} of {k}")
    lines += ["", "The cost check's second reading (model queries summed over the pairs) at each seed:", ""]
    cost_ok: dict[int, bool] = {}
    for s in f["seeds"]:
        rows = result["rows"] if s == 0 else [r for r in noise["rows"] if int(r["seed"]) == s]
        cost_ok[s], line = _total_cost(rows, result["budgets"])
        lines.append(f"- seed {s}: {line}")
    if len(set(cost_ok.values())) > 1:
        lines += ["", f"**The cost check's second reading flips with the attack seed** (met at seed(s) "
                      f"{', '.join(str(s) for s, ok in cost_ok.items() if ok)}, not met at "
                      f"{', '.join(str(s) for s, ok in cost_ok.items() if not ok)}): it is no verdict."]
    at_seed = {s: n_pass == k for s, n_pass in f["at_seed"].items()}
    selfs, comparisons = min(f["self"].values())
    if len(set(at_seed.values())) > 1:
        lines += ["", f"**The second check's verdict flips with the attack seed** (met at seed(s) "
                      f"{', '.join(str(s) for s, ok in at_seed.items() if ok)}, not met at "
                      f"{', '.join(str(s) for s, ok in at_seed.items() if not ok)}): it is no verdict."]
    if selfs < comparisons:
        lines += ["", f"A suite fails the check's test against itself at another seed on up to "
                      f"{comparisons - selfs} of {comparisons} pairs: one example of slack is below the "
                      f"seed-to-seed noise of {result['n']} images."]

    lines += ["", "Differences in robust examples per model x budget pair (seed 0 against the other seeds for a "
              "suite against itself):", "", "| difference | budget | mean | mean absolute | largest absolute |",
              "|---|---|---|---|---|"]
    diffs: list[tuple[str, Any]] = [
        (f"{a.split()[-1]} at another seed - at seed 0", lambda c, a=a: [x - c[a][0] for x in c[a][1:]])
        for a in (LEGACY, STANDARD)]
    diffs.append(("standard - legacy, mean over the seeds",
                  lambda c: [statistics.fmean(c[STANDARD]) - statistics.fmean(c[LEGACY])]))
    for label, diff in diffs:
        for eps in result["budgets"]:
            d = [x for m, e in f["pairs"] if e == eps for x in diff(f["counts"][(m, e)])]
            lines.append(f"| {label} | {eps:g} | {statistics.fmean(d):+.2f} | {statistics.fmean(map(abs, d)):.2f} | "
                         f"{max(map(abs, d)):g} |")
    lines.append("")
    return lines


def render(result: Mapping[str, Any], noise: Mapping[str, Any] | None = None) -> str:
    """The Markdown report of :func:`benchmarks.flow_attacks.run`'s dict (and of ``noise.json``'s)."""
    cell, models, budgets, attacks = _cells(result)
    ce = result["standard_apgd_ce"]
    n = result["n"]
    lines = ["# FlowAPGD and the FlowAutoAttack versions (issue 17)", "",
             f"- Command: `{result['command']}` at revision `{result['git_revision']}`",
             f"- {len(models)} models x budgets {', '.join(f'{b:g}' for b in budgets)} px, the first {n} MNIST-5k "
             f"test images (robust accuracy over all of them; clean-misclassified count as not robust); "
             f"{result['machine']}, device `{result['device']}`, torch {result['torch']}; wall time "
             f"{result['wall_s']:.0f} s{_resumed(result)}",
             f"- FlowAutoAttack `standard` = {ce} -> {result.get('standard_apgd_t', 'FlowAPGD-T')} -> StAdv -> "
             f"{_check(result, 'standard')}; `legacy` = FlowPGD-CE (50 steps) -> FlowPGD-margin (3 x 50) -> StAdv -> "
             f"{_check(result, 'legacy')}. The splits of "
             f"FlowAPGD's steps into runs were chosen on held-out images: [restarts.md](restarts.md).", "",
             "![attacks](attacks.png)", ""]
    for eps in budgets:
        lines += [f"## {eps:g} px: robust accuracy %", ""]
        head = ["model", *attacks, BEST, BEST8]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in models:
            vals = [f"{100 * _robust(cell, attacks, m, eps, a) / n:.1f}" for a in head[1:]]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Per-model differences (points; mean [95% t-interval] over the models)", "",
              "| difference | budget | mean [95% CI] | models where the first is lower / equal / higher |",
              "|---|---|---|---|"]
    pairs = [(ce, BEST), ("FlowAPGD-CE 1x100", BEST), (ce, BEST8), (ce, "FlowPGD-margin"),
             (result.get("standard_apgd_t", "FlowAPGD-T"), "FlowPGD-margin"), (STANDARD, LEGACY)]
    for a, b in pairs:
        for eps in budgets:
            diffs = [100 * (_robust(cell, attacks, m, eps, a) - _robust(cell, attacks, m, eps, b)) / n
                     for m in models]
            mean, lo, hi = _t_interval(diffs)
            counts = (sum(d < 0 for d in diffs), sum(d == 0 for d in diffs), sum(d > 0 for d in diffs))
            lines.append(f"| {a} - {b} | {eps:g} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                         f"{counts[0]} / {counts[1]} / {counts[2]} |")
    lines += ["", "## Time per model (s) and model queries per correctly classified example", "",
              "| attack | " + " | ".join(f"{eps:g} px: s, queries" for eps in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for a in attacks:
        vals = []
        for eps in budgets:
            rs = [cell[(m, eps, a)] for m in models]
            vals.append(f"{statistics.fmean(r['time_s'] for r in rs):.2f}, "
                        f"{statistics.fmean(r['queries'] / max(r['clean'], 1) for r in rs):.0f}")
        lines.append(f"| {a} | " + " | ".join(vals) + " |")
    ratios = [cell[(m, eps, STANDARD)]["time_s"] / cell[(m, eps, LEGACY)]["time_s"] for eps in budgets
              for m in models if cell[(m, eps, LEGACY)]["time_s"] > 0]  # 0: nothing was attacked
    mean, lo, hi = _t_interval(ratios) if ratios else (math.nan, math.nan, math.nan)
    lines += ["", f"FlowAutoAttack standard / legacy wall time per model x budget: {mean:.3f} "
                  f"[{lo:.3f}, {hi:.3f}] (mean [95% CI])."]
    c = checks(result)
    k = len(c["ce"])
    # the extra reading, not one of the checks: the best of every FlowPGD-CE row
    def wins(name: str, reference: str) -> int:
        return sum(_robust(cell, attacks, m, eps, name) <= _robust(cell, attacks, m, eps, reference)
                   for eps in budgets for m in models)

    total_ok, total_line = _total_cost(result["rows"], budgets)
    lines += ["", "## The issue's checks", "",
              f"- {ce} (100 steps per example) at least as strong as FlowPGD-CE at its best of "
              f"{len(_pgd(attacks, False))} step sizes (1 x 100): {sum(c['ce'])} of {k} model x budget pairs "
              f"({100 * sum(c['ce']) / k:.0f}%; required: 90%) -> {_verdict(sum(c['ce']) >= 0.9 * k)}",
              f"- FlowAutoAttack `standard` at or below `legacy` within one example: {sum(c['aa'])} of {k} -> "
              f"{_verdict(all(c['aa']))}",
              f"- ... at no more model queries: {sum(c['aa_queries'])} of {k} -> {_verdict(all(c['aa_queries']))}; "
              f"at no more wall time: {sum(c['aa_time'])} of {k} (mean ratio above)",
              f"- ... second reading, at no more model queries in total over the {k} pairs: {total_line}",
              "",
              f"Beyond the checks: {ce} at least as strong as the best of all {len(_pgd(attacks, True))} FlowPGD-CE "
              f"rows (4 step sizes x 1 x 100 and the same split into runs): {wins(ce, BEST8)} of {k}; "
              f"FlowAPGD-CE 1x100 (AutoAttack's single run) against the best step: "
              f"{wins('FlowAPGD-CE 1x100', BEST)} of {k}.", ""]
    if (sum(c["ce"]) >= 0.9 * k) != (wins(ce, BEST8) >= 0.9 * k):
        lines += [f"**The first check's verdict flips with its reference**: against FlowPGD-CE split into the same "
                  f"runs (the best of all {len(_pgd(attacks, True))} rows) it would read "
                  f"{'met' if wins(ce, BEST8) >= 0.9 * k else 'not met'} ({wins(ce, BEST8)} of {k}). It is no verdict "
                  f"on APGD's step-size rule itself: what separates {ce} from FlowPGD-CE at its best step is the "
                  f"split into restarts.", ""]
    if all(c["aa_queries"]) != total_ok:
        lines += [f"**The cost part of the second check flips with its reading**: per pair it reads "
                  f"{'met' if all(c['aa_queries']) else 'not met'}, in total over the pairs "
                  f"{'met' if total_ok else 'not met'}. It is no verdict.", ""]
    seeds: dict[int, list[Mapping[str, Any]]] = {0: list(result["rows"])}
    for r in noise["rows"] if noise is not None else []:
        seeds.setdefault(int(r["seed"]), []).append(r)
    lines += cost_lines(seeds, budgets, result.get("checks"))
    if noise is not None:
        lines += _noise_lines(result, noise)
    return "\n".join(lines)


def attacks_plot(result: Mapping[str, Any], path: Path) -> str:
    """``attacks.png``: per model x budget, the standard FlowAPGD-CE against FlowPGD-CE at its best
    step, and the standard FlowAutoAttack against the legacy one (robust accuracy %)."""
    # matplotlib and eval: imported when a report is drawn, so that --help stays fast
    from matplotlib.figure import Figure

    from eval.figures import save_figure

    cell, models, budgets, attacks = _cells(result)
    n = result["n"]
    panels: list[tuple[str, str]] = [(BEST, result["standard_apgd_ce"]), (LEGACY, STANDARD)]
    fig = Figure(figsize=(10, 4.6))
    markers = "osD"
    for k, (xa, ya) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        top = 0.0
        for j, eps in enumerate(budgets):
            xs = [100 * _robust(cell, attacks, m, eps, xa) / n for m in models]
            ys = [100 * _robust(cell, attacks, m, eps, ya) / n for m in models]
            top = max(top, *xs, *ys)
            ax.scatter(xs, ys, marker=markers[j % len(markers)], label=f"{eps:g} px", alpha=0.8)
        ax.plot([0, top + 2], [0, top + 2], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"{xa}: robust accuracy %")
        ax.set_ylabel(f"{ya}: robust accuracy %")
        ax.set_title("below the diagonal: the second attack is stronger", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(models)} MNIST-5k models, first {n} test images, one point per model and budget")
    fig.tight_layout()
    return save_figure(fig, path)
