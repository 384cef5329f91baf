"""Datasets, models and checkpoints of fgr_defense."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

from fgr_defense.checkpoint import atomic_save, load_checkpoint, load_model, save_model
from fgr_defense.data import dataset_info, get_dataset, load_mnist5k
from fgr_defense.models import MODELS, SmallCNN, build_model


class TestData:
    def test_mnist5k_split_is_fixed_and_disjoint(self) -> None:
        xtr, ytr = load_mnist5k(train=True)
        xte, yte = load_mnist5k(train=False)
        assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
        assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
        # disjoint: no test image appears in the training split
        train_keys = {hash(row.numpy().tobytes()) for row in xtr.flatten(1)}
        assert not any(hash(row.numpy().tobytes()) in train_keys for row in xte.flatten(1))
        again, _ = load_mnist5k(train=True)
        assert torch.equal(again, xtr)

    def test_mnist5k_returns_independent_copies(self) -> None:
        x, _ = load_mnist5k(train=False)
        x.zero_()
        assert load_mnist5k(train=False)[0].max() == 1.0

    def test_limit_and_augment(self) -> None:
        ds = get_dataset("mnist5k", train=True, augment=True, limit=10)
        assert len(ds) == 10
        torch.manual_seed(0)
        img, label = ds[0]
        assert img.shape == (1, 28, 28) and 0 <= float(img.min()) and float(img.max()) <= 1
        base, _ = load_mnist5k(train=True)
        crops = [ds[0][0] for _ in range(8)]
        assert any(not torch.equal(c, base[0]) for c in crops)  # random crop moves the digit
        with pytest.raises(ValueError, match="limit"):
            get_dataset("mnist5k", train=True, limit=-1)

    def test_missing_dataset_is_explained(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="--download"):
            get_dataset("cifar10", train=False, root=tmp_path)
        with pytest.raises(ValueError, match="--data-root"):
            get_dataset("mnist", train=False)
        with pytest.raises(ValueError, match="dataset: expected one of"):
            dataset_info("imagenet")


class TestModels:
    @pytest.mark.parametrize("name", sorted(MODELS))
    @pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
    def test_shapes(self, name: str, channels: int, size: int) -> None:
        model = build_model(name, channels, 10, size).eval()
        with torch.no_grad():
            out = model(torch.rand(2, channels, size, size))
        assert out.shape == (2, 10)

    def test_unknown_model(self) -> None:
        with pytest.raises(ValueError, match="model: expected one of"):
            build_model("vit", 3, 10, 32)


class TestCheckpoint:
    def test_roundtrip_weights_only(self, tmp_path: Path) -> None:
        model = SmallCNN()
        arch = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}
        save_model(model, tmp_path / "m.pt", arch, {"defense": "FGR"}, extra={"trainer": {"epoch": 3}})
        obj = torch.load(tmp_path / "m.pt", weights_only=True)
        assert obj["trainer"] == {"epoch": 3}
        loaded, meta = load_model(tmp_path / "m.pt")
        assert meta == {"defense": "FGR"} and not loaded.training
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)

    def test_ddp_prefix_is_stripped(self, tmp_path: Path) -> None:
        class Wrapper(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = SmallCNN()

        arch = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}
        save_model(Wrapper(), tmp_path / "w.pt", arch)
        load_model(tmp_path / "w.pt")

    def test_errors(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="no file"):
            load_checkpoint(tmp_path / "missing.pt")
        torch.save({"weights": 1}, tmp_path / "foreign.pt")
        with pytest.raises(ValueError, match="not a deform-robust checkpoint"):
            load_checkpoint(tmp_path / "foreign.pt")
        save_model(nn.Linear(2, 2), tmp_path / "custom.pt", None)
        with pytest.raises(ValueError, match="no architecture"):
            load_model(tmp_path / "custom.pt")
        with pytest.raises(ValueError, match="arch: missing keys"):
            save_model(nn.Linear(2, 2), tmp_path / "x.pt", {"name": "smallcnn"})

    def test_atomic_save_keeps_old_file_on_failure(self, tmp_path: Path) -> None:
        path = tmp_path / "a.pt"
        atomic_save({"v": torch.ones(1)}, path)

        class Unpicklable:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            atomic_save({"v": Unpicklable()}, path)
        assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(1))
        assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


# ---------------------------------------------------------------------------------------------
# Data pipelines on synthetic data in the real formats
def write_fake_cifar10(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A cifar-10-batches-py folder in torchvision's pickle layout (5 train batches, test, meta)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
        arrays[name] = data
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return arrays


def write_fake_mnist(root: Path, n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST/raw/*-ubyte files in the idx format torchvision reads (no checksums for MNIST)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = {}
    for prefix in ("train", "t10k"):
        data = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + data.tobytes())
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
        images[prefix] = data
    return images


@pytest.fixture()
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    import torchvision.datasets.cifar as cifar

    arrays = write_fake_cifar10(tmp_path)
    # the fake files cannot match torchvision's MD5 sums; check that they exist instead
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    return tmp_path, arrays


def authors_reference(image: Image.Image, size: int, train: bool, flip: bool) -> torch.Tensor:
    """The authors' datasets/__init__.py build_transform, then their ToTensor."""
    ops: list = [T.Resize((size + 4, size + 4))]
    if train:
        ops.append(T.RandomCrop((size, size)))
        if flip:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops.append(T.CenterCrop((size, size)))
    return T.ToTensor()(T.Compose(ops)(image))


