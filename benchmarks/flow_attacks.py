"""FlowAPGD against the fixed-step flow attacks, and FlowAutoAttack with APGD members against the standard one.

``python -m benchmarks.flow_attacks`` (issue 17): on 10 models of the ``mnist5k`` preset's
families (Standard, AT-PGD, 2 IGR, 3 FGR, 3 FGR+RS weights; seed 0, the preset's recipe,
trained into ``OUT/cache`` or reused from there), at 0.25 / 0.5 / 0.75 px, on the first ``--n``
MNIST-5k test images, it runs

- at about 100 forward+backward passes per example each: FlowAPGD-CE (100 steps),
  FlowAPGD-T (DLR, 3 targets x 33 steps), FlowPGD-CE at 4 step sizes (100 steps each; the
  best of the 4 is "FlowPGD-CE, best step"), FlowPGD-margin (4 restarts x 25 steps of
  ``eps / 8``), StAdv (100 steps) and FlowES (population 10 x 30 steps: 300 forwards);
- FlowAutoAttack ``"standard"`` (FlowPGD members) and ``"apgd"`` (FlowAPGD members) at their
  own cost;

and writes ``OUT/results.json`` and ``OUT/report.md``: robust accuracy (clean-misclassified
examples count as not robust), time and model queries per attack, the per-model differences
with 95% t-intervals over models, and the issue's three checks.

Example:
    >>> [c.name for c in attack_configs(0.5)][:3]
    ['FlowAPGD-CE', 'FlowAPGD-T', 'FlowPGD-CE eps/20']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["AttackConfig", "attack_configs", "main", "render", "run"]

logger = logging.getLogger(__name__)

#: The models: ``(defense, weight)`` of the mnist5k preset's grids (light, middle, heavy).
MODELS: tuple[tuple[str, Optional[float]], ...] = (
    ("Standard", None), ("AT-PGD", None),
    ("IGR", 2.7), ("IGR", 5.6),
    ("FGR", 17.0), ("FGR", 29.0), ("FGR", 41.0),
    ("FGR+RS", 15.0), ("FGR+RS", 25.0), ("FGR+RS", 33.0),
)
BUDGETS = (0.25, 0.5, 0.75)
PGD_STEPS = (20, 8, 4, 2)  # FlowPGD-CE step sizes eps / k


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One attack of the comparison: a name and ``build(model) -> attack``."""

    name: str
    build: Callable[[Any], Any]


def attack_configs(eps: float) -> list[AttackConfig]:
    """The attacks compared at budget ``eps`` (module docstring)."""
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowAPGD, FlowAPGDT, FlowAutoAttack, FlowES, FlowPGD, StAdv

    configs = [
        AttackConfig("FlowAPGD-CE", lambda m: FlowAPGD(m, eps=eps, steps=100, loss="ce")),
        AttackConfig("FlowAPGD-T", lambda m: FlowAPGDT(m, eps=eps, steps=33, n_target_classes=3)),
    ]
    def pgd(k: int) -> Callable[[Any], Any]:
        return lambda m: FlowPGD(m, eps=eps, alpha=eps / k, steps=100)

    configs += [AttackConfig(f"FlowPGD-CE eps/{k}", pgd(k)) for k in PGD_STEPS]
    configs += [
        AttackConfig("FlowPGD-margin", lambda m: FlowPGD(m, eps=eps, alpha=eps / 8, steps=25, loss="margin",
                                                         restarts=4)),
        AttackConfig("StAdv", lambda m: StAdv(m, bound=eps, steps=100, lr=max(eps / 5, 1e-3))),
        AttackConfig("FlowES", lambda m: FlowES(m, eps=eps, population=10, steps=30)),
        AttackConfig("FlowAutoAttack standard", lambda m: FlowAutoAttack(m, eps=eps, version="standard")),
        AttackConfig("FlowAutoAttack apgd", lambda m: FlowAutoAttack(m, eps=eps, version="apgd")),
    ]
    return configs


