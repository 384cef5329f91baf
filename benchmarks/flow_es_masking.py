"""How much FlowAutoAttack's gradient-free check finds on gradient-masked models, by its query budget.

``python -m benchmarks.flow_es_masking`` (issue 17): each FlowAutoAttack version ends with a
gradient-free masking check (legacy: FlowES; standard: FlowSquare), and it is most of its cost
(``results/attacks/report.md``, "What decides the cost clause per pair"). This measures what the
check's queries buy where it matters: on the 10 models of :mod:`benchmarks.flow_attacks` (reused from ``OUT/cache``) behind an
input quantization with an exactly zero input gradient (:class:`InputQuantized`; gradient masking
by discretization, which blinds every gradient attack), on the held-out test images 200-319, at
0.25 / 0.5 / 0.75 px. Per model and budget it runs the standard version's FlowAPGD-CE (to show the
gradients are masked) and the legacy version's FlowES (attack seed 0), and counts the examples FlowES fooled after
at most 500, 1,000 and all 2,000 of its steps' queries (FlowES stops an example at its first
fooling candidate, and a run with a smaller budget draws the same candidates up to it). Beside
it, :class:`~torchattacks_deform.FlowSquare` (the Square Attack's random search on flows, at
AutoAttack's ``p_init``) runs with 1,000 and with 2,000 queries, each a run of its own (its
schedule scales with its budget).

It writes ``OUT/masking.json`` and ``OUT/masking.md``; a crashed run resumes its finished pairs
(:mod:`benchmarks.partial`). About 10 minutes on a 2-core Xeon.

Example:
    >>> import torch
    >>> x = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    >>> out = InputQuantized(torch.nn.Flatten())(x)
    >>> torch.autograd.grad(out.sum(), x)[0].abs().sum().item()
    0.0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from deform_robust.data import load_test_data
from deform_robust.provenance import git_revision
from eval.provenance import machine as provenance_machine
from fgr_defense.files import OutputLock, atomic_write_text, remove_stale_temporaries
from torchattacks_deform import FlowSquare
from torchattacks_deform.autoattack import version_members

from . import flow_attacks, partial
from .flow_attacks import BUDGETS, HELD_OUT
from .flow_attacks_cost import check_queries

__all__ = ["CUTS", "InputQuantized", "main", "query_cuts", "render", "run"]

logger = logging.getLogger(__name__)

#: FlowSquare's query budgets (its clean check included).
SQUARE_QUERIES = (1000, 2000)
#: The fractions of FlowES's steps after which its finds are counted (its clean check, then ``population`` queries a step).
CUTS = (0.25, 0.5, 1.0)


def query_cuts(population: int, steps: int) -> list[int]:
    """FlowES's query counts after each fraction of :data:`CUTS` of its steps.

    Example:
        >>> query_cuts(20, 100)
        [501, 1001, 2001]
    """
    return [1 + population * round(steps * f) for f in CUTS]


class InputQuantized(nn.Module):
    """``inner`` applied to its input rounded to multiples of ``1 / levels``, with a zero input gradient."""

    def __init__(self, inner: nn.Module, levels: int = 255) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x: Tensor) -> Tensor:
        # x * 0 keeps the output attached to x, so that autograd returns zeros instead of failing
        return self.inner(x * 0 + (x.detach() * self.levels).round() / self.levels)  # type: ignore[no-any-return]


def run(out: str | Path, budgets: Sequence[float] = BUDGETS, images: Sequence[int] = HELD_OUT,
        device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Reuse (or train) the models, run FlowAPGD-CE, FlowES and FlowSquare on their masked versions, write
    ``masking.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        remove_stale_temporaries(out)
        return _run(out, budgets, images, device, progress)


def _run(out: Path, budgets: Sequence[float], images: Sequence[int], device: str, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    models = flow_attacks._models(out, device)
    lo, hi = images
    data = load_test_data("mnist5k", n=hi)
    x, y = data.images[lo:].to(device), data.labels[lo:].to(device)
    machine = f"{provenance_machine(device)['cpu']} ({torch.get_num_threads()} torch threads)"
    # FlowAPGD-CE of the standard version, FlowES of the legacy one (the standard version ends with FlowSquare)
    members = {eps: {name: (cls, kw) for v in ("legacy", "standard") for name, cls, kw in version_members(v, eps)}
               for eps in budgets}
    key = partial.resume_key("masking", list(images), budgets, device, machine, models,
                             {repr(eps): ["FlowAPGD-CE", "FlowES", *(f"FlowSquare {q}" for q in SQUARE_QUERIES)]
                              for eps in budgets})
    partial_file = out / ".masking.partial.json"
    done, elapsed = partial.load(partial_file, key)
    rows: list[dict[str, Any]] = []
    jobs = [(name, model, eps) for name, model in models for eps in budgets]
    for name, model, eps in tqdm(jobs, desc="masked models", unit="model x budget", disable=None if progress else True):
        pair = f"{name} @ {eps!r}"
        if pair in done:
            rows += done[pair]
            continue
        masked = InputQuantized(model).eval()
        with torch.no_grad():
            correct = masked(x).argmax(1) == y
        xs, ys = x[correct], y[correct]
        row: dict[str, Any] = {"model": name, "eps": eps, "n": int(len(y)), "clean": int(correct.sum())}
        attacks = [(m, *members[eps][m]) for m in ("FlowAPGD-CE", "FlowES")]
        attacks += [(f"FlowSquare {q}", FlowSquare, dict(eps=eps, queries=q, seed=0)) for q in SQUARE_QUERIES]
        for member, cls, kwargs in attacks:
            atk = cls(masked, **kwargs)
            torch.manual_seed(0)
            adv = atk(xs, ys)
            with torch.no_grad():
                fooled = masked(adv).argmax(1) != ys
            row[member] = int(fooled.sum())
            if member == "FlowES":
                cuts = query_cuts(int(kwargs["population"]), int(kwargs["steps"]))
                row["es_within"] = {str(c): int((fooled & (atk.last_queries <= c)).sum()) for c in cuts}
                row["es_queries"] = check_queries("legacy", eps)[1]
        rows.append(row)
        logger.debug("%s", row)
        done[pair] = [row]
        partial.save(partial_file, key, done, elapsed + time.perf_counter() - t0)
    argv = " ".join(["python -m benchmarks.flow_es_masking", *sys.argv[1:]]) if __name__ == "__main__" else None
    result = {"format": "deform-robust-flow-es-masking/2", "command": argv or "benchmarks.flow_es_masking.run",
              "git_revision": git_revision(exclude=out), "images": list(images), "budgets": list(budgets),
              "device": device, "machine": machine, "torch": torch.__version__,
              "wall_s": elapsed + time.perf_counter() - t0, "resumed": elapsed > 0, "models": key["models"],
              "rows": rows}
    atomic_write_text(out / "masking.json", json.dumps(result, indent=1) + "\n")
    partial_file.unlink(missing_ok=True)
    return result


def render(result: Mapping[str, Any]) -> str:
    """The Markdown report of :func:`run`'s dict.

    Example:
        >>> row = dict(model="m", eps=0.5, n=4, clean=4, es_queries=2001, **{"FlowAPGD-CE": 0, "FlowES": 2},
        ...            es_within={"501": 1, "1001": 1, "2001": 2})
        >>> text = render(dict(command="c", git_revision="r", machine="x", wall_s=1.0, images=[0, 4], rows=[row]))
        >>> "| m | 0.5 | 4 | 0 | 1 | 1 | 2 |" in text, "1 of the 2 examples" in text
        (True, True)
        >>> row["FlowSquare 1000"] = 3
        >>> text = render(dict(command="c", git_revision="r", machine="x", wall_s=1.0, images=[0, 4], rows=[row]))
        >>> "| m | 0.5 | 4 | 0 | 1 | 1 | 2 | 3 |" in text, "at least as many on 1 of 1 model" in text
        (True, True)
    """
    rows = result["rows"]
    lo, hi = result["images"]
    cuts = list(rows[0]["es_within"]) if rows else []
    full = max(cuts, key=int) if cuts else ""
    squares = [k for k in rows[0] if k.startswith("FlowSquare ")] if rows else []
    heads = [f"FlowES, {int(c) - 1:,} queries" for c in cuts] + [f"FlowSquare, {int(k.split()[1]):,} queries"
                                                                   for k in squares]
    lines = ["# FlowAutoAttack's masking check on gradient-masked models (issue 17)", "",
             f"- Command: `{result['command']}` at revision `{result['git_revision']}`; {result['machine']}; "
             f"wall time {result['wall_s']:.0f} s" + (" (resumed after an interruption)" if result.get("resumed") else ""),
             f"- MNIST-5k test images {lo}-{hi - 1} (held out from the comparison in report.md); the 10 models of the "
             f"comparison behind an input quantization to 1/255 with a zero input gradient (gradient masking by "
             f"discretization). Per model and budget, the examples classified correctly, then those fooled by the "
             f"standard version's FlowAPGD-CE and by the legacy version's FlowES (attack seed 0) after at most the given number of "
             f"FlowES's model queries"
             + (", and by FlowSquare (seed 0) run with the given number of queries." if squares else "."), "",
             "| model | budget | correct | FlowAPGD-CE | " + " | ".join(heads) + " |",
             "|---|---|---|---|" + "---|" * len(heads)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eps']:g} | {r['clean']} | {r['FlowAPGD-CE']} | "
                     + " | ".join([*(str(r["es_within"][c]) for c in cuts), *(str(r[k]) for k in squares)]) + " |")
    totals = {c: sum(r["es_within"][c] for r in rows) for c in cuts}
    square_totals = {k: sum(r[k] for r in rows) for k in squares}
    grad = sum(r["FlowAPGD-CE"] for r in rows)
    lines += [f"| **total** | | {sum(r['clean'] for r in rows)} | {grad} | "
              + " | ".join([*(f"**{totals[c]}**" for c in cuts), *(f"**{square_totals[k]}**" for k in squares)])
              + " |", ""]
    for c in cuts:
        if c != full and totals[full]:
            lines.append(f"- A check of {int(c) - 1:,} queries would have fooled {totals[c]} of the {totals[full]} "
                         f"examples the full check fooled ({100 * (1 - totals[c] / totals[full]):.0f}% fewer).")
    for k in squares:
        if full:
            wins = sum(r[k] >= r["es_within"][full] for r in rows)
            lines.append(f"- FlowSquare with {int(k.split()[1]):,} queries fooled {square_totals[k]} examples, FlowES "
                         f"with {int(full) - 1:,} fooled {totals[full]}; at least as many on {wins} of {len(rows)} model "
                         f"x budget pairs.")
    return "\n".join(lines + [""])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow_es_masking", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/attacks", help="output folder (models reused from OUT/cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--render", action="store_true", help="only re-render OUT/masking.md from OUT/masking.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.render:
        if not (out / "masking.json").is_file():
            p.error(f"--render: expected {out / 'masking.json'}, got no such file")
        result = json.loads((out / "masking.json").read_text())
    else:
        result = run(out, device=args.device, progress=not args.no_progress)
    atomic_write_text(out / "masking.md", render(result) + "\n")
    logger.info("wrote %s", out / "masking.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
