"""Reliability of the harness: bad cell files, bad results files, locked folders, NaN models, damaged checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from deform_robust.cells import CellStore, OutputLock, plan_cells
from deform_robust.config import ConfigError, parse_config
from deform_robust.data import TestData
from deform_robust.runner import run_config
from eval.cli import main as eval_main
from fgr_defense.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[2]


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1)) * float("nan")


def _cfg(model: nn.Module, n: int = 16) -> Any:
    return parse_config({"name": "r", "device": "cpu", "data": {"dataset": "mnist5k", "n": n, "batch_size": 16},
                         "models": [{"name": "m", "source": "object", "obj": model}],
                         "attacks": [{"family": "FlowFGSM", "budgets": [0.5, 1.0]}]})


class TestCellFiles:
    @pytest.mark.parametrize("content", [b"\xff\xfe\x00 not utf-8", b"[]", b"null", b'{"kind": "attack"}', b"{trunc"])
    def test_bad_cell_file_is_warned_about_and_recomputed(self, tmp_path: Path, trained_model: nn.Module,
                                                          content: bytes) -> None:
        cfg = _cfg(trained_model)
        first = run_config(cfg, tmp_path)
        assert first is not None
        cell = plan_cells(cfg)[1]
        path = CellStore(tmp_path).path(cell)
        path.write_bytes(content)
        redone: list[str] = []
        with pytest.warns(RuntimeWarning, match=str(path.name)):
            again = run_config(cfg, tmp_path, on_cell_done=lambda c, r: redone.append(c.key))
        assert redone == [cell.key]
        assert again is not None
        assert [c["robust"] for c in again["cells"]] == [c["robust"] for c in first["cells"]]


class TestResultsFiles:
    @pytest.mark.parametrize("content", ["{", "{}", "[]", '{"format": "other", "config": {}, "models": [], '
                                                       '"cells": [], "worst_case": [], "checks": []}'])
    def test_report_on_a_bad_results_file_names_it(self, tmp_path: Path, content: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "results.json").write_text(content)
        assert eval_main(["report", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "results.json") in err and "Traceback" not in err


class TestLock:
    def test_second_run_on_the_same_folder_stops_with_a_message(self, tmp_path: Path,
                                                                trained_model: nn.Module) -> None:
        ckpt = tmp_path / "m.pt"
        save_model(trained_model, ckpt, {"name": "smallcnn16", "in_channels": 1, "num_classes": 10, "size": 28})
        raw = {"name": "lock", "device": "cpu", "data": {"dataset": "mnist5k", "n": 8},
               "models": [{"name": "m", "source": "checkpoint", "path": str(ckpt)}],
               "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}], "plots": {"enabled": False}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        out = tmp_path / "out"
        with OutputLock(out):  # another run holds the folder
            proc = subprocess.run([sys.executable, "-m", "eval", "run", "--config", str(tmp_path / "c.yaml"),
                                   "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        assert "another run (pid" in proc.stderr and str(out) in proc.stderr
        assert not (out / "cells").exists()
        assert eval_main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]) == 0  # free again


class TestBadModels:
    def test_nan_logits_are_an_error_not_numbers(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"models\[0\] \(m\): model output: expected finite logits .* got NaN or inf for"):
            run_config(_cfg(NaNModel()), tmp_path)
        assert not (tmp_path / "results.json").exists()

    @pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"plain text, not a checkpoint"])
    def test_damaged_checkpoint_names_the_file(self, tmp_path: Path, content: bytes) -> None:
        ckpt = tmp_path / "broken.pt"
        ckpt.write_bytes(content)
        cfg = parse_config({"name": "b", "device": "cpu", "data": {"dataset": "mnist5k", "n": 4},
                            "models": [{"name": "b", "source": "checkpoint", "path": str(ckpt)}],
                            "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]})
        with pytest.raises(ConfigError) as info:
            run_config(cfg, tmp_path / "out", data=TestData(torch.rand(4, 1, 28, 28), torch.zeros(4).long(), "t", 10))
        assert str(ckpt) in str(info.value) and "not a readable checkpoint" in str(info.value)


def test_configs_are_code_and_the_help_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Parsing a config imports its ``module:callable`` (its code runs), and ``run --help`` warns of it."""
    (tmp_path / "userpkg_cfgcode.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('ran.txt').write_text('yes')\n"
        "import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parse_config({"name": "c", "device": "cpu", "data": {"dataset": "mnist5k", "n": 8},
                  "models": [{"name": "m", "source": "callable", "callable": "userpkg_cfgcode:make"}],
                  "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]})
    assert (tmp_path / "ran.txt").read_text() == "yes"
    from deform_robust.cli import main as dr_main

    with pytest.raises(SystemExit):
        dr_main(["run", "--help"])
    assert "Configs are code" in capsys.readouterr().out


def test_warnings_are_not_errors_for_a_healthy_run(tmp_path: Path, trained_model: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = run_config(_cfg(trained_model, n=8), tmp_path)
    assert res is not None and json.loads((tmp_path / "results.json").read_text())["models"][0]["n"] == 8
