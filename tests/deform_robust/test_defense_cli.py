"""Presets and the ``deform-robust train`` command line (in process and as a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchattacks

from deform_robust.cli import main
from deform_robust.training.spec import default_out_dir
from fgr_defense import FGR, IGR, load_checkpoint, load_model
from fgr_defense.defenses import (
    DEFENSES,
    PAPER_LAMBDAS,
    build_defense,
    get_schedule,
    resolve_defense_name,
)
from fgr_defense.models import SmallCNN

REPO = Path(__file__).resolve().parents[2]


class TestPresets:
    def test_all_defenses_build(self) -> None:
        expect = {
            "Standard": (type(None), type(None)),
            "AT-FGSM": (type(None), torchattacks.FGSM),
            "AT-PGD": (type(None), torchattacks.PGD),
            "IGR": (IGR, type(None)),
            "FGR": (FGR, type(None)),
            "FGR+RS": (FGR, type(None)),
            "FGR+RS+AT-PGD": (FGR, torchattacks.PGD),
        }
        assert set(expect) == set(DEFENSES)
        for name, (reg_t, adv_t) in expect.items():
            d = build_defense(name, SmallCNN(), "mnist5k")
            assert isinstance(d.regularizer, reg_t) and isinstance(d.adversary, adv_t), name
            json.dumps(d.config)

    def test_paper_hyperparameters(self) -> None:
        d = build_defense("FGR+RS+AT-PGD", SmallCNN(3, 10, 32), "cifar10", lam=400)
        assert isinstance(d.regularizer, FGR)
        assert d.regularizer.weight == pytest.approx(400 * 15.5**2 / 256**2)  # lam ((W-1)/2)^2 / B^2
        assert d.regularizer.sigma == pytest.approx(0.01 * 15.5)
        assert d.config["eps"] == 0.01 and d.config["steps"] == 7
        assert d.adversary.eps == 0.01 and d.adversary.steps == 7
        assert build_defense("AT-PGD", SmallCNN(), "mnist").adversary.eps == 0.1
        assert build_defense("FGR", SmallCNN(), "mnist").regularizer.sigma == 0.0
        igr = build_defense("IGR", SmallCNN(), "mnist", lam=3000).regularizer
        assert isinstance(igr, IGR) and igr.weight == pytest.approx(3000 / 256**2)
        assert build_defense("FGR", SmallCNN(), "mnist", weight=5.0).regularizer.weight == 5.0
        assert PAPER_LAMBDAS == {"IGR": (1000, 3000, 5000, 7000), "FGR": (100, 400, 500, 1000)}

    @pytest.mark.parametrize("name,kwargs,match", [
        ("FGR-XL", {}, r"defense: expected one of \['Standard', 'AT-FGSM', 'AT-PGD', 'IGR', 'FGR', 'FGR\+RS'"),
        ("FGR", {"lam": 100, "weight": 1.0}, "lam, weight"),
        ("FGR", {"weight": -1.0}, "weight"),
        ("Standard", {"lam": 100}, "no regularizer"),
        ("FGR", {"sigma": 0.1}, "random start"),
        ("IGR", {"variant": "authors"}, "variant"),
        ("AT-PGD", {"eps": -0.1}, "eps"),
    ])
    def test_errors(self, name: str, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            build_defense(name, SmallCNN(), "mnist5k", **kwargs)

    def test_schedules(self) -> None:
        s = get_schedule("paper", "mnist")
        assert (s.optimizer, s.lr, s.momentum, s.weight_decay, s.batch_size, s.epochs, s.milestones) == (
            "sgd", 0.1, 0.9, 5e-4, 256, 30, (10, 20))
        c = get_schedule("paper", "cifar100")
        assert (c.epochs, c.milestones) == (80, (40, 60))
        opt, sched = c.build(SmallCNN().parameters())
        for _ in range(40):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
        with pytest.raises(ValueError, match="schedule: expected one of"):
            get_schedule("slow", "mnist")

    def test_names(self) -> None:
        assert resolve_defense_name("at_pgd") == "AT-PGD"
        assert default_out_dir("mnist5k", "smallcnn", "fgr", 400).name == "mnist5k-smallcnn-fgr-lam400"


def run_cli(*args: str) -> int:
    return main(["train", "--no-progress", "--log-level", "WARNING", *args])


class TestCLI:
    def test_train_writes_checkpoint_and_log(self, tmp_path: Path) -> None:
        out = tmp_path / "run"
        assert run_cli("--defense", "FGR+RS", "--weight", "5", "--epochs", "2", "--limit", "128",
                       "--val-limit", "64", "--batch-size", "64", "--out", str(out)) == 0
        model, meta = load_model(out / "model.pt")
        assert isinstance(model, SmallCNN)
        assert meta["defense"] == "FGR+RS" and meta["complete"] and meta["epoch"] == 2
        assert meta["defense_config"]["weight"] == 5.0 and meta["defense_config"]["sigma_px"] == pytest.approx(0.135)
        log = json.loads((out / "log.json").read_text())
        assert [r["epoch"] for r in log["epochs"]] == [1, 2]
        assert all("val_acc" in r and r["train_reg_loss"] > 0 for r in log["epochs"])
        assert (out / "train.log").is_file()
        # a second run into the same folder must not silently overwrite it
        assert run_cli("--epochs", "1", "--limit", "64", "--out", str(out)) == 1
        # --resume with more epochs continues
        assert run_cli("--defense", "FGR+RS", "--weight", "5", "--epochs", "3", "--limit", "128",
                       "--val-limit", "64", "--batch-size", "64", "--out", str(out), "--resume") == 0
        log = json.loads((out / "log.json").read_text())
        assert [r["epoch"] for r in log["epochs"]] == [1, 2, 3]
        assert [r["global_step"] for r in log["epochs"]] == [2, 4, 6]

    def test_errors(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run_cli("--defense", "Nope", "--out", str(tmp_path / "a")) == 2  # bad arguments
        assert "--defense: expected one of ['Standard'" in capsys.readouterr().err
        assert run_cli("--defense", "FGR", "--weight", "-1", "--epochs", "1", "--out", str(tmp_path / "b")) == 2
        assert "--weight: expected a finite number in [0, 1e+07], got -1.0" in capsys.readouterr().err
        empty = tmp_path / "data"
        empty.mkdir()
        assert run_cli("--dataset", "cifar10", "--data-root", str(empty), "--out", str(tmp_path / "c")) == 1
        err = capsys.readouterr().err
        assert "was not found under" in err and "--download" in err
        assert run_cli("--dataset", "mnist", "--out", str(tmp_path / "d")) == 2
        assert "--data-root" in capsys.readouterr().err
        assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()  # refused before any work
        assert run_cli("--resume", "--out", str(tmp_path / "nothing")) == 1
        assert "no checkpoint" in capsys.readouterr().err

    def test_nan_loss_message(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        # the largest weight and learning rate the arguments accept: the training diverges
        assert run_cli("--defense", "IGR", "--weight", "1e7", "--optimizer", "sgd", "--lr", "10", "--epochs", "3",
                       "--limit", "256", "--no-val", "--out", str(tmp_path / "nan")) == 1
        err = capsys.readouterr().err
        assert "loss is not finite" in err
        if (tmp_path / "nan" / "model.pt").is_file():  # diverged after an epoch: name the kept checkpoint
            assert "last good checkpoint" in err and str(tmp_path / "nan" / "model.pt") in err
            assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "nan" / "model.pt")
                       ["state_dict"].values())
        else:  # diverged in the first epoch: say that none was written, name no file
            assert "no checkpoint was written yet" in err and "model.pt" not in err


def test_sigkill_mid_epoch_and_resume(tmp_path: Path) -> None:
    """Kill a CLI run with SIGKILL mid-epoch, resume it: same number of steps, no lost/duplicated epochs."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "deform_robust.cli", "train", "--defense", "FGR", "--weight", "1", "--epochs", "3",
            "--limit", "640", "--batch-size", "32", "--no-val", "--no-progress", "--checkpoint-every", "3",
            "--out", str(out)]  # 20 steps per epoch
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if (out / "model.pt").is_file():
                try:
                    state = load_checkpoint(out / "model.pt")["trainer"]
                except (RuntimeError, EOFError, ValueError):  # pragma: no cover - never half-written
                    raise
                if state["global_step"] >= 24:  # in epoch 2
                    proc.send_signal(signal.SIGKILL)
                    killed_at = state["global_step"]
                    break
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "model.pt")["trainer"]
    assert state["epoch"] >= 1 and state["global_step"] < 60
    done = subprocess.run(args + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = load_checkpoint(out / "model.pt")
    assert final["trainer"]["global_step"] == 60 and final["meta"]["complete"]
    log = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2, 3]
    assert [r["steps"] for r in log["epochs"]] == [20, 20, 20]
    assert [r["global_step"] for r in log["epochs"]] == [20, 40, 60]
    assert torch.isfinite(torch.tensor([r["train_loss"] for r in log["epochs"]])).all()
