"""FlowAPGD against the fixed-step flow attacks, and the FlowAutoAttack versions side by side.

``python -m benchmarks.flow_attacks`` (issue 17): on 10 models of the ``mnist5k`` preset's
families (Standard, AT-PGD, 2 IGR, 3 FGR, 3 FGR+RS weights; seed 0, the preset's recipe,
trained into ``OUT/cache`` or reused from there), at 0.25 / 0.5 / 0.75 px, on the first ``--n``
MNIST-5k test images, it runs

- at 100 forward+backward passes per example each (about 300 forwards for FlowES and FlowSquare):
  FlowAPGD-CE as FlowAutoAttack's standard version runs it (10 runs of 10 steps,
  :data:`~torchattacks_deform.autoattack.APGD_CE_RUNS`) and as AutoAttack runs it (1 x 100),
  FlowAPGD-T as the standard version runs it (targeted DLR,
  :data:`~torchattacks_deform.autoattack.APGD_T_RUNS`), FlowPGD-CE at 4 step sizes both as 1 x 100
  and split as FlowAPGD-CE is (10 x 10) (the best of the 4 step sizes is "FlowPGD-CE, best step"),
  FlowPGD-margin (4 restarts x 25 steps of ``eps / 8``), StAdv (100 steps), FlowES
  (population 10 x 30 steps) and FlowSquare (300 queries);
- FlowAutoAttack ``"legacy"`` (FlowPGD members) and ``"standard"`` (FlowAPGD members) at their
  own cost;

and writes ``OUT/results.json``, ``OUT/report.md`` and ``OUT/attacks.png``
(:mod:`benchmarks.flow_attacks_report`).

The attack runs of every mode hold ``OUT/.lock`` and write each finished model x budget pair's
rows to ``OUT/.<json name>.partial.json`` at once (:mod:`benchmarks.partial`): run the same
command again after a crash and the finished pairs are reused, provided the code, models,
images, attacks, machine and torch are the same; otherwise the partial file is discarded with a
warning. It is removed once the json is written; a resumed run says so (``"resumed"``). The
temporaries of a writer killed mid-write are removed once the lock is held.

``--select-restarts`` instead runs the choice of the standard version's FlowAPGD-CE and
FlowAPGD-T runs (``OUT/restarts.json`` and ``OUT/restarts.md``) on held-out images (test images
200-319, which the comparison above does not use) of the same models and budgets: FlowAPGD-CE
at 100 steps per example split into 1, 2, 4, 5 and 10 runs (the split of the lowest total robust
count is the one to use), then FlowAPGD-T's 99 steps as 3 targets x 33, 9 x 11 or 3 x 3 runs
x 11, each judged inside the suite (examples robust to the chosen FlowAPGD-CE, FlowAPGD-T and
StAdv; the lowest total is the one to use).

``--noise-floor`` runs only the two FlowAutoAttack versions again on the comparison's models, budgets
and images with other attack seeds (:data:`NOISE_SEEDS`; the comparison uses seed 0) and writes
``OUT/noise.json``; the report then says how often a suite passes the second check against itself
run with another seed (the check's noise floor).

Example:
    >>> [c.name for c in attack_configs(0.5)][:4]
    ['FlowAPGD-CE 10x10', 'FlowAPGD-CE 1x100', 'FlowAPGD-T 3x3x11', 'FlowPGD-CE eps/20']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from fgr_defense.files import (  # torch-free: fast --help
    OutputLock,
    atomic_write_text,
    remove_stale_temporaries,
)

from . import partial  # torch-free: fast --help

__all__ = ["AttackConfig", "apgd_ce_name", "apgd_t_name", "attack_configs", "main", "run",
           "select_configs", "suite_configs"]

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
#: Splits of FlowAPGD-CE's 100 steps per example into ``runs x steps`` that --select-restarts compares.
SPLITS = ((1, 100), (2, 50), (4, 25), (5, 20), (10, 10))
#: FlowAPGD-T as ``(target classes, runs per target, steps per run)`` (99 steps per example) that
#: --select-restarts compares inside the suite (after the chosen FlowAPGD-CE, before StAdv).
T_SPLITS = ((3, 1, 33), (9, 1, 11), (3, 3, 11))
#: The held-out test images of --select-restarts (the comparison uses the first --n).
HELD_OUT = (200, 320)
#: The attack seeds of --noise-floor (the comparison runs every attack at seed 0).
NOISE_SEEDS = (1, 2)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One attack of the comparison: a name and ``build(model) -> attack``."""

    name: str
    build: Callable[[Any], Any]


