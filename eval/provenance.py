"""Provenance of a committed result: the command, git revision, code fingerprint and machine.

Torch-free except :func:`machine`, which imports torch only when called.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from deform_robust.provenance import git_revision  # one home for the rule (the installed package's)

__all__ = ["ROOT", "code_fingerprint", "git_revision", "machine"]

#: The repository root (the folder holding eval/).
ROOT = Path(__file__).resolve().parent.parent
#: The sources whose bytes make up :func:`code_fingerprint`.
CODE_DIRS = ("eval", "fgr_defense", "torchattacks_deform", "deform_robust")


def code_fingerprint(root: str | Path = ROOT) -> str:
    """SHA-256 (16 hex digits) over the Python sources, configs and presets of the packages.

    Lets a reader check that a committed report was produced by the committed code.
    """
    h = hashlib.sha256()
    root = Path(root)
    files = sorted(p for pkg in CODE_DIRS for pat in ("*.py", "*.yaml", "configs/*.yaml", "presets/*.yaml")
                   for p in (root / pkg).glob(pat))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Any = None) -> dict[str, Any]:
    """Where numbers were taken: CPU/GPU, cores, torch threads and versions, and when."""
    # torch: only for the machine's description (the reports import this module)
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0], "cpu": _cpu_name(),
                            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                            "torch": torch.__version__, "device": str(device) if device is not None else "cpu",
                            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
