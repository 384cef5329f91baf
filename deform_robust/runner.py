"""The grid runner: models x attacks x budgets, resumable cell by cell, sharded under torchrun.

:func:`run_config` plans the cells of a config (:mod:`deform_robust.cells`), skips the
finished ones, refuses stale ones (or recomputes them with ``overwrite_stale``), runs the
rest, and writes ``results.json``, ``results.csv`` and ``worst_case.csv``
(:mod:`deform_robust.results`). It holds a lock on the output folder for the whole run.

Attacks run through their registry entry (:mod:`deform_robust.registry`). Flow attacks
(every attack with ``get_flow`` and ``apply_flow``) are asked for their flow, and the
adversarial images are ``atk.apply_flow(x, flow)``: the attack's own warp, padding and
clamping. Other attacks (``torchattacks.*``, most user callables) return images; their
perturbation is measured in pixel values. Sizes are reported per cell in the budget's unit.

Distributed:
    Under ``torchrun`` (``WORLD_SIZE > 1``) the unfinished cells are split across ranks by
    :func:`~deform_robust.cells.assign_cells` (balanced by the attacks' own ``cost``), each
    rank writes its cells, the records are gathered on rank 0, and rank 0 writes the results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import torchattacks_deform
from fgr_defense.device import resolve_device
from fgr_defense.distributed import init_distributed
from fgr_defense.files import atomic_write_text, remove_stale_temporaries
from torchattacks_deform import flow_norm
from torchattacks_deform.engine import attack_batch, seeded
from torchattacks_deform.report import fraction
from torchattacks_deform.validation import check_logits

from .cells import (
    SUITE_VERSION,
    Cell,
    CellStore,
    OutputLock,
    assign_cells,
    cell_components,
    cell_seed,
    data_fingerprint,
    describe_change,
    digest,
    merge_records,
    plan_cells,
)
from .checks import (
    check_budget,
    check_es_beats_gradients,
    check_monotone_budget,
    emit,
    model_checks,
)
from .config import ConfigError, EvalConfig, ModelConfig
from .data import TestData, load_test_data
from .models import load_entry, model_fingerprint
from .provenance import models_weights_sha256, provenance
from .results import assemble, mask_str, write_results

__all__ = ["ModelCache", "QueryCounter", "StaleResultsError", "run_config"]

logger = logging.getLogger(__name__)


class StaleResultsError(RuntimeError):
    """Finished cells in the output folder were computed with different settings."""


class QueryCounter(nn.Module):
    """Wraps a model and counts the examples it is asked to classify (forward passes).

    The wrapper takes the wrapped model's train/eval mode: attacks save and restore the mode
    of the module they are given, and a fresh module is in train mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        self.count += int(x.shape[0])
        return self.model(x)  # type: ignore[no-any-return]


def _logits(model: nn.Module, x: Tensor, m: ModelConfig) -> Tensor:
    out = model(x)
    try:
        check_logits(out, x.shape[0], "model output", finite=True)
    except (TypeError, ValueError) as err:  # the config's model: name it
        raise ConfigError(f"{m.key}: {err}") from None
    return out


