"""The one device rule of deform-robust: :func:`resolve_device`.

Used by :class:`~fgr_defense.trainer.Trainer`, :func:`~deform_robust.train_from_spec`,
the ``train`` command line and the evaluation harness, so that ``"auto"``, ``"cuda"`` and a
missing GPU mean the same thing everywhere.
"""

from __future__ import annotations

import os
from typing import Union

import torch

__all__ = ["parse_device", "resolve_device"]

DeviceSpec = Union[str, torch.device, None]


def parse_device(spec: DeviceSpec = None) -> torch.device | None:
    """The device a setting names, without asking whether this machine has it; None for ``"auto"``.

    Configs are checked with it when they are read (they may be run elsewhere);
    :func:`resolve_device` adds the machine's side when the work starts.

    Example:
        >>> parse_device("cuda:1"), parse_device("auto"), parse_device("mps")
        (device(type='cuda', index=1), None, device(type='mps'))
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return None
    if isinstance(spec, torch.device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device: expected a str, torch.device or None, got {type(spec).__name__} {spec!r}")
    try:
        return torch.device(spec.strip())
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (a torch device string), got {spec!r}"
        ) from None


def resolve_device(spec: DeviceSpec = None) -> torch.device:
    """The ``torch.device`` for a user's device setting, checked before any work is done.

    Convention:
        ``None`` or ``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available (``LOCAL_RANK``
        from the environment of ``torchrun``, default 0), else ``cpu``. Any other string is
        parsed by ``torch.device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...) and
        must be usable here: CUDA (or MPS) must be available and a CUDA index must exist.

    Args:
        spec: ``None``, ``"auto"``, a device string or a ``torch.device``.

    Returns:
        The device.

    Raises:
        TypeError: ``spec`` is not a str, ``torch.device`` or None.
        ValueError: an unknown device string, or a device this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
        >>> resolve_device("bogus")
        Traceback (most recent call last):
        ...
        ValueError: device: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (a torch device string), got 'bogus'
    """
    device = parse_device(spec)
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(spec)!r} requested but CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device: {str(spec)!r} requested but this machine has {count} CUDA device(s) "
                             f"(indices 0..{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device: {str(spec)!r} requested but MPS is not available on this machine; "
                             "use 'cpu' or 'auto'")
    return device