def _models(out: Path, device: str) -> list[tuple[str, Any]]:
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from deform_robust import train_from_spec
    from eval.pipeline import instance_spec
    from eval.presets import Instance, load_preset
    from fgr_defense.checkpoint import load_model
    from fgr_defense.naming import file_slug

    preset = load_preset("mnist5k")
    models = []
    for k, (defense, weight) in enumerate(MODELS, 1):
        inst = Instance(defense, weight=weight)
        spec = dataclasses.replace(instance_spec(preset, inst, 0), device=device)
        logger.info("model %d/%d: %s", k, len(MODELS), inst.name)
        res = train_from_spec(spec, out / "cache" / file_slug(inst.name), mode="auto")
        model, _ = load_model(res.checkpoint, map_location=device)
        models.append((inst.name, model.eval()))
    return models


def run(out: str | Path, n: int = 120, budgets: Sequence[float] = BUDGETS, device: str = "cpu",
        progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) the models, run every attack, write ``results.json``; returns its dict."""
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    import torch
    from tqdm import tqdm

    from deform_robust.data import load_test_data
    from deform_robust.provenance import git_revision

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = _models(out, device)
    data = load_test_data("mnist5k", n=n)
    x, y = data.images.to(device), data.labels.to(device)
    rows: list[dict[str, Any]] = []
    jobs = [(name, model, eps) for name, model in models for eps in budgets]
    bar = tqdm(jobs, desc="flow attacks", unit="model x budget", disable=None if progress else True)
    for name, model, eps in bar:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        xs, ys = x[correct], y[correct]
        for cfg in attack_configs(eps):
            bar.set_postfix_str(f"{name} {eps:g} px {cfg.name}")
            atk = cfg.build(model)
            torch.manual_seed(0)
            start = time.perf_counter()
            adv = atk(xs, ys)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                robust = int((model(adv).argmax(1) == ys).sum())
            queries = atk.query_count + sum(m.query_count for m in getattr(atk, "attacks", []))  # a suite's members
            rows.append({"model": name, "eps": eps, "attack": cfg.name, "n": int(len(y)),
                         "clean": int(correct.sum()), "robust": robust, "robust_acc": robust / len(y),
                         "time_s": seconds, "queries": int(queries)})
            logger.debug("%s", rows[-1])
    bar.close()
    result = {"format": "deform-robust-flow-attacks/1", "command": " ".join(["python -m benchmarks.flow_attacks",
                                                                            *sys.argv[1:]]),
              "git_revision": git_revision(exclude=out), "n": n, "budgets": list(budgets), "device": device,
              "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)",
              "torch": torch.__version__, "wall_s": time.perf_counter() - t0, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from eval.stats import seed_stats

    s = seed_stats(list(values))
    lo, hi = s["ci95"] if s.get("ci95") else (math.nan, math.nan)
    return float(s["mean"]), float(lo), float(hi)


def render(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`run`'s dict."""
    rows = result["rows"]
    cell = {(r["model"], r["eps"], r["attack"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    pgd = [a for a in attacks if a.startswith("FlowPGD-CE eps/")]
    lines = ["# FlowAPGD and the FlowAutoAttack versions (issue 17)", "",
             f"- Command: `{result['command']}` at revision `{result['git_revision']}`",
             f"- {len(models)} models x budgets {', '.join(f'{b:g}' for b in result['budgets'])} px, the first "
             f"{result['n']} MNIST-5k test images (robust accuracy over all of them; clean-misclassified count as "
             f"not robust); {result['machine']}, device `{result['device']}`, torch {result['torch']}; "
             f"wall time {result['wall_s']:.0f} s", ""]
    if result.get("relabelled"):
        lines += [f"- Relabelled: {result['relabelled']}", ""]
    checks: dict[str, list[bool]] = {"apgd": [], "aa": [], "aa_time": []}
    for eps in result["budgets"]:
        lines += [f"## {eps:g} px: robust accuracy %", ""]
        head = ["model", *attacks, "FlowPGD-CE, best step"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in models:
            best = min(cell[(m, eps, a)]["robust"] for a in pgd)
            vals = [f"{100 * cell[(m, eps, a)]['robust_acc']:.1f}" for a in attacks]
            lines.append(f"| {m} | " + " | ".join(vals) + f" | {100 * best / cell[(m, eps, pgd[0])]['n']:.1f} |")
            checks["apgd"].append(cell[(m, eps, "FlowAPGD-CE")]["robust"] <= best)
            old, new = cell[(m, eps, "FlowAutoAttack standard")], cell[(m, eps, "FlowAutoAttack apgd")]
            checks["aa"].append(new["robust"] <= old["robust"] + 1)
            checks["aa_time"].append(new["time_s"] <= old["time_s"])
        lines.append("")
    lines += ["## Per-model differences (points; mean [95% t-interval] over the models and budgets)", ""]
    pairs = [("FlowAPGD-CE", "FlowPGD-CE, best step"), ("FlowAPGD-CE", "FlowPGD-margin"),
             ("FlowAPGD-T", "FlowPGD-margin"), ("FlowAutoAttack apgd", "FlowAutoAttack standard")]
    lines += ["| difference | budget | mean [95% CI] | models where the first is lower / equal / higher |",
              "|---|---|---|---|"]
    for a, b in pairs:
        for eps in result["budgets"]:
            diffs = []
            for m in models:
                ra = cell[(m, eps, a)]["robust_acc"]
                rb = (min(cell[(m, eps, p)]["robust"] for p in pgd) / cell[(m, eps, pgd[0])]["n"]
                      if b == "FlowPGD-CE, best step" else cell[(m, eps, b)]["robust_acc"])
                diffs.append(100 * (ra - rb))
            mean, lo, hi = _t_interval(diffs)
            counts = (sum(d < 0 for d in diffs), sum(d == 0 for d in diffs), sum(d > 0 for d in diffs))
            lines.append(f"| {a} - {b} | {eps:g} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | {counts[0]} / {counts[1]} / "
                         f"{counts[2]} |")
    lines.append("")
    lines += ["## Time per model (s) and model queries per example", "",
              "| attack | " + " | ".join(f"{eps:g} px: s, queries" for eps in result["budgets"]) + " |",
              "|---|" + "---|" * len(result["budgets"])]
    for a in attacks:
        vals = []
        for eps in result["budgets"]:
            rs = [cell[(m, eps, a)] for m in models]
            vals.append(f"{sum(r['time_s'] for r in rs) / len(rs):.2f}, "
                        f"{sum(r['queries'] / max(r['clean'], 1) for r in rs) / len(rs):.0f}")
        lines.append(f"| {a} | " + " | ".join(vals) + " |")
    lines.append("")
    n_pairs = len(checks["apgd"])
    lines += ["## The issue's checks", "",
              f"- FlowAPGD-CE (100 steps) at least as strong as FlowPGD-CE at its best of {len(pgd)} step sizes: "
              f"{sum(checks['apgd'])} of {n_pairs} model x budget pairs ({100 * sum(checks['apgd']) / n_pairs:.0f}%; "
              f"required: 90%) -> **{'met' if sum(checks['apgd']) >= 0.9 * n_pairs else 'not met'}**",
              f"- FlowAutoAttack with the FlowAPGD members (`apgd`) at or below the FlowPGD members (`standard`) "
              f"within one example: {sum(checks['aa'])} of {n_pairs} "
              f"-> **{'met' if all(checks['aa']) else 'not met'}**",
              f"- ... at no more than its time: {sum(checks['aa_time'])} of {n_pairs} "
              f"-> **{'met' if all(checks['aa_time']) else 'not met'}**", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow_attacks", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/attacks", help="output folder (models cached in OUT/cache)")
    p.add_argument("--n", type=int, default=120, help="test images (the 2-core CPU: about 30 minutes at 120)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--render", action="store_true", help="only re-render OUT/report.md from OUT/results.json")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n: expected a positive integer, got {args.n}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    result = (json.loads((out / "results.json").read_text()) if args.render
              else run(out, n=args.n, device=args.device, progress=not args.no_progress))
    (out / "report.md").write_text(render(result) + "\n")
    logger.info("wrote %s", out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
