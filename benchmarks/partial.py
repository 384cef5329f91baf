"""The partial results of a benchmark run, so that a crashed run resumes its finished work.

A run writes each finished unit's rows (:mod:`benchmarks.flow_attacks`: a model x budget pair)
to one partial JSON file at once (atomically, :func:`save`), under a key of everything the rows
depend on (:func:`resume_key`). The same command run again after a crash reuses them
(:func:`load`) when the key is the same; otherwise the file is discarded with a warning. A unit's
rows, times included, always come from one process; ``elapsed_s`` sums the runs' finished work.
The run removes the file once its result is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from fgr_defense.files import atomic_write_text  # torch-free: --help stays fast

__all__ = ["load", "resume_key", "save"]

logger = logging.getLogger(__name__)


def resume_key(kind: str, images: Sequence[int], budgets: Sequence[float], device: str, machine: str,
               models: Sequence[tuple[str, Any]], attacks: dict[str, list[str]]) -> dict[str, Any]:
    """What a partial file's rows depend on: a resumed run reuses them only under the same key.

    ``kind`` names the json (``results``, ``restarts`` or ``noise``), ``images`` the test images'
    range, ``models`` the ``(name, module)`` pairs (their weights are hashed), ``attacks`` each
    budget's attack names (with their seeds); the code is fingerprinted
    (:func:`eval.provenance.code_fingerprint` and the sources of :mod:`benchmarks`), and torch's version.

    Example:
        >>> import torch
        >>> m = [("m", torch.nn.Linear(2, 2))]
        >>> k = resume_key("results", [0, 4], [0.5], "cpu", "x86_64", m, {"0.5": ["FlowES@0"]})
        >>> k == resume_key("results", [0, 4], [0.5], "cpu", "x86_64", m, {"0.5": ["FlowES@0"]})
        True
    """
    # torch and the harness: imported when the benchmark runs, so that --help stays fast
    import torch

    from deform_robust.models import state_dict_sha256
    from eval.provenance import code_fingerprint

    bench = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
    code = code_fingerprint() + ":" + bench.hexdigest()[:16]
    return {"kind": kind, "images": list(images), "budgets": list(budgets), "device": device, "machine": machine,
            "torch": torch.__version__, "code": code, "models": {name: state_dict_sha256(m) for name, m in models},
            "attacks": attacks}


def load(path: Path, key: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """The finished pairs' rows and the seconds they took, from a partial file made under ``key``."""
    if not path.is_file():
        return {}, 0.0
    try:
        saved = json.loads(path.read_text())
        old, done, elapsed = saved["key"], saved["done"], float(saved["elapsed_s"])
        if not (isinstance(old, dict) and isinstance(done, dict) and all(
                isinstance(rows, list) and all(isinstance(r, dict) for r in rows) for rows in done.values())):
            raise TypeError("not the partial file's layout")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        warnings.warn(f"{path}: unreadable partial results; starting over", stacklevel=3)
        return {}, 0.0
    if old != key:
        changed = sorted(k for k in key if old.get(k) != key[k])
        warnings.warn(f"{path}: made under another {', '.join(changed) or 'format'}; starting over", stacklevel=3)
        return {}, 0.0
    logger.info("resuming from %s: %d finished unit(s)", path, len(done))
    return done, elapsed


def save(path: Path, key: dict[str, Any], done: dict[str, list[dict[str, Any]]], elapsed_s: float) -> None:
    """Write the finished units' rows ``done`` and their seconds under ``key`` to ``path`` (atomically)."""
    atomic_write_text(path, json.dumps({"key": key, "done": done, "elapsed_s": elapsed_s}))
