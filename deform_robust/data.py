"""Test data for the harness: a named dataset, or the user's own images and labels.

Sources (``data`` in a config, ``--data`` of ``deform-robust evaluate``):

- a dataset name of :func:`fgr_defense.get_dataset`: ``mnist5k`` (embedded), ``mnist``,
  ``cifar10``, ``cifar100`` (a local torchvision folder in ``root``; never downloaded here);
- a ``.pt`` file: ``{"images": (N, C, H, W), "labels": (N,)}`` (``"x"``/``"y"`` also accepted)
  or a tuple ``(images, labels)``, read with ``torch.load(weights_only=True)``;
- a ``.npz`` file with arrays ``images`` and ``labels`` (or ``x`` and ``y``);
- a folder in torchvision's ``ImageFolder`` layout (one sub-folder per class; 1 channel when
  every image is grayscale, else RGB).

Convention:
    Images come back as float32 ``(N, C, H, W)`` in ``[0, 1]`` (uint8 arrays are divided by
    255; float arrays must already be in ``[0, 1]``) and labels as int64 ``(N,)``. The number
    of classes and the image size are taken from the data (:class:`TestData`), so any class
    count and any image size work.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgr_defense.constants import DATASETS
from fgr_defense.data import LAYOUT, DatasetUnreadableError, get_dataset
from torchattacks_deform.validation import check_images, check_labels

__all__ = ["TestData", "images_from_array", "load_test_data", "stratified_subset"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestData:
    """Images, labels and what is known about them.

    Attributes:
        images: float32 ``(N, C, H, W)`` in ``[0, 1]``.
        labels: int64 ``(N,)``.
        source: where they came from (a dataset name or a path).
        num_classes: the dataset's class count when known (named datasets, folders), else
            ``max(labels) + 1``.
    """

    __test__ = False  # not a pytest test class

    images: Tensor
    labels: Tensor
    source: str
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


#: Channel counts of images: an array ``(N, H, W, C)`` with such a last axis (and no such second
#: axis) is channels-last, as numpy and PIL write images, and is transposed.
_CHANNELS = (1, 3, 4)


def images_from_array(array: Any, name: str = "images") -> Tensor:
    """A float32 ``(N, C, H, W)`` tensor in ``[0, 1]`` from a tensor or numpy array (uint8 divided by 255).

    Channels-last arrays ``(N, H, W, C)`` with 1, 3 or 4 channels (and a second axis that is not
    a channel count) are transposed, with an INFO log line.

    Raises:
        TypeError: not an array, or a dtype that is neither uint8 nor floating point.
        ValueError: float values outside ``[0, 1]``, NaN/inf, or a rank other than 4.

    Example:
        >>> images_from_array(np.full((1, 1, 2, 2), 255, dtype=np.uint8)).max().item()
        1.0
        >>> images_from_array(np.zeros((2, 32, 32, 3), dtype=np.uint8)).shape
        torch.Size([2, 3, 32, 32])
    """
    if isinstance(array, np.ndarray):
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{name}: expected uint8 or floating-point images, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    elif isinstance(array, Tensor):
        tensor = array.detach().cpu()
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor
        if not tensor.is_floating_point():
            raise TypeError(f"{name}: expected uint8 or floating-point images, got dtype {tensor.dtype}")
        tensor = tensor.float().contiguous()
    else:
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(array).__name__}")
    if tensor.dim() == 4 and tensor.shape[1] not in _CHANNELS and tensor.shape[3] in _CHANNELS:
        logger.info("%s of shape %s read as channels-last (N, H, W, C): transposed to (N, C, H, W)", name,
                    tuple(tensor.shape))
        tensor = tensor.permute(0, 3, 1, 2).contiguous()
    check_images(tensor, name)
    return tensor


def _labels(array: Any, n: int, name: str = "labels") -> Tensor:
    if isinstance(array, np.ndarray):
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name}: expected integer class indices, got dtype {array.dtype}")
        array = torch.from_numpy(array.astype(np.int64))
    if not isinstance(array, Tensor):
        raise TypeError(f"{name}: expected a tensor or numpy array of class indices, got {type(array).__name__}")
    labels = array.detach().cpu()
    check_labels(labels, n, name=name)
    return labels.long().contiguous()


def _pick(obj: Any, path: Path) -> tuple[Any, Any]:
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    if isinstance(obj, dict) or hasattr(obj, "files"):
        keys = set(obj.files) if hasattr(obj, "files") else set(obj)
        for a, b in (("images", "labels"), ("x", "y")):
            if {a, b} <= keys:
                return obj[a], obj[b]
        raise ValueError(f"data: {str(path)!r} holds {sorted(keys)}; expected 'images' and 'labels' (or 'x' and 'y')")
    raise ValueError(f"data: {str(path)!r} holds a {type(obj).__name__}; expected a dict with 'images' and "
                     "'labels' or a tuple (images, labels)")


def _from_file(path: Path) -> tuple[Tensor, Tensor, int | None]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                images, labels = _pick(npz, path)
                images, labels = np.asarray(images), np.asarray(labels)
        else:
            images, labels = _pick(torch.load(path, map_location="cpu", weights_only=True), path)
    except pickle.UnpicklingError as err:  # a pickle of other objects than tensors: weights_only refuses it
        held = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it holds a pickled {held.group(1)}" if held else "it holds pickled Python objects"
        raise ValueError(f"--data (data.dataset in a config): {str(path)!r} is not a tensor file of images and "
                         f"labels: {what}, which torch.load(weights_only=True) refuses to unpickle; save plain "
                         "tensors, e.g. torch.save({'images': x, 'labels': y}, path), or an .npz") from None
    except (OSError, EOFError, RuntimeError, ValueError, KeyError) as err:
        if isinstance(err, ValueError) and str(err).startswith("data:"):
            raise
        raise ValueError(f"data: {str(path)!r} is not a readable .pt/.npz file of images and labels "
                         f"(truncated?): {type(err).__name__}: {err}") from None
    x = images_from_array(images, "images")
    return x, _labels(labels, x.shape[0]), None


#: PIL modes of single-channel images: an ImageFolder of only these stays 1-channel.
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _from_folder(path: Path) -> tuple[Tensor, Tensor, int]:
    """An ImageFolder as tensors: 1 channel when every image is grayscale, else 3 (RGB)."""
    # torchvision/PIL: only for an ImageFolder or a torchvision dataset
    from PIL import Image
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    try:
        ds = datasets.ImageFolder(str(path), loader=Image.open)
    except (FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"data: {str(path)!r} is not an ImageFolder (one sub-folder of images per class): {err}") from None
    modes = set()
    for file, _ in ds.samples:
        with Image.open(file) as im:
            modes.add(im.mode)
    mode = "L" if modes <= set(_GRAY_MODES) else "RGB"
    to_tensor = ToTensor()
    xs, ys = [], []
    for file, label in ds.samples:
        with Image.open(file) as im:
            xs.append(to_tensor(im.convert(mode)))
        ys.append(label)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"data: the images in {str(path)!r} have different sizes {sorted(shapes)[:3]}; "
                         "resize them to one size first")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), len(ds.classes)


def stratified_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Indices of ``n`` examples drawn evenly over the classes (seeded), so that sorted data are not cut by class.

    Each class is shuffled with ``seed``; the classes then give one example each in turn
    (a class that runs out drops out) until ``n`` are taken. The indices come back sorted.

    Example:
        >>> labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 6)   # sorted by class, as many files are
        >>> sub = stratified_subset(labels, 6)
        >>> labels[sub].tolist()
        [0, 0, 1, 1, 2, 2]
        >>> torch.equal(sub, stratified_subset(labels, 6)), len(stratified_subset(labels, 18))
        (True, 18)
    """
    gen = torch.Generator().manual_seed(seed)
    per_class = [idx[torch.randperm(len(idx), generator=gen)].tolist()
                 for idx in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))]
    taken: list[int] = []
    k = 0
    while len(taken) < n and any(k < len(c) for c in per_class):
        taken += [c[k] for c in per_class if k < len(c)][: n - len(taken)]
        k += 1
    return torch.tensor(sorted(taken), dtype=torch.long)