class ModelCache:
    """Loads one model at a time on the device, with its clean predictions (checked once)."""

    def __init__(self, cfg: EvalConfig, data: TestData, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.name: str | None = None
        self.model: nn.Module | None = None
        self.meta: dict[str, Any] = {}
        self.correct = torch.zeros(0, dtype=torch.bool)

    def get(self, name: str) -> tuple[nn.Module, Tensor]:
        if self.name != name or self.model is None:
            self.model = None
            m = self.cfg.model(name)
            model, self.meta = load_entry(m)
            model = model.to(self.device).eval()
            preds = []
            with torch.no_grad():
                for i in range(0, len(self.data.labels), self.cfg.data.batch_size):
                    x = self.data.images[i:i + self.cfg.data.batch_size].to(self.device)
                    try:
                        out = _logits(model, x, m)
                    except ConfigError:
                        raise
                    except Exception as err:  # noqa: BLE001 - the model cannot take these images at all
                        raise ConfigError(f"{m.key}: the model does not accept {self.data.source!r} images of "
                                          f"shape {tuple(x.shape[1:])}: {type(err).__name__}: {err}") from err
                    if out.shape[1] < self.data.num_classes:
                        raise ConfigError(f"{m.key}: the model has {out.shape[1]} outputs but the data has "
                                          f"{self.data.num_classes} classes")
                    preds.append(out.argmax(1).cpu())
            self.correct = torch.cat(preds) == self.data.labels
            self.model, self.name = model, name
        return self.model, self.correct


def _run_clean(cfg: EvalConfig, cell: Cell, cache: ModelCache) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, correct = cache.get(cell.model)
    findings: list[dict[str, Any]] = []
    if cfg.checks.enabled:
        k = min(cfg.checks.batch, len(cache.data.labels))
        x, y = cache.data.images[:k].to(cache.device), cache.data.labels[:k].to(cache.device)
        with seeded(cell_seed(cfg.seed, cell), cache.device):
            findings = model_checks(model, x, y, cell.model)
    return {"kind": "clean", "model": cell.model, "n": len(correct), "clean_count": int(correct.sum()),
            "clean_acc": fraction(correct), "correct": mask_str(correct),
            "model_checks": findings, "architecture": type(model).__name__,
            "meta": json.loads(json.dumps(cache.meta, default=str)), "time_s": time.perf_counter() - t0}


def _sizes(delta: Tensor, space: str) -> tuple[Tensor, Tensor]:
    if space == "flow":
        return flow_norm(delta, "Linf").cpu(), flow_norm(delta, "L2").cpu()
    flat = delta.flatten(1)
    return flat.abs().amax(1).cpu(), flat.norm(dim=1).cpu()


def _running_robust(robust: Tensor, idx: Tensor, done: int) -> str:
    """Robust accuracy over all ``n`` examples as the attacked ones so far predict it (the bar's postfix)."""
    n = len(robust)
    survived = float(robust[idx[:done]].float().mean()) if done else 1.0
    return f"robust ~{100 * survived * len(idx) / max(n, 1):.1f}% ({done}/{len(idx)} attacked)"


def _run_attack(cfg: EvalConfig, cell: Cell, cache: ModelCache, progress: bool | None = False) -> dict[str, Any]:
    """One attack cell; ``progress``: a bar over its batches with the running robust accuracy (None: on a terminal)."""
    assert cell.attack is not None
    a = cfg.attack(cell.attack)
    entry = a.resolved
    model, correct = cache.get(cell.model)
    idx = correct.nonzero().flatten()
    robust = correct.clone()
    linf, l2, reported = [], [], []
    seed = cell_seed(cfg.seed, cell)
    counter = QueryCounter(model)
    t0 = time.perf_counter()
    if cell.budget > 0 and len(idx):
        atk = entry.build(counter, cell.budget, a.params)
        bs = cfg.data.batch_size
        starts = range(0, len(idx), bs)
        bar = tqdm(total=len(starts), desc=f"{a.name} @ {cell.budget:g}", unit="batch", leave=False,
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        for b, start in enumerate(starts):
            sel = idx[start:start + bs]
            x, y = cache.data.images[sel].to(cache.device), cache.data.labels[sel].to(cache.device)
            outcome = attack_batch(model, atk, x, y, seed=seed + b)
            robust[sel] = (~outcome.fooled).cpu()
            lin, l2n = _sizes(outcome.displacement, entry.info.space)
            linf.append(lin)
            l2.append(l2n)
            q = getattr(atk, "last_queries", None)
            if isinstance(q, Tensor):
                reported.append(q.detach().float().cpu().reshape(-1))
            bar.set_postfix_str(_running_robust(robust, idx, start + len(sel)), refresh=False)
            bar.update(1)
        bar.close()
    lin_all = torch.cat(linf) if linf else torch.zeros(0)
    l2_all = torch.cat(l2) if l2 else torch.zeros(0)

    def stat(t: Tensor, how: str) -> float:
        return float(getattr(t, how)()) if len(t) else 0.0

    return {
        "kind": "attack", "model": cell.model, "attack": a.name, "family": a.family,
        "attack_kind": entry.info.kind, "uses_gradients": entry.info.uses_gradients, "space": entry.info.space,
        "budget_index": cell.budget_index, "budget": cell.budget, "budget_unit": entry.budget_unit,
        "budget_norm": entry.budget_norm(a.params), "params": a.params,
        "n": len(correct), "clean_count": int(correct.sum()), "clean_acc": fraction(correct),
        "n_attacked": len(idx), "robust_count": int(robust.sum()), "robust_acc": fraction(robust),
        "linf_mean": stat(lin_all, "mean"), "l2_mean": stat(l2_all, "mean"),
        "linf_max": stat(lin_all, "max"), "l2_max": stat(l2_all, "max"),
        "queries_per_sample": counter.count / max(len(idx), 1),
        "queries_reported": float(torch.cat(reported).mean()) if reported else None,
        "time_s": time.perf_counter() - t0, "seed": seed, "robust": mask_str(robust),
    }


def _log_cell(rec: dict[str, Any]) -> None:
    if rec["kind"] == "clean":
        logger.info("cell %s: clean acc %.2f%% (%d/%d), %d check finding(s), %.1fs", rec["model"],
                    100 * rec["clean_acc"], rec["clean_count"], rec["n"], len(rec["model_checks"]), rec["time_s"])
    else:
        logger.info("cell %s | %s @ %g %s: robust %.2f%% (clean %.2f%%), size Linf %.3f L2 %.3f, "
                    "%.1f queries/sample, %.1fs", rec["model"], rec["attack"], rec["budget"], rec["budget_unit"],
                    100 * rec["robust_acc"], 100 * rec["clean_acc"], rec["linf_mean"], rec["l2_mean"],
                    rec["queries_per_sample"], rec["time_s"])


def run_config(
    cfg: EvalConfig,
    out: str | Path,
    overwrite_stale: bool = False,
    on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None,
    data: TestData | None = None,
    progress: bool | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) the grid of ``cfg`` into ``out`` and write ``results.json`` and the CSVs.

    Args:
        cfg: a validated config (:func:`deform_robust.config.load_config`).
        out: output folder; finished cells live in ``out/cells``.
        overwrite_stale: recompute finished cells whose settings changed instead of raising
            :class:`StaleResultsError`.
        on_cell_done: called after each finished cell is written (progress hooks, tests).
        data: test data to use instead of loading ``cfg.data`` (Python API).
        progress: show progress bars (None: when stderr is a terminal): one over the cells (the
            current model k/N and cell), and one over each attack cell's batches with the running
            robust accuracy; both with elapsed time and ETA. ``False`` shows none.

    Returns:
        The results dict (as written to ``results.json``) on rank 0, None on other ranks.

    Raises:
        OutputLockedError: another process holds ``out``.
        StaleResultsError: finished cells disagree with ``cfg`` (see ``overwrite_stale``).
    """
    out = Path(out)
    ctx = init_distributed()
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    lock = OutputLock(out).acquire() if rank == 0 else None
    try:
        if lock is not None:  # nobody else writes here now: leftovers of a killed run go
            for folder in (out, out / "cells"):
                remove_stale_temporaries(folder)
        return _run(cfg, out, overwrite_stale, on_cell_done, data, progress, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: EvalConfig, out: Path, overwrite_stale: bool,
         on_cell_done: Callable[[Cell, dict[str, Any]], None] | None,
         data: TestData | None, progress: bool | None, rank: int, world: int) -> dict[str, Any] | None:
    device = resolve_device(cfg.device)
    model_fps = {m.name: model_fingerprint(m) for m in cfg.models}  # missing weights fail first
    if data is None:
        data = load_test_data(cfg.data.dataset, cfg.data.root, cfg.data.n, cfg.data.pipeline)
    data_fp = data_fingerprint(data.images, data.labels)
    store = CellStore(out)
    cells = plan_cells(cfg)
    todo: list[tuple[Cell, dict[str, Any]]] = []
    done: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    idents: dict[str, dict[str, Any]] = {}
    for cell in cells:
        comp = cell_components(cfg, cell, data_fp, model_fps)
        idents[cell.key] = {"fingerprint": digest(comp), "components": comp}
        rec = store.read(cell)
        if rec is not None and rec.get("fingerprint") == idents[cell.key]["fingerprint"]:
            done[cell.key] = rec
            continue
        if rec is not None:
            stale.append(f"{cell.label} ({describe_change(rec.get('components') or {}, comp)})")
        todo.append((cell, idents[cell.key]))
    if stale and not overwrite_stale:
        shown = "\n  ".join(stale[:10]) + (f"\n  ... and {len(stale) - 10} more" if len(stale) > 10 else "")
        raise StaleResultsError(
            f"{len(stale)} finished cell(s) in {store.dir} were computed with different settings than the "
            f"current config:\n  {shown}\nRe-run with --overwrite-stale to recompute them, or use a new --out.")
    if stale:
        logger.warning("recomputing %d stale cell(s) (--overwrite-stale)", len(stale))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
    logger.info("%s: %d cells, %d finished, %d to run (rank %d/%d, device %s)",
                cfg.name, len(cells), len(done), len(todo), rank, world, device)
    if world > 1:
        # Every rank read the cell files; nobody writes one before all have (barrier), and all
        # ranks split rank 0's to-do list, so no cell is skipped or run twice.
        keys = [[c.key for c, _ in todo]]
        dist.barrier()
        dist.broadcast_object_list(keys, src=0)
        by_key = {c.key: c for c in cells}
        todo = [(by_key[k], idents[k]) for k in keys[0]]
        done = {k: v for k, v in done.items() if k not in set(keys[0])}
    costs = [0.1 if c.attack is None else cfg.attack(c.attack).resolved.cost(cfg.attack(c.attack).params)
             for c, _ in todo]
    mine = [todo[i] for i in assign_cells(costs, world)[rank]]
    cache = ModelCache(cfg, data, device)
    new: list[dict[str, Any]] = []
    bar = tqdm(mine, desc=f"{cfg.name} [rank {rank}]" if world > 1 else cfg.name, unit="cell",
               disable=None if progress is None else not progress, position=rank, dynamic_ncols=True)
    batches = progress if world == 1 else False  # the nested bars of several ranks would overwrite each other
    names = [m.name for m in cfg.models]
    current: str | None = None
    with contextlib.nullcontext() if bar.disable else logging_redirect_tqdm():  # log lines above the bars
        for cell, ident in bar:
            k = names.index(cell.model) + 1
            if cell.model != current:
                current = cell.model
                logger.info("model %d/%d: %s (%d cell(s) to run)", k, len(names), cell.model,
                            sum(c.model == cell.model for c, _ in mine))
            bar.set_postfix_str(f"model {k}/{len(names)}: {cell.label}")
            rec = (_run_clean(cfg, cell, cache) if cell.attack is None
                   else _run_attack(cfg, cell, cache, progress=batches))
            rec.update(key=cell.key, device=str(device), rank=rank, **ident)
            store.write(rec, cell)
            new.append(rec)
            _log_cell(rec)
            if on_cell_done is not None:
                on_cell_done(cell, rec)
    bar.close()
    if world > 1:
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(new, gathered, dst=0)
        if rank != 0:
            return None
        assert gathered is not None
        for key, rec in merge_records([g or [] for g in gathered]).items():
            done[key] = rec
            cell = next(c for c in cells if c.key == key)
            if store.read(cell) is None:  # no shared file system: rank 0 keeps a copy
                store.write(rec, cell)
    else:
        done.update({r["key"]: r for r in new})
    records = [done[c.key] for c in cells]
    summary = {"source": data.source, "n": len(data.labels), "num_classes": data.num_classes, "shape": list(data.shape)}
    results = assemble(cfg, records, summary, str(device), _findings(cfg, records), _versions())
    results["provenance"] = provenance(weights_sha256=models_weights_sha256(results["models"]), exclude=out)
    write_results(results, out)
    return results


def _findings(cfg: EvalConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The masking checks' findings: each model's (computed with its clean cell) and the result checks (warned)."""
    cells = [r for r in records if r["kind"] == "attack"]
    findings: list[dict[str, Any]] = [f for r in records if r["kind"] == "clean" for f in r.get("model_checks", [])]
    if cfg.checks.enabled:
        findings += check_es_beats_gradients(cells, cfg.checks.tolerance)
        findings += check_monotone_budget(cells, cfg.checks.tolerance)
        for c in cells:
            findings += check_budget(c)
    emit(findings)
    return findings


def _versions() -> dict[str, str]:
    return {"suite": SUITE_VERSION, "torch": torch.__version__,
            "torchattacks_deform": getattr(torchattacks_deform, "__version__", "?")}
