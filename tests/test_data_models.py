"""Datasets, models and checkpoints of fgr_defense."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
