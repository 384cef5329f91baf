"""CIFAR-10/100 folders in torchvision's format are read without the checksum gate, and never run code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fgr_defense.cifar import CifarUnreadableError, read_cifar
from fgr_defense.data import DatasetUnreadableError, get_dataset


def write_cifar10(root: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A synthetic CIFAR-10 test batch in the archive's format (a pickled dict, channel-major rows)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batch = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
             "filenames": [f"{k}.png" for k in range(n)]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return data, labels


def test_synthetic_cifar10_reads_as_torchvision_would(tmp_path: Path) -> None:
    data, labels = write_cifar10(tmp_path)
    images, got = read_cifar("cifar10", tmp_path, train=False)
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 32, 32) and got.tolist() == labels
    # channel-major rows: row k holds R (1024 values, row-major 32x32), then G, then B
    assert images[3, 1, 2, 5] == data[3, 1024 + 2 * 32 + 5]
    ds = get_dataset("cifar10", train=False, root=tmp_path)
    x, y = ds[3]
    assert x.dtype == torch.float32 and torch.equal(x, images[3].float() / 255) and y == labels[3]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [7, 99], "coarse_labels": [1, 19]}
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
    assert read_cifar("cifar100", tmp_path, train=False)[1].tolist() == [7, 99]


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(CifarUnreadableError, match="refused to load posix.system|refused to load os.system"):
        read_cifar("cifar10", tmp_path, train=False)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DatasetUnreadableError, match="is there but corrupted or unreadable"):
        get_dataset("cifar10", train=False, root=tmp_path)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CifarUnreadableError, match="not a readable CIFAR batch"):
        read_cifar("cifar10", tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        read_cifar("cifar10", tmp_path, train=True)
    with pytest.raises(DatasetUnreadableError, match="is there but corrupted or unreadable"):
        get_dataset("cifar10", train=True, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="was not found under"):
        get_dataset("cifar100", train=False, root=tmp_path)
