"""The grid runner: models x attacks x budgets, resumable cell by cell, sharded under torchrun.

Cells:
    A *clean cell* per model (clean accuracy, per-example correctness, per-model masking
    checks) and an *attack cell* per (model, attack, budget). Each finished cell is written at
    once to ``<out>/cells/<model>__<attack>__<budget>__<hash>.json`` through a temporary file and
    ``os.replace``, so a killed run loses at most the cells in flight, and a restart with the
    same command skips every finished cell.

Staleness:
    Every cell stores a fingerprint of everything that determines its numbers: the suite
    version, the data (dataset, n and a hash of the images and labels), the model's weights
    (hash of the checkpoint/weights file, or of the state dict), the attack family, parameters
    and budget, the batch size and the seed. When a finished cell's fingerprint differs from
    the current one, the run stops before doing any work with :class:`StaleResultsError`,
    naming the cells and what changed; ``overwrite_stale=True`` (``--overwrite-stale``)
    recomputes them instead.

Seeds:
    Each cell seeds from ``sha256(seed, model, attack, budget)``, and each batch of a cell from
    the cell seed and the batch index, inside ``torch.random.fork_rng`` (the caller's RNG state
    is left alone). Results are deterministic on CPU and independent of which rank runs a cell.

Robust accuracy (RobustBench convention):
    Over all ``n`` examples; an example counts as robust when it is classified correctly
    clean *and* after the attack. Only clean-correct examples are attacked; the mean flow
    norms and queries are over the attacked examples.

Worst case over the suite (AutoAttack style):
    Budget level ``i`` takes the ``i``-th budget of every attack that has one. An example is
    robust at level ``i`` only if it is classified correctly clean and after *every* attack at
    its level-``i`` budget; the worst-case accuracy is the fraction of such examples. It is
    therefore at most the robust accuracy of each attack at that level.

Distributed:
    Under ``torchrun`` (``WORLD_SIZE > 1``) the unfinished cells are split across ranks by
    :func:`assign_cells` (greedy, balanced by an estimated cost), each rank writes its cells,
    the cell records are gathered on rank 0 (``gather_object``; gloo on CPU, NCCL on CUDA),
    and rank 0 writes the merged results, report and plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fgr_defense.checkpoint import atomic_write_text
from torchattacks_deform.flow import flow_norm, warp

from .attacks import ATTACK_FAMILIES, attack_cost, budget_norm, build_attack
from .checks import (
    check_budget,
    check_es_beats_gradients,
    check_monotone_budget,
    emit,
    model_checks,
)
from .config import ConfigError, EvalConfig, ModelConfig
from .zoo import load_entry, model_fingerprint

__all__ = [
    "SUITE_VERSION",
    "Cell",
    "StaleResultsError",
    "assemble",
    "assign_cells",
    "atomic_write_text",
    "cell_seed",
    "evaluate",
    "merge_records",
    "plan_cells",
    "resolve_device",
    "worst_case",
]

logger = logging.getLogger(__name__)

#: Bump when a change to the harness changes the numbers of a cell (makes old cells stale).
SUITE_VERSION = "deform-robust-eval/1"


class StaleResultsError(RuntimeError):
    """Finished cells in the output folder were computed with different settings."""


@dataclass(frozen=True)
class Cell:
    """One unit of work: the clean pass of a model (``attack=None``) or one attack at one budget."""

    model: str
    attack: str | None = None
    budget_index: int = -1
    budget: float = 0.0

    @property
    def key(self) -> str:
        """Stable identity of the cell (not its settings)."""
        if self.attack is None:
            return f"{self.model}|clean"
        return f"{self.model}|{self.attack}|{self.budget!r}"

    @property
    def filename(self) -> str:
        """Readable, collision-free file name of the cell.

        Example:
            >>> Cell("IGR(lam=1000)", "FlowPGD", 1, 0.5).filename
            'IGR-lam-1000__FlowPGD__0.5__...json'
        """
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:10]
        attack = "clean" if self.attack is None else f"{_slug(self.attack)}__{self.budget:g}"
        return f"{_slug(self.model)}__{attack}__{digest}.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or "x"


def cell_seed(base: int, cell: Cell) -> int:
    """The seed of a cell: a hash of the base seed and the cell key (31 bits).

    Example:
        >>> cell_seed(0, Cell("m", "FlowPGD", 0, 1.0)) == cell_seed(0, Cell("m", "FlowPGD", 0, 1.0))
        True
    """
    return int(hashlib.sha256(f"{base}|{cell.key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def plan_cells(cfg: EvalConfig) -> list[Cell]:
    """All cells of a config, model-major: the clean cell, then each attack and budget."""
    cells: list[Cell] = []
    for m in cfg.models:
        cells.append(Cell(m.name))
        for a in cfg.attacks:
            cells.extend(Cell(m.name, a.name, i, b) for i, b in enumerate(a.budgets))
    return cells


def assign_cells(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Split cell indices over ranks, balancing the summed cost (greedy LPT).

    Every index goes to exactly one rank; each rank's list is sorted (model-major order is
    kept, so a rank loads each of its models once).

    Example:
        >>> assign_cells([5, 1, 1, 1, 1, 1], 2)
        [[0], [1, 2, 3, 4, 5]]
    """
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    loads = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world_size), key=lambda k: (loads[k], k))
        shards[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shards]