def apgd_ce_name(runs: int, steps: int) -> str:
    """The row name of FlowAPGD-CE as ``runs`` runs of ``steps`` steps, e.g. ``'FlowAPGD-CE 10x10'``."""
    return f"FlowAPGD-CE {runs}x{steps}"


def _apgd_ce(eps: float, runs: int, steps: int) -> AttackConfig:
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowAPGD

    return AttackConfig(apgd_ce_name(runs, steps),
                        lambda m: FlowAPGD(m, eps=eps, steps=steps, restarts=runs, loss="ce"))


def apgd_t_name(targets: int, runs: int, steps: int) -> str:
    """The row name of FlowAPGD-T, e.g. ``'FlowAPGD-T 3x33'`` (3 targets, 33 steps) or ``'FlowAPGD-T 3x3x11'``."""
    return f"FlowAPGD-T {targets}x{steps}" if runs == 1 else f"FlowAPGD-T {targets}x{runs}x{steps}"


def _apgd_t(eps: float, targets: int, runs: int, steps: int) -> AttackConfig:
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowAPGDT

    return AttackConfig(apgd_t_name(targets, runs, steps),
                        lambda m: FlowAPGDT(m, eps=eps, steps=steps, n_target_classes=targets, restarts=runs))


def attack_configs(eps: float) -> list[AttackConfig]:
    """The attacks compared at budget ``eps`` (module docstring)."""
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowES, FlowPGD, FlowSquare, StAdv
    from torchattacks_deform.autoattack import APGD_CE_RUNS, APGD_T_RUNS

    steps, runs = APGD_CE_RUNS
    configs = [_apgd_ce(eps, runs, steps), _apgd_ce(eps, 1, 100), _apgd_t(eps, *APGD_T_RUNS)]

    def pgd(k: int, runs: int, steps: int) -> Callable[[Any], Any]:
        return lambda m: FlowPGD(m, eps=eps, alpha=eps / k, steps=steps, restarts=runs)

    configs += [AttackConfig(f"FlowPGD-CE eps/{k}", pgd(k, 1, 100)) for k in PGD_STEPS]
    configs += [AttackConfig(f"FlowPGD-CE eps/{k} {runs}x{steps}", pgd(k, runs, steps)) for k in PGD_STEPS]
    configs += [
        AttackConfig("FlowPGD-margin", lambda m: FlowPGD(m, eps=eps, alpha=eps / 8, steps=25, loss="margin",
                                                         restarts=4)),
        AttackConfig("StAdv", lambda m: StAdv(m, bound=eps, steps=100, lr=max(eps / 5, 1e-3))),
        AttackConfig("FlowES", lambda m: FlowES(m, eps=eps, population=10, steps=30)),
        AttackConfig("FlowSquare", lambda m: FlowSquare(m, eps=eps, queries=300)),
    ]
    return configs + suite_configs(eps)


def select_configs(eps: float) -> list[AttackConfig]:
    """The attacks of ``--select-restarts`` at ``eps``: every split of :data:`SPLITS` and :data:`T_SPLITS`, StAdv."""
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import StAdv

    return [*(_apgd_ce(eps, runs, steps) for runs, steps in SPLITS), *(_apgd_t(eps, *t) for t in T_SPLITS),
            AttackConfig("StAdv", lambda m: StAdv(m, bound=eps, steps=100, lr=max(eps / 5, 1e-3)))]


