"""CIFAR-10 and CIFAR-100 read from torchvision's extracted folders, without its checksum gate.

torchvision's ``CIFAR10``/``CIFAR100`` refuse any folder whose files do not match the
published MD5 sums, so a re-packed copy, a subset, or synthetic data written in the same
format (what the tests and a user without network use) cannot be read, and a truncated file
is reported as "not found". This module reads the same files directly:

- ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` (train) and ``test_batch``;
- ``cifar-100-python/train`` and ``test``;

each a pickle of a dict with ``data`` (``(N, 3072)`` uint8, channel-major) and ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100). The pickles are read with an unpickler that only
builds numpy arrays, lists, dicts and strings: a data folder can never run code.

Convention:
    Images come back as ``(N, 3, 32, 32)`` uint8 tensors (values 0-255, RGB, rows then
    columns), labels as ``(N,)`` int64: exactly what torchvision's ``ToTensor`` sees.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CIFAR_FILES", "CifarUnreadableError", "read_cifar"]

#: ``name -> (folder, train files, test files, label key)``.
CIFAR_FILES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{k}" for k in range(1, 6)), ("test_batch",), "labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
}


class CifarUnreadableError(ValueError):
    """A CIFAR file exists but is not a readable batch (truncated, corrupted or of another format)."""


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            if module == "numpy.core.multiarray" and hasattr(np, "_core"):  # numpy 2 renamed it (the files are older)
                module = "numpy._core.multiarray"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays are allowed)")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
        data = np.asarray(obj["data"], dtype=np.uint8)
        labels = np.asarray(obj[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise CifarUnreadableError(f"{path} is not a readable CIFAR batch ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())[:160]}); re-extract the archive") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise CifarUnreadableError(f"{path}: expected 'data' of shape (N, 3072) and N labels, got data "
                                   f"{data.shape} and labels {labels.shape}; re-extract the archive")
    return data, labels


def read_cifar(name: str, root: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of CIFAR-10/100's train or test split from ``root`` (see the Convention).

    Raises:
        FileNotFoundError: a batch file is missing (the message names it).
        CifarUnreadableError: a batch file is there but unreadable.

    Example:
        >>> import pickle, tempfile, numpy as np
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "cifar-10-batches-py").mkdir()
        >>> batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [3, 5]}
        >>> _ = (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
        >>> images, labels = read_cifar("cifar10", root, train=False)
        >>> images.shape, images.dtype, labels.tolist()
        (torch.Size([2, 3, 32, 32]), torch.uint8, [3, 5])
    """
    if name not in CIFAR_FILES:
        raise ValueError(f"name: expected one of {sorted(CIFAR_FILES)}, got {name!r}")
    folder, train_files, test_files, label_key = CIFAR_FILES[name]
    paths = [Path(root) / folder / f for f in (train_files if train else test_files)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)}")
    parts = [_read_batch(p, label_key) for p in paths]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)
