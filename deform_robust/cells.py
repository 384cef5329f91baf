"""Cells: the resumable units of a harness run, their files, fingerprints, seeds and the folder lock.

Cells:
    A *clean cell* per model (clean accuracy, per-example correctness, per-model checks)
    and an *attack cell* per (model, attack, budget). Each finished cell is written at once
    to ``<out>/cells/<model>__<attack>__<budget>__<hash>.json`` (atomically), so a killed run
    loses at most the cells in flight, and a restart with the same command skips every
    finished cell. A cell file that cannot be read (truncated, not UTF-8, not a JSON object,
    missing fields) is warned about and recomputed.

Staleness:
    Every cell stores a fingerprint of everything that determines its numbers: the suite
    version, the data (source, n and a hash of the images and labels), the model's weights,
    the attack family, parameters and budget, the batch size and the seed. A finished cell
    whose fingerprint differs from the current one is *stale*.

Seeds:
    Each cell seeds from :func:`fgr_defense.naming.derive_seed` of the base seed and the cell
    key, and each batch of a cell from the cell seed and the batch index, so results do not
    depend on which rank runs a cell.

Lock:
    :class:`OutputLock` (:mod:`fgr_defense.checkpoint`, re-exported here) holds an exclusive
    ``fcntl`` lock on ``<out>/.lock`` for the whole run; a second process on the same folder
    stops at once with a message naming the holder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fgr_defense.files import OutputLock, OutputLockedError, atomic_write_text
from fgr_defense.naming import derive_seed, file_slug, slugify

if TYPE_CHECKING:  # annotations only: this module stays torch-free (the reports read cells)
    from torch import Tensor

    from .config import EvalConfig

__all__ = [
    "SUITE_VERSION",
    "Cell",
    "CellStore",
    "OutputLock",
    "OutputLockedError",
    "assign_cells",
    "cell_components",
    "cell_seed",
    "data_fingerprint",
    "describe_change",
    "digest",
    "merge_records",
    "plan_cells",
]

logger = logging.getLogger(__name__)

#: Bump when a change to the harness changes the numbers of a cell (makes old cells stale).
SUITE_VERSION = "deform-robust-eval/2"

#: Longest slug of a model or attack name in a cell's file name (then a hash of the name).
_NAME_PART = 60

_REQUIRED = {"clean": ("kind", "key", "fingerprint", "model", "n", "clean_acc", "correct"),
             "attack": ("kind", "key", "fingerprint", "model", "attack", "budget", "budget_index", "robust_acc",
                        "robust")}


@dataclass(frozen=True)
class Cell:
    """One unit of work: the clean pass of a model (``attack=None``) or one attack at one budget."""

    model: str
    attack: str | None = None
    budget_index: int = -1
    budget: float = 0.0

    @property
    def key(self) -> str:
        """Stable identity of the cell (not its settings): the JSON list of its parts.

        Names may hold any character (``|`` too), so the parts are never joined with a
        separator: ``Cell("m|A", "B")`` and ``Cell("m", "A|B")`` have different keys.

        Example:
            >>> Cell("m").key, Cell("m|A", "B", 0, 1.0).key, Cell("m", "A|B", 0, 1.0).key
            ('["m"]', '["m|A", "B", 1.0]', '["m", "A|B", 1.0]')
        """
        parts: list[Any] = [self.model] if self.attack is None else [self.model, self.attack, float(self.budget)]
        return json.dumps(parts, ensure_ascii=False)

    @property
    def label(self) -> str:
        """Readable name of the cell for messages and logs, ``model|attack|budget`` (not unique)."""
        if self.attack is None:
            return f"{self.model}|clean"
        return f"{self.model}|{self.attack}|{self.budget!r}"

    @property
    def filename(self) -> str:
        """Readable, collision-free, bounded file name of the cell (:func:`fgr_defense.naming.file_slug`).

        The digest is of :attr:`key`; each name part is at most 60 characters (longer names
        are cut and get a hash of the whole name), so the file name stays far below the
        255-byte limit of file systems, and names without any ASCII letter or digit work.

        Example:
            >>> Cell("IGR(lam=1000)", "FlowPGD", 1, 0.5).filename
            'igr-lam-1000__flowpgd__0.5__...json'
        """
        return self._filename(self.key, _NAME_PART)

    @property
    def legacy_filename(self) -> str:
        """The file name format 2 of the harness gave the cell (read to keep finished cells)."""
        return self._filename(self.label, None)

    def _filename(self, ident: str, limit: int | None) -> str:
        def part(name: str) -> str:
            return slugify(name) if limit is None else file_slug(name, limit)

        digest_ = hashlib.sha256(ident.encode()).hexdigest()[:10]
        attack = "clean" if self.attack is None else f"{part(self.attack)}__{self.budget:g}"
        return f"{part(self.model)}__{attack}__{digest_}.json"


def cell_seed(base: int, cell: Cell) -> int:
    """The seed of a cell (31 bits), from the base seed and the cell's :attr:`~Cell.label`.

    The label (not the structured key) keeps the seeds, and so the numbers of finished
    cells, of earlier versions; two cells that share a label share a seed, which is
    harmless (their identity, files and records stay apart).

    Example:
        >>> cell_seed(0, Cell("m", "FlowPGD", 0, 1.0)) == cell_seed(0, Cell("m", "FlowPGD", 0, 1.0))
        True
    """
    return derive_seed(base, cell.label)


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


_VOLATILE = ("time_s", "device", "rank", "finished_at")


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


def _numbers(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in _VOLATILE}


def digest(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for every top-level component that differs.

    Example:
        >>> describe_change({"seed": 0, "n": 5}, {"seed": 1, "n": 5})
        'seed: 0 -> 1'
    """
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            parts.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
    return "; ".join(parts) or "fingerprint differs"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 120 else s[:117] + "..."