def suite_configs(eps: float, seed: int = 0) -> list[AttackConfig]:
    """The attacks of ``--noise-floor`` at ``eps``: FlowAutoAttack ``"legacy"`` and ``"standard"``, the
    latter's FlowAPGD members seeded with ``seed`` (the other members draw from the global RNG, which
    :func:`run` seeds with it)."""
    # torch and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowAutoAttack

    return [AttackConfig("FlowAutoAttack legacy", lambda m: FlowAutoAttack(m, eps=eps, version="legacy")),
            AttackConfig("FlowAutoAttack standard", lambda m: FlowAutoAttack(m, eps=eps, version="standard",
                                                                             seed=seed))]


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
        progress: bool = True, select: bool = False, noise: bool = False) -> dict[str, Any]:
    """Train (or reuse) the models, run every attack, write ``results.json`` (``restarts.json``
    with ``select``, ``noise.json`` with ``noise``: the suites at :data:`NOISE_SEEDS`); returns its dict.

    Holds ``out/.lock``; resumes the finished pairs of a crashed run (module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        remove_stale_temporaries(out)
        return _run(out, n, budgets, device, progress, select, noise)


def _run(out: Path, n: int, budgets: Sequence[float], device: str, progress: bool, select: bool,
         noise: bool) -> dict[str, Any]:
    # torch, training and the attacks: imported when the benchmark runs, so that --help stays fast
    import torch
    from tqdm import tqdm

    from deform_robust.data import load_test_data
    from deform_robust.provenance import git_revision
    from eval.provenance import machine as provenance_machine
    from torchattacks_deform.autoattack import APGD_CE_RUNS, APGD_T_RUNS

    from .flow_attacks_cost import check_queries
    from .flow_attacks_report import other_weights

    t0 = time.perf_counter()
    models = _models(out, device)
    if select:
        data = load_test_data("mnist5k", n=HELD_OUT[1])
        x, y = data.images[HELD_OUT[0]:].to(device), data.labels[HELD_OUT[0]:].to(device)
    else:
        data = load_test_data("mnist5k", n=n)
        x, y = data.images.to(device), data.labels.to(device)
    def configs(eps: float) -> list[tuple[AttackConfig, int]]:
        if noise:
            return [(c, s) for s in NOISE_SEEDS for c in suite_configs(eps, s)]
        return [(c, 0) for c in (select_configs if select else attack_configs)(eps)]

    kind = "restarts" if select else "noise" if noise else "results"
    machine = f"{provenance_machine(device)['cpu']} ({torch.get_num_threads()} torch threads)"
    images = list(HELD_OUT) if select else [0, int(len(y))]
    key = partial.resume_key(kind, images, budgets, device, machine, models,
                     {repr(eps): [f"{c.name}@{s}" for c, s in configs(eps)] for eps in budgets})
    if noise:  # its seeds are compared with the comparison's seed 0: on the same weights only
        if other_weights(json.loads((out / "results.json").read_text()).get("models"), key["models"]):
            raise ValueError(f"{out / 'results.json'}: its models have other weights than these (trained on another "
                             f"machine?); run the comparison and --noise-floor on one machine")
    partial_file = out / f".{kind}.partial.json"
    done, elapsed = partial.load(partial_file, key)
    rows: list[dict[str, Any]] = []
    jobs = [(name, model, eps) for name, model in models for eps in budgets]
    bar = tqdm(jobs, desc="flow attacks", unit="model x budget", disable=None if progress else True)
    for name, model, eps in bar:
        pair = f"{name} @ {eps!r}"
        if pair in done:
            rows += done[pair]
            continue
        first = len(rows)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        xs, ys = x[correct], y[correct]
        for cfg, seed in configs(eps):
            bar.set_postfix_str(f"{name} {eps:g} px {cfg.name}" + (f" seed {seed}" if noise else ""))
            still, seconds, queries = ys.new_zeros(0, dtype=torch.bool), 0.0, 0  # no example classified correctly
            if len(ys):
                atk = cfg.build(model)
                torch.manual_seed(seed)
                start = time.perf_counter()
                adv = atk(xs, ys)
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    still = model(adv).argmax(1) == ys
                queries = atk.query_count + sum(m.query_count for m in getattr(atk, "attacks", []))  # a suite's
            robust = int(still.sum())
            rows.append({"model": name, "eps": eps, "attack": cfg.name, "n": int(len(y)),
                         "clean": int(correct.sum()), "robust": robust, "robust_acc": robust / len(y),
                         "time_s": seconds, "queries": int(queries), **({"seed": seed} if noise else {}),
                         **({"robust_mask": still.int().tolist()} if select else {})})
            logger.debug("%s", rows[-1])
        done[pair] = rows[first:]
        partial.save(partial_file, key, done, elapsed + time.perf_counter() - t0)
    bar.close()
    argv = " ".join(["python -m benchmarks.flow_attacks", *sys.argv[1:]]) if __name__ == "__main__" else None
    result = {"format": "deform-robust-flow-attacks-noise/1" if noise else "deform-robust-flow-attacks/2",
              "command": argv or "benchmarks.flow_attacks.run", **({"seeds": list(NOISE_SEEDS)} if noise else {}),
              "standard_apgd_ce": apgd_ce_name(APGD_CE_RUNS[1], APGD_CE_RUNS[0]),
              "standard_apgd_t": apgd_t_name(*APGD_T_RUNS),
              "checks": {v: list(check_queries(v, max(budgets))) for v in ("standard", "legacy")},
              "git_revision": git_revision(exclude=out), "n": int(len(y)), "budgets": list(budgets),
              "images": images, "device": device, "machine": machine, "torch": torch.__version__,
              "wall_s": elapsed + time.perf_counter() - t0, "resumed": elapsed > 0, "models": key["models"],
              "rows": rows}
    atomic_write_text(out / f"{kind}.json", json.dumps(result, indent=1) + "\n")
    partial_file.unlink(missing_ok=True)  # missing: no pair to run
    if not (select or noise) and (out / "noise.json").is_file():
        (out / "noise.json").unlink()  # it re-ran the suites of the comparison just replaced
        logger.info("removed %s: run --noise-floor again for the new comparison", out / "noise.json")
    return result


def _write_report(out: Path) -> None:
    """``report.md`` and ``attacks.png`` from ``results.json`` (with ``noise.json`` where there is one)."""
    # the report draws with matplotlib: imported when the benchmark runs, so that --help stays fast
    from .flow_attacks_report import attacks_plot, render

    result = json.loads((out / "results.json").read_text())
    noise = json.loads((out / "noise.json").read_text()) if (out / "noise.json").is_file() else None
    atomic_write_text(out / "report.md", render(result, noise) + "\n")
    attacks_plot(result, out / "attacks.png")
    logger.info("wrote %s and %s", out / "report.md", out / "attacks.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    # the report draws with matplotlib: imported when the benchmark runs, so that --help stays fast
    from .flow_attacks_selection import render_selection

    p = argparse.ArgumentParser(prog="python -m benchmarks.flow_attacks", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/attacks", help="output folder (models cached in OUT/cache)")
    p.add_argument("--n", type=int, default=120, help="test images (2-core CPU: 16 minutes at 120 on a Xeon, 27 on an EPYC)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--select-restarts", action="store_true",
                   help=f"choose the runs of FlowAPGD-CE and FlowAPGD-T on held-out images {HELD_OUT[0]}-"
                        f"{HELD_OUT[1] - 1} (OUT/restarts.json, OUT/restarts.md; about 6 minutes)")
    p.add_argument("--noise-floor", action="store_true",
                   help=f"run only the two FlowAutoAttack versions again at attack seed(s) "
                        f"{', '.join(map(str, NOISE_SEEDS))} (OUT/noise.json; report.md re-rendered with it; "
                        f"about 10 minutes a seed on a 2-core Xeon)")
    p.add_argument("--render", action="store_true", help="only re-render the report(s) from OUT's json files")
    args = p.parse_args(argv)
    modes = [f for f, on in (("--select-restarts", args.select_restarts), ("--noise-floor", args.noise_floor),
                             ("--render", args.render)) if on]
    if len(modes) > 1:
        p.error(f"{' and '.join(modes)}: expected at most one of them, got {len(modes)}")
    if args.n < 1:
        p.error(f"--n: expected a positive integer, got {args.n}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.render:
        if (out / "restarts.json").is_file():
            selection = json.loads((out / "restarts.json").read_text())
            atomic_write_text(out / "restarts.md", render_selection(selection) + "\n")
        if (out / "results.json").is_file():
            _write_report(out)
        logger.info("re-rendered %s", out)
        return 0
    if args.noise_floor:
        if not (out / "results.json").is_file():
            p.error(f"--noise-floor: expected the comparison's {out / 'results.json'} (run without --noise-floor "
                    f"first), got no such file")
        n = json.loads((out / "results.json").read_text())["n"]
        if n != args.n:
            p.error(f"--n: expected the comparison's {n} images for --noise-floor, got {args.n}")
    result = run(out, n=args.n, device=args.device, progress=not args.no_progress, select=args.select_restarts,
                 noise=args.noise_floor)
    if args.select_restarts:
        atomic_write_text(out / "restarts.md", render_selection(result) + "\n")
        logger.info("wrote %s", out / "restarts.md")
    else:
        _write_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
