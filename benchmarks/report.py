"""Targets, ``bench.md`` and ``bench.json``: what a run's rows are checked against and how they are written.

Example:
    >>> stats = {"median": 0.4, "q1": 0.3, "q3": 0.5, "min": 0.2, "max": 0.6, "n": 3}
    >>> [t["met"] for t in evaluate_targets([{"section": "suite", "model": "m", "row": "FlowAutoAttack",
    ...                                       "ratio": stats}])]
    [True]
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .config import SECTIONS, STADV_RATE

__all__ = ["TARGETS", "Target", "evaluate_targets", "format_markdown", "load_average", "machine_info",
           "write_results"]


@dataclass(frozen=True)
class Target:
    """A performance target: ``value(row) <= limit``."""

    name: str
    section: str
    row: str
    limit: float
    model: Optional[str] = None
    key: str = "ratio"  # "ratio", "ratio_to_igr" or "memory_to_igr"


TARGETS = (
    Target("FlowPGD / PGD per step, SmallCNN", "attacks", "FlowPGD", 1.5, "smallcnn"),
    Target("FlowPGD / PGD per step, VGG-11", "attacks", "FlowPGD", 1.15, "vgg11"),
    Target("FlowPGD / PGD per step, ResNet-18", "attacks", "FlowPGD", 1.15, "resnet18"),
    Target("FGR (sigma = 0) / IGR", "train", "FGR", 1.10, key="ratio_to_igr"),
    Target("FGR+RS / IGR", "train", "FGR+RS", 1.45, key="ratio_to_igr"),
    Target("FGR+RS (authors) / IGR", "train", "FGR+RS (authors)", 1.10, key="ratio_to_igr"),
    Target("IGR / Standard", "train", "IGR", 3.0),
    Target("peak memory FGR+RS / IGR", "train", "FGR+RS", 1.3, key="memory_to_igr"),
    Target("suite / sum of its parts", "suite", "FlowAutoAttack", 1.0),
)


def evaluate_targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each target checked against every matching row: ``{"target", "model", "value", "limit", "met"}``."""
    out = []
    for t in TARGETS:
        for r in rows:
            if r["section"] != t.section or r["row"] != t.row or (t.model and r["model"] != t.model):
                continue
            raw = r.get(t.key)
            value = raw.get("median") if isinstance(raw, dict) else raw
            out.append({"target": t.name, "model": r["model"], "limit": t.limit,
                        "value": value, "met": None if value is None else bool(value <= t.limit)})
    return out


