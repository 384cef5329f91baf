"""The driver: :func:`run_bench` runs the row groups of a :class:`~benchmarks.config.BenchConfig`."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .attacks import bench_attacks, bench_es, bench_stadv
from .common import Row, trained_smallcnn
from .config import FORMAT, BenchConfig, spec_for
from .report import evaluate_targets, load_average, machine_info, write_results
from .suite import bench_suite
from .training import bench_train

__all__ = ["bench_fingerprint", "run_bench"]

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent  # the repository root


def bench_fingerprint() -> str:
    """SHA-256 (16 hex digits) over this package's sources: which benchmark code produced a result.

    :func:`eval.provenance.code_fingerprint` covers the libraries and the harness, not benchmarks/.
    """
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _jobs(cfg: BenchConfig, device: torch.device) -> list[tuple[str, Callable[[], list[Row]]]]:
    """The row groups of the run, in order: attacks per model, the trained-SmallCNN groups, training."""
    jobs: list[tuple[str, Callable[[], list[Row]]]] = []
    if "attacks" in cfg.sections:
        jobs += [(f"attacks/{arch}", partial(bench_attacks, spec_for(cfg, device.type, arch), device, cfg))
                 for arch in cfg.models]
    trained_groups = {"stadv": bench_stadv, "es": bench_es, "suite": bench_suite}
    if "smallcnn" in cfg.models and any(s in cfg.sections for s in trained_groups):
        holder: dict[str, nn.Module] = {}
        spec = spec_for(cfg, device.type, "smallcnn")
        reps = spec.repeats if (cfg.quick or cfg.repeats is not None) else max(3, spec.repeats // 2)

        def trained() -> nn.Module:
            if "model" not in holder:
                holder["model"] = trained_smallcnn(device, cfg)
            return holder["model"]

        def group(bench: Callable[[nn.Module, torch.device, BenchConfig, int], list[Row]]) -> list[Row]:
            return bench(trained(), device, cfg, reps)

        jobs += [(f"{section}/smallcnn", partial(group, bench)) for section, bench in trained_groups.items()
                 if section in cfg.sections]
    if "train" in cfg.sections:
        jobs += [(f"train/{arch}", partial(bench_train, spec_for(cfg, device.type, arch), device, cfg))
                 for arch in cfg.models]
    return jobs


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; write ``bench.json`` and ``bench.md`` to ``cfg.out`` after each group.

    Returns:
        The results dict (see :data:`~benchmarks.config.FORMAT` and the package docstring).
    """
    # torch: imported when the benchmark runs, so that --help stays fast
    from tqdm.auto import tqdm

    from eval.provenance import code_fingerprint, git_revision
    from fgr_defense.device import resolve_device

    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.autocast_dtype is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"autocast_dtype: bf16 is not supported on {torch.cuda.get_device_name(device)}")
    results: dict[str, Any] = {
        "format": FORMAT, "command": cfg.command,
        "git_revision": git_revision(_ROOT, exclude=cfg.out), "code_fingerprint": code_fingerprint(_ROOT),
        "bench_fingerprint": bench_fingerprint(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(device),
        "load_before": load_average(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "rows": [], "targets": [], "complete": False,
    }
    start = time.perf_counter()
    for name, job in tqdm(_jobs(cfg, device), desc="bench", unit="group", disable=cfg.quick, dynamic_ncols=True):
        tick = time.perf_counter()
        rows = job()
        logger.info("bench %s: %.1f s", name, time.perf_counter() - tick)
        for r in rows:
            logger.info("  %-18s %-22s x%.3f", r["model"], r["row"], r["ratio"]["median"])
        results["rows"].extend(rows)
        results["targets"] = evaluate_targets(results["rows"])
        results["duration_s"] = time.perf_counter() - start
        write_results(results, cfg.out)
    results["load_after"] = load_average()
    results["complete"] = True
    results["duration_s"] = time.perf_counter() - start
    write_results(results, cfg.out)
    return results
