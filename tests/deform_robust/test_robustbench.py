"""deform_robust + RobustBench: a real zoo architecture, saved where load_model expects it, loaded offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from deform_robust.data import TestData
from deform_robust.robustbench import (
    expected_weight_files,
    import_robustbench_utils,
    load_robustbench_model,
    robustbench_entry,
)
from deform_robust.zoo import run_zoo, zoo_config

# Wong2020Fast (CIFAR-10, Linf) is a PreActResNet-18 with input normalization: the smallest
# real zoo architecture that runs in well under a second on two 32x32 images on a CPU.
NAME = "Wong2020Fast"

SUITE: dict[str, Any] = {
    "seed": 0,
    "attacks": [
        {"family": "FlowFGSM", "budgets": [0.25]},
        {"family": "FlowPGD", "budgets": [0.25], "params": {"steps": 2}},
    ],
    "plots": {"enabled": False},
}


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download path robustbench has fail loudly."""
    rbu = import_robustbench_utils()

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(rbu, "download_gdrive_new", forbidden)
    monkeypatch.setattr(rbu, "download_gdrive", forbidden)
    monkeypatch.setattr(rbu.gdown, "download", forbidden)
    monkeypatch.setattr(rbu.requests.Session, "get", forbidden)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_dir holding randomly initialised weights of the real Wong2020Fast architecture."""
    model_dir = tmp_path_factory.mktemp("rb-models")
    torch.manual_seed(0)
    net = robustbench_entry(NAME, "cifar10", "Linf")["model"]()
    (path,) = expected_weight_files(NAME, "cifar10", "Linf", model_dir)
    path.parent.mkdir(parents=True)
    # as the zoo ships it: {'state_dict': ...} with DataParallel's 'module.' prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return model_dir


def test_compat_imports_robustbench() -> None:
    rbu = import_robustbench_utils()
    assert callable(rbu.load_model)
    import autoattack  # registered by the compat module when only pyautoattack is installed
    import autoattack.state
    import pyautoattack
    import pyautoattack.state

    assert issubclass(autoattack.AutoAttack, pyautoattack.AutoAttack)
    assert autoattack.state.EvaluationState is pyautoattack.state.EvaluationState  # robustbench's import


def test_expected_file_layout() -> None:
    assert expected_weight_files("Carmon2019Unlabeled", "cifar10", "Linf", "models") == [
        Path("models/cifar10/Linf/Carmon2019Unlabeled.pt")]
    files = expected_weight_files("Chen2020Adversarial", "cifar10", "Linf", "m")  # an ensemble of 3
    assert [p.name for p in files] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]


def test_missing_weights_name_the_file_and_never_download(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_robustbench_model("Carmon2019Unlabeled", "cifar10", "Linf", tmp_path)
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in str(info.value)
    assert not (tmp_path / "cifar10").exists()  # robustbench was not even asked
    cfg = zoo_config("cifar10", "Linf", ["Standard"], str(tmp_path), SUITE)
    with pytest.raises(FileNotFoundError, match=r"Standard.*Standard\.pt"):
        run_zoo(cfg, tmp_path / "out", data=TestData(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), "test", 10))


@pytest.mark.parametrize("prog", ["deform-robust", "python -m eval"])
def test_zoo_cli_reports_missing_weights(tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str],
                                         prog: str) -> None:
    from deform_robust.cli import main as installed
    from eval.cli import main as harness

    main = installed if prog == "deform-robust" else harness
    code = main(["zoo", "--dataset", "cifar10", "--threat-model", "Linf", "--models", "Standard,Carmon2019Unlabeled",
                 "--model-dir", str(tmp_path / "models"), "--data-root", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt") in err


def test_unknown_zoo_name() -> None:
    with pytest.raises(ValueError, match="close matches: .*Carmon2019Unlabeled"):
        robustbench_entry("Carmon2019Unlabelled", "cifar10", "Linf")
    with pytest.raises(ValueError, match="dataset"):
        robustbench_entry("Standard", "imagenet", "Linf")


def test_real_zoo_architecture_loads_offline_and_is_evaluated(tmp_path: Path, zoo_dir: Path,
                                                              no_network: None) -> None:
    model = load_robustbench_model(NAME, "cifar10", "Linf", zoo_dir)
    assert type(model).__name__ == "Wong2020FastNet" and not model.training
    reference = robustbench_entry(NAME, "cifar10", "Linf")["model"]()
    (path,) = expected_weight_files(NAME, "cifar10", "Linf", zoo_dir)
    state = torch.load(path, weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))

    cfg = zoo_config("cifar10", "Linf", [NAME], str(zoo_dir), SUITE, device="cpu")
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right, so the attacks have work to do
    paths = run_zoo(cfg, tmp_path, data=TestData(x, y, "test", 10))
    assert paths == [tmp_path / "cifar10" / "Linf" / f"{NAME}.json"]
    rec = json.loads(paths[0].read_text())
    assert rec["name"] == NAME and rec["dataset"] == "cifar10" and rec["threat_model"] == "Linf"
    assert rec["architecture"] == "Wong2020FastNet" and rec["clean_acc"] == 100.0
    assert set(rec["deformation_acc"]) == {"FlowFGSM", "FlowPGD"}
    assert set(rec["deformation_acc"]["FlowPGD"]) == {"0.25"}
    assert rec["suite"]["version"].startswith("deform-robust-eval/") and rec["suite"]["budget_unit"].startswith("pixels")
    assert rec["deformation_worst_case_acc"] == {"0.25": rec["deformation_worst_case_acc"]["0.25"]}
    assert rec["weights_sha256"] and rec["n_examples"] == 2
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.csv").is_file()


def test_robustbench_model_on_the_users_own_data(tmp_path: Path, zoo_dir: Path, no_network: None) -> None:
    """`deform-robust evaluate --model robustbench:cifar10/<name>` on a user's .npz of 32x32 RGB images."""
    import numpy as np

    from deform_robust.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "mine.npz"
    np.savez(data, images=rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), labels=np.array([0, 1, 2, 3]))
    args = ["evaluate", "--model", f"robustbench:cifar10/{NAME}", "--model-dir", str(zoo_dir), "--data", str(data),
            "--eps", "0.25", "--attacks", "FlowFGSM", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    rec = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert rec["n"] == 4
    with pytest.raises(ValueError, match=r"robustbench:<zoo>/<name>.*robustbench:cifar10/Wong2020Fast"):
        from deform_robust.models import load_model_source

        load_model_source(f"robustbench:{NAME}", model_dir=str(zoo_dir), dataset=str(data))