# ---------------------------------------------------------------------------- environment
def load_average() -> Optional[list[float]]:
    """The 1/5/15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: Any) -> dict[str, Any]:
    """Where the numbers were taken: CPU/GPU, core count, threads, library versions."""
    # torch: only to record versions (rendering stays torch-free)
    import torch
    import torchattacks

    device = torch.device(device)
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "torchattacks": getattr(torchattacks, "__version__", "?"), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(results: Mapping[str, Any], out: Optional[str]) -> None:
    """Write ``bench.json`` and ``bench.md`` to ``out`` atomically (nothing when ``out`` is None)."""
    if out is None:
        return
    # torch: only to record versions (rendering stays torch-free)
    from fgr_defense.files import atomic_write_text

    atomic_write_text(Path(out) / "bench.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(Path(out) / "bench.md", format_markdown(results))


# ---------------------------------------------------------------------------- markdown
def _fmt_ratio(stats: Optional[Mapping[str, float]]) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.2f}x [{stats['q1']:.2f}-{stats['q3']:.2f}]"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    # torch: only to record versions (rendering stays torch-free)
    from eval.report import md_table

    return [md_table(header, rows), ""]


def _range(r: Mapping[str, Any]) -> str:
    return f"{r['ratio']['min']:.2f}-{r['ratio']['max']:.2f}"


def _suite_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Suite: FlowAutoAttack vs the sum of its members run separately", ""]
    lines += _table(["model", "images", "version, eps", "suite ms", "parts ms", "ratio", "min-max",
                     "forwards suite / parts (images)", "robust acc suite / worst of parts"], (
        (r["model"], str(r["batch"]), f"{r['version']}, {r['eps']:g} px {r['norm']}", _fmt(r["candidate_ms"]),
         _fmt(r["reference_ms"]), _fmt_ratio(r["ratio"]), _range(r),
         f"{r['forward_images_suite']} / {r['forward_images_parts']}",
         f"{100 * r['robust_acc_suite']:.1f}% / {100 * r['robust_acc_parts']:.1f}%") for r in rows))
    for r in rows:
        lines += ["Members (each on all images): " + ", ".join(
            f"{n} {_fmt(r['member_ms'][n])} ms, robust {100 * r['robust_acc_members'][n]:.1f}%" for n in r["members"])
            + ". Cascade: " + ", ".join(f"{c['name']} fooled {c['fooled']} of {c['attacked']}" for c in r["cascade"])
            + f". The two worst cases differ on {r['robust_disagree']} image(s) (random starts).", ""]
    return lines


def _precision(cfg: Mapping[str, Any]) -> str:
    dtype = cfg.get("autocast_dtype")
    text = f"models under `torch.autocast({dtype})`" if dtype else "float32"
    return text + (", channels-last" if cfg.get("channels_last") else "")


def format_markdown(results: Mapping[str, Any]) -> str:
    """``bench.md``: targets met/missed, then one table per section, with command and machine.

    Ratios are ``median [first quartile - third quartile]`` over the timed rounds.
    """
    m = results["machine"]
    rev = results.get("git_revision") or "unknown"
    lines = [
        "# Benchmark: cost of the flow attacks and the regularized training steps", "",
        f"- command: `{results['command']}`",
        f"- git revision: `{rev}` (a `+dirty` suffix would mean uncommitted changes), code fingerprint "
        f"`{results.get('code_fingerprint')}` (`eval.provenance.code_fingerprint`), benchmark code "
        f"`{results.get('bench_fingerprint')}` (`benchmarks.driver.bench_fingerprint`)",
        f"- machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
        f"device `{m['device']}`" + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"- precision: {_precision(results.get('config', {}))}",
        f"- load average (1/5/15 min) before: {results.get('load_before')}, after: {results.get('load_after')}",
        f"- started {results['started']}, took {results.get('duration_s', 0):.0f} s"
        + ("" if results.get("complete") else " (**incomplete**)"),
        "",
        "Every ratio is candidate time / reference time measured in the same round, rounds interleaved; "
        "`median [quartiles]` over the rounds. Rerun: `python -m benchmarks` (`--help` for options).", "",
    ]
    targets = results.get("targets", [])
    if targets:
        lines += ["## Targets", ""]
        lines += _table(["target", "model", "value", "limit", "status"], (
            (t["target"], t["model"], _fmt(t["value"], ".3f") + "x", f"<= {t['limit']:.2f}x",
             "-" if t["met"] is None else ("met" if t["met"] else "**missed**")) for t in targets))
    rows = results.get("rows", [])
    by = {s: [r for r in rows if r["section"] == s] for s in SECTIONS}
    if by["attacks"]:
        lines += ["## Attacks (per step for PGD, per attack for FGSM)", ""]
        lines += _table(["model", "batch", "candidate", "reference", "ratio", "min-max", "candidate ms", "reference ms"], (
            (r["model"], str(r["batch"]), r["row"], r["reference"], _fmt_ratio(r["ratio"]), _range(r),
             _fmt(r["candidate_ms"]), _fmt(r["reference_ms"])) for r in by["attacks"]))
    if by["stadv"]:
        lines += [f"## StAdv: time to fool {STADV_RATE:.0%} of correctly classified images", ""]
        lines += _table(["model", "images", "steps (StAdv)", "steps (plain)", "time ratio", "StAdv ms", "plain ms", "note"], (
            (r["model"], str(r["batch"]), _fmt(r["steps_lib"], "d"), _fmt(r["steps_ref"], "d"), _fmt_ratio(r["ratio"]),
             _fmt(r["candidate_ms"]), _fmt(r["reference_ms"]), r.get("note") or "") for r in by["stadv"]))
    if by["es"]:
        lines += ["## FlowES (batched populations)", ""]
        lines += _table(["model", "images", "population", "success", "queries / success", "images/s",
                         "forwards", "time vs plain forwards"], (
            (r["model"], str(r["batch"]), str(r["population"]), f"{100 * r['success']:.0f}%",
             _fmt(r["queries_per_success"]), f"{r['images_per_s']:.0f}", str(r["forwards"]), _fmt_ratio(r["ratio"]))
            for r in by["es"]))
    if by["suite"]:
        lines += _suite_lines(by["suite"])
    if by["train"]:
        lines += ["## Training steps (Trainer.train_step)", ""]
        lines += _table(["model", "batch", "defense", "time / Standard", "time / IGR", "ms", "peak MB", "memory / IGR"], (
            (r["model"], str(r["batch"]), r["row"], _fmt_ratio(r["ratio"]), _fmt_ratio(r.get("ratio_to_igr")),
             _fmt(r["candidate_ms"]), _fmt(r.get("peak_memory_mb")), _fmt(r.get("memory_to_igr"), ".2f"))
            for r in by["train"]))
        lines += ["Peak memory: " + ("`torch.cuda.max_memory_allocated`" if "cuda" in m["device"] else
                  "torch's CPU allocator records via `torch.profiler(profile_memory=True)`")
                  + ", increase over the memory allocated when the step began.", ""]
    return "\n".join(lines)
