"""Provenance of the JSON files the installed package writes: versions, git revision, weights hashes.

One home for the rules (``eval/provenance.py`` imports :func:`git_revision` from here).
Torch-free at import: :func:`provenance` imports torch only when called.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["PACKAGE_ROOT", "file_sha256", "git_revision", "models_weights_sha256", "provenance"]

#: The folder holding the ``deform_robust`` package: a repository checkout for an editable
#: install (then it holds ``.git``), ``site-packages`` for an installed wheel.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

PathLike = Union[str, Path]


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "w.bin"
        >>> _ = p.write_bytes(b"abc")
        >>> file_sha256(p)[:16]
        'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_revision(root: Optional[PathLike] = None, exclude: Optional[PathLike] = None) -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when tracked or untracked files differ.

    ``root`` None: the checkout holding this package, only when :data:`PACKAGE_ROOT` is the
    top of a git checkout (an installed wheel inside some other repository gets no revision
    of that repository). ``exclude`` (e.g. an output folder) is left out of the dirty check.
    ``"unknown"`` outside a git checkout or without git.

    Example:
        >>> import tempfile
        >>> git_revision(tempfile.mkdtemp())
        'unknown'
    """
    if root is None:
        if not (PACKAGE_ROOT / ".git").exists():
            return "unknown"
        root = PACKAGE_ROOT
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        spec = ["--", "."]
        if exclude is not None:
            try:
                rel = Path(exclude).resolve().relative_to(Path(root).resolve())
                spec.append(f":(exclude){rel.as_posix()}")
            except ValueError:
                pass  # outside the repository: nothing to exclude
        status = subprocess.run(["git", "status", "--porcelain", *spec], cwd=root, capture_output=True,
                                text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if status.strip() else "")


def _sha256_of(weights: Union[PathLike, Sequence[PathLike]]) -> Union[str, list[str]]:
    if isinstance(weights, (str, Path)):
        return file_sha256(weights)
    return [file_sha256(p) for p in weights]


def models_weights_sha256(models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per model of a results dict, the SHA-256 of the weights file(s) it loaded.

    Models without a file (``source: object``, a callable without ``weights``) are left out.

    Example:
        >>> models_weights_sha256([{"name": "a", "fingerprint": {"source": "checkpoint", "sha256": "ab"}},
        ...                        {"name": "b", "fingerprint": {"source": "object", "sha256": "cd"}}])
        {'a': 'ab'}
    """
    out: dict[str, Any] = {}
    for m in models:
        fp = m.get("fingerprint") or {}
        if fp.get("source") != "object" and fp.get("sha256"):
            out[str(m["name"])] = fp["sha256"]
    return out


def provenance(weights: Union[PathLike, Sequence[PathLike], None] = None, *, weights_sha256: Any = None,
               exclude: Optional[PathLike] = None) -> dict[str, Any]:
    """What produced a JSON result: package, versions, git revision and the weights' SHA-256.

    Args:
        weights: the weights or checkpoint file(s) loaded (hashed here), or None.
        weights_sha256: hashes already computed (a hex string, a list, or a dict per model);
            used when ``weights`` is None.
        exclude: a folder left out of the git dirty check (e.g. the output folder).

    Returns:
        ``{"package": "deform-robust", "version", "torch", "python", "git_revision",
        "weights_sha256"}``; ``git_revision`` is None unless the package runs from a git
        checkout; ``weights_sha256`` is None when no weights file was loaded.

    Example:
        >>> info = provenance()
        >>> sorted(info)
        ['git_revision', 'package', 'python', 'torch', 'version', 'weights_sha256']
        >>> info["package"], info["weights_sha256"]
        ('deform-robust', None)
    """
    # torch and the package version: only when provenance is recorded
    import torch

    from . import __version__

    rev = git_revision(exclude=exclude)
    return {
        "package": "deform-robust",
        "version": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_revision": None if rev == "unknown" else rev,
        "weights_sha256": _sha256_of(weights) if weights is not None else weights_sha256,
    }
