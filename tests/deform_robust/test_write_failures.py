"""A full disk or an unwritable --out: one line that names the file, never a raw traceback (issue 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from deform_robust.cli import main as fgr_main
from fgr_defense.checkpoint import atomic_save
from fgr_defense.files import OutputWriteError

TINY = ["--dataset", "mnist5k", "--model", "smallcnn", "--epochs", "1", "--limit", "64", "--no-val", "--no-progress"]


def test_train_refuses_an_out_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert fgr_main(["train", "--out", str(blocker / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out: expected a folder to write into" in err and "is a file, not a folder" in err, err


def test_a_full_disk_during_train_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 3968")

    monkeypatch.setattr(torch, "save", full_disk)
    assert fgr_main(["train", "--out", str(tmp_path / "run"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "could not write" in err and "disk is not full" in err, err
    assert "model.pt" in err
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]


def test_atomic_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.pt"
    atomic_save({"w": torch.ones(1)}, path)
    before = path.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OutputWriteError, match=r"x\.pt'.*No space left on device"):
        atomic_save({"w": torch.zeros(1)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    # other errors of the writer are not disguised as write failures
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_save({"w": torch.zeros(1)}, path)
