"""Model checkpoints: one self-describing, atomically written file per model.

Format (a plain ``dict`` loadable with ``torch.load(path, weights_only=True)``)::

    {
        "format": "deform-robust/1",
        "arch": {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28},
        "state_dict": {...},           # model weights
        "meta": {...},                 # JSON-able: dataset, defense, epoch, metrics, ...
        # the Trainer adds optimizer/scheduler/RNG state under "trainer" for resuming
    }

Checkpoints are written with :func:`fgr_defense.files.atomic_write` (a crash leaves the previous
file intact).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write
from .models import build_model

__all__ = ["ARCH_KEYS", "CHECKPOINT_FORMAT", "NotACheckpointError", "atomic_save", "load_checkpoint", "load_model", "model_from_checkpoint",
           "save_model"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deform-robust/1"


class NotACheckpointError(ValueError):
    """A readable ``torch.save`` file that is not a deform-robust checkpoint (a plain state dict, say)."""

#: The keys of ``arch`` (the arguments of :func:`~fgr_defense.models.build_model`).
ARCH_KEYS = ("name", "in_channels", "num_classes", "size")

def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`atomic_write`).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.pt"
        >>> import torch
        >>> atomic_save({"w": torch.ones(2)}, p)
        >>> torch.load(p, weights_only=True)["w"]
        tensor([1., 1.])
    """
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_model(
    model: nn.Module, path: str | Path, arch: dict[str, Any] | None, meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` with its architecture description so :func:`load_model` can rebuild it.

    ``arch`` is ``{"name", "in_channels", "num_classes", "size"}`` of :func:`build_model`, or
    None for a model this package cannot rebuild (then load ``obj["state_dict"]`` yourself).
    ``extra`` entries are stored at the top level (the Trainer stores ``"trainer"``).

    Example:
        >>> import tempfile, os
        >>> from fgr_defense.models import SmallCNN
        >>> arch = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_model(SmallCNN(), os.path.join(d, "m.pt"), arch, {"defense": "Standard"})
        ...     model, meta = load_model(os.path.join(d, "m.pt"))
        >>> type(model).__name__, meta["defense"]
        ('SmallCNN', 'Standard')
    """
    if arch is not None:
        missing = set(ARCH_KEYS) - set(arch)
        if missing:
            raise ValueError(f"arch: missing keys {sorted(missing)}; got {sorted(arch)}")
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    obj: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "arch": dict(arch) if arch is not None else None,
                           "state_dict": state,
                           "meta": dict(meta or {})}
    if extra:
        obj.update(extra)
    atomic_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for missing, broken or foreign files.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty, truncated or not a ``torch.save`` file ("is not a
            readable checkpoint (truncated?): <reason>"); a readable file of another format
            ("is not a deform-robust checkpoint"); or a checkpoint without ``state_dict``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "broken.pt"
        >>> _ = p.write_text("not a checkpoint")
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        ValueError: checkpoint '...broken.pt' is not a readable checkpoint (truncated?): ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError,
            IndexError, UnicodeDecodeError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable checkpoint (truncated?): {_reason(err, path)}"
        ) from err
    return _checked(obj, path)


def _checked(obj: Any, path: Path) -> dict[str, Any]:
    """``obj`` (a loaded ``path``) if it is a deform-robust checkpoint with weights; else ValueError."""
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise NotACheckpointError(
            f"checkpoint: {str(path)!r} is not a deform-robust checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    if not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"checkpoint {str(path)!r}: missing the model weights ('state_dict')")
    return obj


def _reason(err: BaseException, path: Path) -> str:
    """A one-line reason: the exception's type and first sentence, and the file's size."""
    text = " ".join(str(err).split())
    first = text.split(". ")[0][:160]
    size = path.stat().st_size
    what = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return f"{what} ({size} bytes{', empty file' if size == 0 else ''})"


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, meta)``.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_checkpoint`; also a missing or
            incomplete ``arch`` (the missing keys are named) or weights that do not fit.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location), path)


def model_from_checkpoint(obj: dict[str, Any], path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` on a checkpoint dict already loaded from ``path`` (named in errors).

    Raises:
        ValueError: as :func:`load_model`, for everything after reading the file.
    """
    obj = _checked(obj, Path(path))
    arch = obj.get("arch")
    if not isinstance(arch, dict):
        raise ValueError(
            f"checkpoint: {str(path)!r} stores no architecture (a custom model); rebuild the model "
            "and load load_checkpoint(path)['state_dict'] into it"
        )
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: 'arch' is missing keys {missing}")
    model = build_model(arch["name"], arch["in_channels"], arch["num_classes"], arch["size"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint {str(path)!r}: its 'state_dict' does not fit the {arch['name']!r} "
                         f"model ({first})") from err
    model.eval()
    return model, dict(obj.get("meta", {}))


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