class CellStore:
    """Finished cells of an output folder (``<out>/cells/*.json``)."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / "cells"

    def path(self, cell: Cell) -> Path:
        return self.dir / cell.filename

    def read(self, cell: Cell) -> dict[str, Any] | None:
        """The finished record of ``cell``, or None (absent, or unreadable: warned, recomputed).

        A cell finished by format 2 of the harness (file named after the ``|``-joined label)
        is read too when its record's model, attack and budget are this cell's; it is
        returned with the structured key.
        """
        p = self.path(cell)
        if not p.is_file():
            return self._read_legacy(cell)
        rec = self._load(p)
        if rec is not None and rec.get("key") != cell.key:
            return self._bad(p, f"belongs to cell {rec.get('key')!r}, not {cell.key!r}")
        return rec

    def _load(self, p: Path) -> dict[str, Any] | None:
        try:
            rec = json.loads(p.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError) as err:
            return self._bad(p, f"not a readable JSON file ({type(err).__name__})")
        if not isinstance(rec, dict):
            return self._bad(p, f"holds a JSON {type(rec).__name__}, not an object")
        missing = [k for k in _REQUIRED.get(str(rec.get("kind")), ("kind",)) if k not in rec]
        if missing or rec.get("kind") not in _REQUIRED:
            return self._bad(p, f"lacks the field(s) {missing or ['kind']}")
        return rec

    def _read_legacy(self, cell: Cell) -> dict[str, Any] | None:
        try:
            p = self.dir / cell.legacy_filename
        except ValueError:  # a name format 2 could not write a file for
            return None
        if not p.is_file():
            return None
        rec = self._load(p)
        if rec is None or rec.get("key") != cell.label or rec.get("model") != cell.model:
            return None  # another cell's file (format 2 joined names with "|")
        if cell.attack is None:
            ok = rec["kind"] == "clean"
        else:
            ok = rec["kind"] == "attack" and rec.get("attack") == cell.attack and rec.get("budget") == cell.budget
        return {**rec, "key": cell.key} if ok else None

    @staticmethod
    def _bad(path: Path, why: str) -> None:
        warnings.warn(f"cell file {str(path)!r} {why}; it is recomputed", RuntimeWarning, stacklevel=3)
        logger.warning("cell file %s %s; recomputing it", path, why)
        return None

    def write(self, rec: dict[str, Any], cell: Cell) -> None:
        atomic_write_text(self.path(cell), json.dumps(rec, sort_keys=True) + "\n")


def plan_cells(cfg: EvalConfig) -> list[Cell]:
    """All cells of a config, model-major: the clean cell, then each attack and budget."""
    cells: list[Cell] = []
    for m in cfg.models:
        cells.append(Cell(m.name))
        for a in cfg.attacks:
            cells.extend(Cell(m.name, a.name, i, b) for i, b in enumerate(a.budgets))
    return cells


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    """sha256 of the test images and labels (CPU tensors)."""
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def cell_components(cfg: EvalConfig, cell: Cell, data_fp: str, model_fps: dict[str, Any]) -> dict[str, Any]:
    """What a cell's numbers depend on (stored with the cell; a change makes it stale)."""
    comp: dict[str, Any] = {
        "suite_version": SUITE_VERSION,
        "data": {"source": cfg.data.dataset, "pipeline": cfg.data.pipeline, "n": cfg.data.n, "sha256": data_fp},
        "model": model_fps[cell.model], "seed": cfg.seed,
    }
    if cell.attack is None:
        comp["checks"] = {"enabled": cfg.checks.enabled, "batch": cfg.checks.batch}
    else:
        a = cfg.attack(cell.attack)
        comp["attack"] = {"family": a.family, "params": a.params, "budget": cell.budget}
        comp["batch_size"] = cfg.data.batch_size
    return comp