def merge_records(per_rank: Sequence[Sequence[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Merge cell records gathered from ranks into ``{cell key: record}``.

    Raises:
        RuntimeError: two ranks returned different numbers for the same cell.

    Example:
        >>> merge_records([[{"key": "a", "robust_acc": 0.5}], [{"key": "b", "robust_acc": 0.1}]])
        {'a': {'key': 'a', 'robust_acc': 0.5}, 'b': {'key': 'b', 'robust_acc': 0.1}}
    """
    merged: dict[str, dict[str, Any]] = {}
    for records in per_rank:
        for rec in records:
            old = merged.get(rec["key"])
            if old is not None and _numbers(old) != _numbers(rec):
                raise RuntimeError(f"cell {rec['key']!r}: ranks disagree on its results")
            merged[rec["key"]] = rec
    return merged


_VOLATILE = ("time_s", "device", "rank", "finished_at")


def _numbers(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in _VOLATILE}


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {spec!r} requested but CUDA is not available")
    return dev


# -- data ---------------------------------------------------------------------------------
def load_data(cfg: EvalConfig) -> tuple[Tensor, Tensor]:
    """The test images ``(n, C, H, W)`` in ``[0, 1]`` and labels of a config."""
    from fgr_defense.data import get_dataset

    ds = get_dataset(cfg.data.dataset, train=False, root=cfg.data.root, limit=cfg.data.n)
    if isinstance(ds, torch.utils.data.TensorDataset):
        images, labels = ds.tensors[0], ds.tensors[1]
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=500, shuffle=False)  # type: ignore[arg-type]
        xs, ys = zip(*loader)
        images, labels = torch.cat(xs), torch.cat(ys)
    if cfg.data.n is not None and len(labels) < cfg.data.n:
        raise ConfigError(f"data.n: {cfg.data.dataset!r} has only {len(labels)} test examples, asked for {cfg.data.n}")
    return images.float().contiguous(), labels.long().contiguous()


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


# -- fingerprints -------------------------------------------------------------------------
def _fingerprint_components(cfg: EvalConfig, cell: Cell, data_fp: str, model_fps: dict[str, Any]) -> dict[str, Any]:
    comp: dict[str, Any] = {
        "suite_version": SUITE_VERSION,
        "data": {"dataset": cfg.data.dataset, "n": cfg.data.n, "sha256": data_fp},
        "model": model_fps[cell.model],
        "seed": cfg.seed,
    }
    if cell.attack is None:
        comp["checks"] = {"enabled": cfg.checks.enabled, "batch": cfg.checks.batch}
    else:
        a = cfg.attack(cell.attack)
        comp["attack"] = {"family": a.family, "params": a.params, "budget": cell.budget}
        comp["batch_size"] = cfg.data.batch_size
    return comp


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            parts.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
    return "; ".join(parts) or "fingerprint differs"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 120 else s[:117] + "..."


# -- the work -----------------------------------------------------------------------------
class QueryCounter(nn.Module):
    """Wraps a model and counts the examples it is asked to classify (forward passes).

    The wrapper takes the wrapped model's train/eval mode: attacks save and restore the mode
    of the module they are given, and a fresh module is in train mode, which would otherwise
    leave the model in train mode after the attack (batch norm then normalizes the
    adversarial batch with its own statistics and updates its running averages).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        self.count += int(x.shape[0])
        return self.model(x)  # type: ignore[no-any-return]


def _predict(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            preds.append(model(images[i : i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(preds)


def _mask_str(mask: Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask(s: str) -> Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


def _check_model_io(model: nn.Module, m: ModelConfig, images: Tensor, num_classes: int, dataset: str,
                    device: torch.device) -> None:
    x = images[:2].to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ConfigError(
            f"{m.key}: the model does not accept {dataset!r} images of shape "
            f"{tuple(x.shape[1:])} (C, H, W): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"{m.key}: expected logits of shape (B, {num_classes}), got {shape}")
    if out.shape[1] != num_classes:
        raise ConfigError(
            f"{m.key}: the model has {out.shape[1]} outputs but dataset {dataset!r} has "
            f"{num_classes} classes"
        )


class _ModelCache:
    """Loads one model at a time on the device, with its clean predictions."""

    def __init__(self, cfg: EvalConfig, images: Tensor, labels: Tensor, device: torch.device) -> None:
        self.cfg, self.images, self.labels, self.device = cfg, images, labels, device
        self.name: str | None = None
        self.model: nn.Module | None = None
        self.meta: dict[str, Any] = {}
        self.correct = torch.zeros(0, dtype=torch.bool)

    def get(self, name: str) -> tuple[nn.Module, Tensor]:
        if self.name != name or self.model is None:
            from fgr_defense.data import dataset_info

            self.model = None
            m = self.cfg.model(name)
            model, self.meta = load_entry(m)
            model = model.to(self.device).eval()
            info = dataset_info(self.cfg.data.dataset)
            _check_model_io(model, m, self.images, info["num_classes"], self.cfg.data.dataset, self.device)
            self.correct = _predict(model, self.images, self.cfg.data.batch_size, self.device) == self.labels
            self.model, self.name = model, name
        return self.model, self.correct


def _run_clean(cfg: EvalConfig, cell: Cell, cache: _ModelCache) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, correct = cache.get(cell.model)
    findings: list[dict[str, Any]] = []
    if cfg.checks.enabled:
        k = min(cfg.checks.batch, len(cache.labels))
        x, y = cache.images[:k].to(cache.device), cache.labels[:k].to(cache.device)
        with torch.random.fork_rng(devices=_rng_devices(cache.device)):
            torch.manual_seed(cell_seed(cfg.seed, cell))
            findings = model_checks(model, x, y, cell.model)
    n = len(cache.labels)
    return {
        "kind": "clean", "model": cell.model, "n": n, "clean_count": int(correct.sum()),
        "clean_acc": float(correct.float().mean()), "correct": _mask_str(correct),
        "model_checks": findings, "architecture": type(model).__name__,
        "meta": _jsonable(cache.meta), "time_s": time.perf_counter() - t0,
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _run_attack(cfg: EvalConfig, cell: Cell, cache: _ModelCache) -> dict[str, Any]:
    assert cell.attack is not None
    a = cfg.attack(cell.attack)
    fam = ATTACK_FAMILIES[a.family]
    model, correct = cache.get(cell.model)
    n = len(cache.labels)
    idx = correct.nonzero().flatten()
    robust = correct.clone()
    linf, l2, reported = [], [], []
    seed = cell_seed(cfg.seed, cell)
    counter = QueryCounter(model)
    t0 = time.perf_counter()
    if cell.budget > 0 and len(idx):
        atk = build_attack(a.family, counter, cell.budget, a.params)
        bs = cfg.data.batch_size
        for b, start in enumerate(range(0, len(idx), bs)):
            sel = idx[start : start + bs]
            x, y = cache.images[sel].to(cache.device), cache.labels[sel].to(cache.device)
            with torch.random.fork_rng(devices=_rng_devices(cache.device)):
                torch.manual_seed(seed + b)
                flow = atk.get_flow(x, y)
            adv = warp(x, flow.to(x.dtype), padding_mode=getattr(atk, "padding_mode", "border")).clamp(0, 1)
            with torch.no_grad():
                robust[sel] = (model(adv).argmax(1) == y).cpu()
            linf.append(flow_norm(flow, "Linf").cpu())
            l2.append(flow_norm(flow, "L2").cpu())
            q = getattr(atk, "last_queries", None)
            if isinstance(q, Tensor):
                reported.append(q.detach().float().cpu().reshape(-1))
    elapsed = time.perf_counter() - t0
    lin = torch.cat(linf) if linf else torch.zeros(len(idx))
    l2n = torch.cat(l2) if l2 else torch.zeros(len(idx))
    attacked = max(len(idx), 1)
    rec: dict[str, Any] = {
        "kind": "attack", "model": cell.model, "attack": a.name, "family": a.family,
        "attack_kind": fam.kind, "uses_gradients": fam.uses_gradients,
        "budget_index": cell.budget_index, "budget": cell.budget,
        "budget_norm": budget_norm(a.family, a.params), "params": a.params,
        "n": n, "clean_count": int(correct.sum()), "clean_acc": float(correct.float().mean()),
        "n_attacked": len(idx), "robust_count": int(robust.sum()),
        "robust_acc": float(robust.float().mean()),
        "flow_linf_mean": float(lin.mean()) if len(lin) else 0.0,
        "flow_l2_mean": float(l2n.mean()) if len(l2n) else 0.0,
        "flow_linf_max": float(lin.max()) if len(lin) else 0.0,
        "flow_l2_max": float(l2n.max()) if len(l2n) else 0.0,
        "queries_per_sample": counter.count / attacked,
        "queries_reported": float(torch.cat(reported).mean()) if reported else None,
        "time_s": elapsed, "seed": seed, "robust": _mask_str(robust),
    }
    return rec


# -- cell store ---------------------------------------------------------------------------
class CellStore:
    """Finished cells of an output folder (``<out>/cells/*.json``)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "cells"

    def path(self, cell: Cell) -> Path:
        return self.dir / cell.filename

    def read(self, cell: Cell) -> dict[str, Any] | None:
        p = self.path(cell)
        if not p.is_file():
            return None
        try:
            rec: dict[str, Any] = json.loads(p.read_text())
        except json.JSONDecodeError:
            logger.warning("cell file %s is unreadable; recomputing it", p)
            return None
        return rec if rec.get("key") == cell.key else None

    def write(self, rec: dict[str, Any], cell: Cell) -> None:
        atomic_write_text(self.path(cell), json.dumps(rec, sort_keys=True) + "\n")


# -- distributed --------------------------------------------------------------------------
def _init_distributed(device_spec: str) -> tuple[int, int, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch.distributed as dist

    if world <= 1 or not dist.is_available():
        return 0, 1, False
    created = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), created


# -- orchestration ------------------------------------------------------------------------
def evaluate(
    cfg: EvalConfig,
    out: str | Path,
    overwrite_stale: bool = False,
    plots: bool | None = None,
    on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None,
    data: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) the grid of ``cfg`` into ``out`` and write results, report and plots.

    Args:
        cfg: a validated config (:func:`eval.config.load_config`).
        out: output folder; finished cells live in ``out/cells``.
        overwrite_stale: recompute finished cells whose settings changed instead of raising
            :class:`StaleResultsError`.
        plots: override ``cfg.plots.enabled``.
        on_cell_done: called after each finished cell is written (progress hooks, tests).
        data: ``(images, labels)`` to use instead of loading ``cfg.data`` (Python API).

    Returns:
        The results dict (as written to ``results.json``) on rank 0, ``None`` on other ranks.
    """
    out = Path(out)
    rank, world, created = _init_distributed(cfg.device)
    try:
        return _evaluate(cfg, out, overwrite_stale, plots, on_cell_done, data, rank, world)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate(
    cfg: EvalConfig, out: Path, overwrite_stale: bool, plots: bool | None,
    on_cell_done: Callable[[Cell, dict[str, Any]], None] | None,
    data: tuple[Tensor, Tensor] | None, rank: int, world: int,
) -> dict[str, Any] | None:
    device = resolve_device(cfg.device)
    model_fps = {m.name: model_fingerprint(m) for m in cfg.models}  # missing weights fail first
    images, labels = data if data is not None else load_data(cfg)
    images, labels = images.detach().cpu().float().contiguous(), labels.detach().cpu().long().contiguous()
    data_fp = data_fingerprint(images, labels)
    store = CellStore(out)
    cells = plan_cells(cfg)
    todo: list[tuple[Cell, dict[str, Any]]] = []
    done: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    idents: dict[str, dict[str, Any]] = {}
    for cell in cells:
        comp = _fingerprint_components(cfg, cell, data_fp, model_fps)
        idents[cell.key] = {"fingerprint": _digest(comp), "components": comp}
        rec = store.read(cell)
        if rec is not None and rec.get("fingerprint") == idents[cell.key]["fingerprint"]:
            done[cell.key] = rec
            continue
        if rec is not None:
            stale.append(f"{cell.key} ({_describe_change(rec.get('components', {}), comp)})")
        todo.append((cell, idents[cell.key]))
    if stale and not overwrite_stale:
        shown = "\n  ".join(stale[:10]) + (f"\n  ... and {len(stale) - 10} more" if len(stale) > 10 else "")
        raise StaleResultsError(
            f"{len(stale)} finished cell(s) in {store.dir} were computed with different settings "
            f"than the current config:\n  {shown}\nRe-run with --overwrite-stale to recompute "
            "them, or use a new --out folder."
        )
    if stale:
        logger.warning("recomputing %d stale cell(s) (--overwrite-stale)", len(stale))
    if rank == 0 and store.dir.is_dir():
        planned = {c.filename for c in cells}
        extra = [p.name for p in store.dir.glob("*.json") if p.name not in planned]
        if extra:
            logger.info("%d cell file(s) in %s belong to no model/attack/budget of this config; "
                        "they are kept but not reported", len(extra), store.dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
    logger.info("%s: %d cells, %d finished, %d to run (rank %d/%d, device %s)",
                cfg.name, len(cells), len(done), len(todo), rank, world, device)

    if world > 1:
        # Every rank read the cell files above; nobody writes one before all have (barrier),
        # and all ranks split rank 0's to-do list, so no cell is skipped or run twice.
        import torch.distributed as dist

        keys = [[c.key for c, _ in todo]]
        dist.barrier()
        dist.broadcast_object_list(keys, src=0)
        by_key = {c.key: c for c in cells}
        todo = [(by_key[k], idents[k]) for k in keys[0]]
        done = {k: v for k, v in done.items() if k not in set(keys[0])}

    costs = [0.1 if c.attack is None else attack_cost(cfg.attack(c.attack).family, cfg.attack(c.attack).params)
             for c, _ in todo]
    mine = [todo[i] for i in assign_cells(costs, world)[rank]]
    cache = _ModelCache(cfg, images, labels, device)
    new: list[dict[str, Any]] = []
    bar = tqdm(mine, desc=f"{cfg.name} [rank {rank}]" if world > 1 else cfg.name, unit="cell",
               disable=None, position=rank)
    for cell, ident in bar:
        rec = _run_clean(cfg, cell, cache) if cell.attack is None else _run_attack(cfg, cell, cache)
        rec.update(key=cell.key, device=str(device), rank=rank, **ident)
        store.write(rec, cell)
        new.append(rec)
        _log_cell(rec)
        if on_cell_done is not None:
            on_cell_done(cell, rec)
    bar.close()

    if world > 1:
        import torch.distributed as dist

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

    results = assemble(cfg, [done[c.key] for c in cells], device=str(device))
    from .report import write_outputs

    do_plots = cfg.plots.enabled if plots is None else plots
    plot_files: list[str] = []
    if do_plots:
        from .plots import model_plots

        plot_files = model_plots(cfg, out, images, labels, device, results)
    write_outputs(results, out, plot_files=plot_files, budget_plots=do_plots)
    return results


def _log_cell(rec: dict[str, Any]) -> None:
    if rec["kind"] == "clean":
        logger.info("cell %s: clean acc %.2f%% (%d/%d), %d check finding(s), %.1fs", rec["model"],
                    100 * rec["clean_acc"], rec["clean_count"], rec["n"], len(rec["model_checks"]), rec["time_s"])
    else:
        logger.info(
            "cell %s | %s @ %g px: robust %.2f%% (clean %.2f%%), flow Linf %.3f L2 %.3f px, "
            "%.1f queries/sample, %.1fs", rec["model"], rec["attack"], rec["budget"],
            100 * rec["robust_acc"], 100 * rec["clean_acc"], rec["flow_linf_mean"], rec["flow_l2_mean"],
            rec["queries_per_sample"], rec["time_s"])


# -- assembling results -------------------------------------------------------------------
def worst_case(cfg_attacks: Sequence[dict[str, Any]], model: str, clean: dict[str, Any],
               cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst case over the suite per budget level (see the module docstring).

    Example:
        >>> attacks = [{"name": "A", "budgets": [1.0, 2.0]}, {"name": "B", "budgets": [1.0]}]
        >>> clean = {"correct": "1110", "n": 4}
        >>> cells = [{"model": "m", "attack": "A", "budget_index": 0, "budget": 1.0, "robust": "1100"},
        ...          {"model": "m", "attack": "A", "budget_index": 1, "budget": 2.0, "robust": "1000"},
        ...          {"model": "m", "attack": "B", "budget_index": 0, "budget": 1.0, "robust": "0110"}]
        >>> [(w["level"], w["robust_count"], sorted(w["budgets"])) for w in worst_case(attacks, "m", clean, cells)]
        [(0, 1, ['A', 'B']), (1, 1, ['A'])]
    """
    by = {(c["attack"], c["budget_index"]): c for c in cells if c["model"] == model}
    levels = max((len(a["budgets"]) for a in cfg_attacks), default=0)
    out = []
    for i in range(levels):
        mask = _mask(clean["correct"])
        budgets = {}
        for a in cfg_attacks:
            if i < len(a["budgets"]):
                c = by[(a["name"], i)]
                mask &= _mask(c["robust"])
                budgets[a["name"]] = c["budget"]
        out.append({"model": model, "level": i, "budgets": budgets, "robust_count": int(mask.sum()),
                    "n": int(clean["n"]), "robust_acc": float(mask.float().mean()),
                    "robust": _mask_str(mask)})
    return out


def _versions() -> dict[str, str]:
    import torchattacks_deform

    return {"suite": SUITE_VERSION, "torch": torch.__version__,
            "torchattacks_deform": getattr(torchattacks_deform, "__version__", "?")}


def assemble(cfg: EvalConfig, records: Sequence[dict[str, Any]], device: str = "cpu") -> dict[str, Any]:
    """Build the results dict from all cell records of a config (and run the result checks)."""
    clean = {r["model"]: r for r in records if r["kind"] == "clean"}
    cells = [r for r in records if r["kind"] == "attack"]
    cfg_dict = cfg.to_dict()
    models = []
    for m in cfg.models:
        c = clean[m.name]
        models.append({**m.spec(), "clean_acc": c["clean_acc"], "clean_count": c["clean_count"],
                       "n": c["n"], "architecture": c.get("architecture"),
                       "fingerprint": c["components"]["model"], "correct": c["correct"]})
    worst = [w for m in cfg.models for w in worst_case(cfg_dict["attacks"], m.name, clean[m.name], cells)]
    findings: list[dict[str, Any]] = []
    for m in cfg.models:
        findings.extend(clean[m.name].get("model_checks", []))
    gradient_free = {a.name for a in cfg.attacks if not ATTACK_FAMILIES[a.family].uses_gradients}
    if cfg.checks.enabled:
        findings += check_es_beats_gradients(cells, gradient_free, cfg.checks.tolerance)
        findings += check_monotone_budget(cells, cfg.checks.tolerance)
        for c in cells:
            findings += check_budget(c)
    emit(findings)
    return {
        "format": SUITE_VERSION,
        "suite_version": SUITE_VERSION,
        "versions": _versions(),
        "name": cfg.name,
        "device": device,
        "config": cfg_dict,
        "data": {"dataset": cfg.data.dataset, "n": models[0]["n"] if models else 0,
                 "sha256": records[0]["components"]["data"]["sha256"] if records else None},
        "models": models,
        "cells": cells,
        "worst_case": worst,
        "worst_case_rule": (
            "budget level i takes the i-th budget of every attack that has one; an example is "
            "robust at level i only if it is classified correctly clean and after every attack "
            "at its level-i budget"
        ),
        "checks": findings,
    }