class TestPipelines:
    def test_cifar_authors_test_images_are_resized_and_center_cropped(self, fake_cifar) -> None:
        root, arrays = fake_cifar
        ds = get_dataset("cifar10", train=False, root=root, pipeline="authors")
        raw = arrays["test_batch"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC, as theirs
        for i in range(len(ds)):
            ref = authors_reference(Image.fromarray(raw[i]), 32, train=False, flip=True)
            assert torch.equal(ds[i][0], ref)
        assert not torch.equal(ds[0][0], T.ToTensor()(Image.fromarray(raw[0])))  # not the raw image

    def test_cifar_paper_test_images_are_untouched(self, fake_cifar) -> None:
        root, arrays = fake_cifar
        ds = get_dataset("cifar10", train=False, root=root, pipeline="paper")
        raw = torch.from_numpy(arrays["test_batch"].reshape(-1, 3, 32, 32).copy()).float() / 255
        assert torch.equal(torch.stack([ds[i][0] for i in range(len(ds))]), raw)

    def test_cifar_authors_train_transform_with_the_same_random_numbers(self, fake_cifar) -> None:
        root, arrays = fake_cifar
        ds = get_dataset("cifar10", train=True, root=root, pipeline="authors", augment=True, limit=6)
        raw = arrays["data_batch_1"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        outs = []
        for i in range(6):
            torch.manual_seed(100 + i)
            ours = ds[i][0]
            torch.manual_seed(100 + i)
            ref = authors_reference(Image.fromarray(raw[i]), 32, train=True, flip=True)
            assert ours.shape == (3, 32, 32) and torch.equal(ours, ref)
            outs.append(ours)
        torch.manual_seed(0)
        assert any(not torch.equal(ds[0][0], outs[0]) for _ in range(5))  # random crops/flips vary

    def test_mnist_torchvision_authors_pipeline(self, tmp_path: Path) -> None:
        images = write_fake_mnist(tmp_path)
        ds = get_dataset("mnist", train=False, root=tmp_path, pipeline="authors")
        for i in range(len(ds)):  # no flip for MNIST (the paper flips CIFAR only)
            assert torch.equal(ds[i][0], authors_reference(Image.fromarray(images["t10k"][i]), 28, False, False))
        torch.manual_seed(3)
        ours = get_dataset("mnist", train=True, root=tmp_path, pipeline="authors", augment=True)[2][0]
        torch.manual_seed(3)
        assert torch.equal(ours, authors_reference(Image.fromarray(images["train"][2]), 28, True, False))

    def test_mnist5k_authors_goes_through_exact_uint8_images(self) -> None:
        x, _ = load_mnist5k(train=False)
        pixels = (x[:3] * 255).round().to(torch.uint8)
        assert torch.equal(pixels.float() / 255, x[:3])  # the stored floats are exactly k / 255
        ds = get_dataset("mnist5k", train=False, pipeline="authors", limit=3)
        for i in range(3):
            ref = authors_reference(Image.fromarray(pixels[i, 0].numpy()), 28, train=False, flip=False)
            assert torch.equal(ds[i][0], ref) and ds[i][0].dtype == torch.float32
        assert not torch.equal(ds[0][0], x[0])
        assert torch.equal(get_dataset("mnist5k", train=False, limit=3)[0][0], x[0])  # "paper": untouched
        with pytest.raises(ValueError, match="pipeline: expected one of"):
            get_dataset("mnist5k", train=False, pipeline="theirs")


def test_name_lists_agree_with_the_modules() -> None:
    from fgr_defense import constants, defenses, regularizers

    assert set(constants.MODEL_NAMES) == set(MODELS)
    assert defenses.DEFENSES is constants.DEFENSES and regularizers.VARIANTS is constants.VARIANTS
    for name in constants.SCHEDULES:
        assert defenses.get_schedule(name, "cifar10").name == name