def load_test_data(source: str, root: str | None = None, n: int | None = None,
                   pipeline: str = "paper") -> TestData:
    """Load test data by dataset name or path (module docstring); keep ``n`` examples.

    A named dataset keeps its first ``n`` test images (MNIST-5k's are shuffled once, with a fixed
    seed, by :func:`fgr_defense.data.get_dataset`); a user's file or ImageFolder keeps ``n``
    drawn evenly over the classes with a fixed seed (:func:`stratified_subset`). An ImageFolder
    of grayscale images stays 1-channel.

    Raises:
        FileNotFoundError: a path or dataset folder that does not exist.
        ValueError: unreadable or malformed data, or fewer than ``n`` examples.

    Example:
        >>> d = load_test_data("mnist5k", n=10)
        >>> d.images.shape, d.num_classes, d.shape
        (torch.Size([10, 1, 28, 28]), 10, (1, 28, 28))
    """
    num_classes: int | None
    if source in DATASETS:
        try:
            ds = get_dataset(source, train=False, root=root, limit=n, pipeline=pipeline)
        except DatasetUnreadableError as err:  # the folder is there but broken: not a "not found"
            raise ValueError(f"data: {err}") from None
        except (FileNotFoundError, ValueError):
            if source == "mnist5k":
                raise
            # Not get_dataset's own message: it names the train command's --download, which the harness lacks.
            cls = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}[source]
            where = (f"is not under data root {root!r} (expected {root}/{LAYOUT[source]})" if root is not None
                     else "loads from a local torchvision folder, and no data root was given (--data-root DIR, "
                          "or data.root in a config)")
            raise FileNotFoundError(
                f"data: the {source!r} test set {where}. The harness never downloads; "
                f"copy it there in torchvision's layout, or fetch it once with: python -c \"import torchvision; "
                f"torchvision.datasets.{cls}({(root or 'data')!r}, train=False, download=True)\" "
                f"(then pass that folder as the data root).") from None
        tensors = getattr(ds, "tensors", None)
        if tensors is not None:
            images, labels = tensors[0], tensors[1]
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=500, shuffle=False)  # type: ignore[arg-type]
            xs, ys = zip(*loader)
            images, labels = torch.cat(xs), torch.cat(ys)
        num_classes = int(DATASETS[source]["num_classes"])
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"data: no dataset named {source!r} and no file or folder at that path; "
                                    f"expected one of {sorted(DATASETS)}, a .pt/.npz file or an ImageFolder")
        images, labels, num_classes = _from_folder(path) if path.is_dir() else _from_file(path)
        if n is not None and n < len(labels):  # the user's files are often sorted by class
            keep = stratified_subset(labels, n)
            images, labels = images[keep], labels[keep]
    if n is not None and len(labels) < n:
        raise ValueError(f"data.n: {source!r} has only {len(labels)} examples, asked for {n}")
    images, labels = images.float().contiguous(), labels.long().contiguous()
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    logger.info("data %s: %d images of shape %s, %d classes", source, len(labels), tuple(images.shape[1:]),
                num_classes)
    return TestData(images, labels, source, num_classes)
