"""``deform-robust evaluate`` and ``deform-robust run`` share one evaluation step (issue 18).

Both go through :func:`torchattacks_deform.engine.attack_batch`; on one model, one data set and a
suite of deterministic attacks (FlowFGSM, StAdv: no random start) they must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from torch import nn

from deform_robust.cli import main as dr_main
from fgr_defense.checkpoint import save_model

BUDGETS = (0.5, 1.0)
ATTACKS = ("FlowFGSM", "StAdv")


@pytest.fixture()
def checkpoint(tmp_path: Path, trained_model: nn.Module) -> Path:
    path = tmp_path / "model.pt"
    arch = {"name": "smallcnn16", "in_channels": 1, "num_classes": 10, "size": 28}  # the fixture: width 16
    save_model(trained_model, path, arch, {"defense": "Standard"})
    return path


def test_evaluate_and_run_give_identical_numbers(tmp_path: Path, checkpoint: Path) -> None:
    n = 48
    assert dr_main(["evaluate", "--model", str(checkpoint), "--data", "mnist5k", "--n", str(n),
                    "--eps", ",".join(map(str, BUDGETS)), "--attacks", ",".join(ATTACKS),
                    "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    ev = json.loads((tmp_path / "ev" / "robustness.json").read_text())

    config = {"name": "same", "device": "cpu", "data": {"dataset": "mnist5k", "n": n, "batch_size": 256},
              "models": [{"name": "m", "source": "checkpoint", "path": str(checkpoint)}],
              "attacks": [{"family": a, "budgets": list(BUDGETS)} for a in ATTACKS],
              "checks": {"enabled": False}, "plots": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert dr_main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                    "--no-progress"]) == 0
    run = json.loads((tmp_path / "run" / "results.json").read_text())

    assert run["models"][0]["clean_acc"] == ev["results"][0]["clean_accuracy"]
    cells = {(c["attack"], c["budget"]): c["robust_acc"] for c in run["cells"]}
    worst = {w["budget"]: w["robust_acc"] for w in run["worst_case"]}
    for report in ev["results"]:
        eps = report["eps"]
        for attack in ATTACKS:
            assert cells[(attack, eps)] == report["robust_accuracy"][attack], (attack, eps)
        assert worst[eps] == report["worst_case_accuracy"], eps
    # the attacks did something (an attack that returns its input would leave robust == clean)
    assert min(cells.values()) < run["models"][0]["clean_acc"]
