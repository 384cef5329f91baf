"""A user's own data (issue 16): grayscale ImageFolders stay 1-channel; --n draws over every class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deform_robust.data import load_test_data, stratified_subset


def _folder(root: Path, mode: str, classes: int = 4, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            shape = (12, 10) if mode == "L" else (12, 10, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / f"class{c}/{i}.png")
    return root


def test_grayscale_image_folder_stays_one_channel(tmp_path: Path) -> None:
    d = load_test_data(str(_folder(tmp_path / "gray", "L")))
    assert d.images.shape == (20, 1, 12, 10) and d.num_classes == 4
    with Image.open(tmp_path / "gray/class2/3.png") as im:  # the pixels themselves, not a channel average
        expected = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    assert torch.allclose(d.images[2 * 5 + 3, 0], expected)


def test_rgb_image_folder_has_three_channels(tmp_path: Path) -> None:
    assert load_test_data(str(_folder(tmp_path / "rgb", "RGB"))).images.shape == (20, 3, 12, 10)


def test_n_draws_over_every_class_with_a_fixed_seed(tmp_path: Path) -> None:
    root = _folder(tmp_path / "gray", "L", classes=10, per_class=5)  # files sorted by class
    a, b = load_test_data(str(root), n=20), load_test_data(str(root), n=20)
    assert sorted(set(a.labels.tolist())) == list(range(10))  # the first 20 would be classes 0-3 only
    assert torch.bincount(a.labels).tolist() == [2] * 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(stratified_subset(torch.tensor([0, 0, 0, 1]), 3)) == 3
