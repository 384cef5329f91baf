"""Regressions of the first-hour outputs (issue 16): each test fails without its fix.

1. evaluate_robustness: ``seed=`` (reproducible, the caller's RNG untouched), a list of
   budgets (one report per budget), the adversarial images, per-class accuracies.
2. ``deform-robust evaluate --save-adv DIR --csv FILE``; destinations checked before the
   evaluation, write failures as one line.
3. Provenance (versions, git revision, weights sha256) in robustness.json, results.json and
   the zoo records; eval/ takes the git rule from deform_robust.
"""

from __future__ import annotations

import csv
import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchattacks
from torch import Tensor, nn

import deform_robust
from deform_robust import provenance as prov
from deform_robust.cli import main as dr_main
from deform_robust.config import parse_config
from deform_robust.runner import run_config
from deform_robust.zoo import zoo_record
from fgr_defense.models import SmallCNN
from torchattacks_deform import (
    FlowFGSM,
    FlowPGD,
    RobustnessCurve,
    RobustnessReport,
    evaluate_robustness,
)

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE_KEYS = {"package", "version", "torch", "python", "git_revision", "weights_sha256"}
REVISION = re.compile(r"[0-9a-f]{4,40}(\+dirty)?")


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()


@pytest.fixture()
def data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(12, 1, 8, 8, generator=gen), torch.arange(12) % 3


def cheap(model: nn.Module) -> dict[str, Any]:
    """Deterministic flow attacks (no random start) and a pixel-space torchattacks attack."""
    return {"fgsm": FlowFGSM(model, eps=1.0), "pgd": FlowPGD(model, eps=1.0, steps=2, random_start=False),
            "pixel": torchattacks.FGSM(model, eps=0.1)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_provenance(info: dict[str, Any]) -> None:
    assert set(info) == PROVENANCE_KEYS
    assert info["package"] == "deform-robust" and info["version"] == deform_robust.__version__
    assert info["torch"] == torch.__version__ and info["python"] == platform.python_version()
    assert info["git_revision"] is None or REVISION.fullmatch(info["git_revision"])


# 1 ----------------------------------------------------------------------------------------------
class TestEvaluateRobustness:
    def test_seed_makes_runs_identical_and_leaves_the_callers_rng(self, data: tuple[Tensor, Tensor]) -> None:
        x, y = data
        model = linear()
        before = torch.get_rng_state()
        a = evaluate_robustness(model, x, y, eps=1.0, attacks="fast", seed=3)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is as it was
        b = evaluate_robustness(model, x, y, eps=1.0, attacks="fast", seed=3)
        assert a.seed == 3 and a.to_dict()["seed"] == 3
        assert a.robust_accuracy == b.robust_accuracy and a.worst_case_accuracy == b.worst_case_accuracy
        assert all(torch.equal(a.success[k], b.success[k]) for k in a.success)
        assert a.flows is not None and b.flows is not None and torch.equal(a.flows, b.flows)
        assert all(torch.equal(a.attack_flows[k], b.attack_flows[k]) for k in a.attack_flows)
        assert {k: v for k, v in a.to_dict().items() if k != "time_s"} == \
            {k: v for k, v in b.to_dict().items() if k != "time_s"}
        assert evaluate_robustness(model, x, y, eps=1.0, attacks=cheap(model)).seed is None
        for bad, exc in ((-1, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(exc, match=r"^seed: expected an int"):
                evaluate_robustness(model, x, y, attacks="fast", seed=bad)

    def test_a_list_of_budgets_gives_one_report_per_budget(self, data: tuple[Tensor, Tensor]) -> None:
        x, y = data
        model = linear()
        curve = evaluate_robustness(model, x, y, eps=[0.25, 1.0], attacks="fast", seed=0)
        assert isinstance(curve, RobustnessCurve) and list(curve) == [0.25, 1.0] and len(curve) == 2
        assert all(isinstance(r, RobustnessReport) for r in curve.values()) and curve[1].eps == 1.0
        alone = evaluate_robustness(model, x, y, eps=1.0, attacks="fast", seed=0)  # a float: one report, as before
        assert isinstance(alone, RobustnessReport) and alone.robust_accuracy == curve[1.0].robust_accuracy
        text = str(curve).splitlines()
        assert text[1].split()[:3] == ["eps", "clean", "%"] and text[2].split()[0] == "0.25" and len(text) == 4
        assert json.loads(json.dumps(curve.to_dict()))["eps"] == [0.25, 1.0]
        with pytest.raises(KeyError, match="0.5"):
            curve[0.5]
        cases = [
            (dict(eps=[]), ValueError, r"^eps: expected a budget or a non-empty list"),
            (dict(eps=[0.5, 0.5]), ValueError, r"^eps: expected distinct budgets, got 0.5"),
            (dict(eps=[0.5, -1.0]), ValueError, r"^eps\[1\]: expected a finite number"),
            (dict(eps=[0.5, 1.0], attacks=cheap(model)), ValueError, r"^attacks: with a list of budgets"),
        ]
        for kwargs, exc, match in cases:
            with pytest.raises(exc, match=match):
                evaluate_robustness(model, x, y, **kwargs)
        with pytest.raises(TypeError, match=r"^images: with a list of budgets .* one-shot iterator"):
            evaluate_robustness(model, iter([(x, y)]), eps=[0.5, 1.0], attacks="fast")

    def test_adversarial_images_per_attack_and_worst_case(self, data: tuple[Tensor, Tensor]) -> None:
        x, y = data
        x0 = x.clone()
        model = linear()
        attacks = cheap(model)
        r = evaluate_robustness(model, x, y, eps=1.0, attacks=attacks, batch_size=5)
        cc = r.clean_correct
        assert cc.any() and torch.equal(x, x0)
        adv = r.adv_images
        assert list(adv) == ["fgsm", "pgd", "pixel"] and all(t.shape == x.shape for t in adv.values())
        for name in ("fgsm", "pgd"):  # the images the attack found, recomputed from its flows
            atk = attacks[name]
            expected = atk.apply_flow(x[cc], atk.get_flow(x[cc], y[cc]))
            assert torch.allclose(adv[name][cc], expected, atol=1e-6)
            assert torch.equal(adv[name][~cc], x[~cc])  # not attacked: clean
        with torch.no_grad():
            for name, images in adv.items():
                assert torch.equal(model(images).argmax(1) != y, r.success[name] | ~cc)
            worst = r.adversarial("worst")
            assert torch.equal(model(worst).argmax(1) != y, ~r.robust)  # fools exactly the non-robust ones
        fooled = r.success["fgsm"] | r.success["pgd"] | r.success["pixel"]
        assert torch.equal(worst[~fooled], x[~fooled])
        first = r.success["fgsm"]
        assert torch.allclose(worst[first], adv["fgsm"][first])
        with pytest.raises(ValueError, match=r"^name: expected 'worst' or one of the report's attacks"):
            r.adversarial("nope")
        bare = evaluate_robustness(model, x, y, eps=1.0, attacks=cheap(model), return_flows=False)
        assert bare.images is None and not bare.attack_flows
        with pytest.raises(ValueError, match=r"^adversarial: expected a report with images"):
            bare.adversarial()
        cascade = evaluate_robustness(model, x, y, eps=1.0, attacks={k: attacks[k] for k in ("fgsm", "pgd")},
                                      cascade=True)
        with torch.no_grad():
            for name in ("fgsm", "pgd"):  # a cascade keeps each member's image where it fooled the example
                images = cascade.adversarial(name)
                assert torch.equal(model(images).argmax(1) != y, cascade.success[name] | ~cascade.clean_correct)
            assert torch.equal(model(cascade.adversarial("worst")).argmax(1) != y, ~cascade.robust)

    def test_per_class_accuracies(self, data: tuple[Tensor, Tensor]) -> None:
        x, y = data
        model = linear()
        r = evaluate_robustness(model, x, y, eps=1.0, attacks=cheap(model))
        assert sorted(r.per_class) == [0, 1, 2]
        for c, v in r.per_class.items():
            mask = y == c
            assert v["n"] == int(mask.sum()) == 4
            assert v["clean_accuracy"] == pytest.approx(float(r.clean_correct[mask].float().mean()))
            assert v["worst_case_accuracy"] == pytest.approx(float(r.robust[mask].float().mean()))
        assert json.loads(json.dumps(r.to_dict()))["per_class"]["1"] == r.per_class[1]
        line = str(r).splitlines()[-1]
        assert line.startswith("  per class, clean -> worst case %:") and "2: " in line
        many = RobustnessReport(n=30, clean_accuracy=1.0, robust_accuracy={}, worst_case_accuracy=0.5,
                                clean_correct=torch.ones(30, dtype=torch.bool), success={},
                                robust=torch.arange(30) % 2 == 0, flows=None, time_s={}, queries={}, eps=1.0,
                                norm="Linf", cascade=False, labels=torch.arange(30) % 15)
        assert "(5 lowest of 15 classes" in str(many)  # many classes: a compact line


# 2 ----------------------------------------------------------------------------------------------
@pytest.fixture()
def user(tmp_path: Path, mnist_test: tuple[Tensor, Tensor]) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.save(SmallCNN(width=4).state_dict(), tmp_path / "w.pt")
    x, y = mnist_test
    torch.save({"images": x[:12].clone(), "labels": y[:12].clone()}, tmp_path / "test.pt")
    args = ["evaluate", "--model", "fgr_defense.models:SmallCNN", "--kwargs", '{"width": 4}',
            "--weights", str(tmp_path / "w.pt"), "--data", str(tmp_path / "test.pt"), "--attacks", "FlowFGSM",
            "--device", "cpu", "--no-progress"]
    return {"dir": tmp_path, "args": args, "weights": tmp_path / "w.pt"}


class TestEvaluateCommand:
    def test_save_adv_csv_and_provenance(self, user: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        d = user["dir"]
        argv = [*user["args"], "--eps", "0.5,1", "--out", str(d / "o"), "--save-adv", str(d / "adv"),
                "--csv", str(d / "r" / "rows.csv")]
        assert dr_main(argv) == 0
        record = json.loads((d / "o" / "robustness.json").read_text())
        check_provenance(record["provenance"])
        assert record["provenance"]["weights_sha256"] == sha256(user["weights"])
        assert record["results"][0]["per_class"] and record["results"][0]["seed"] == 0
        for c, v in record["per_class"].items():  # per class over the budgets
            assert v["n"] == record["results"][0]["per_class"][c]["n"]
            assert list(v["worst_case_accuracy"]) == ["0.5", "1"]
        assert (d / "o" / "robustness.csv").read_text() == (d / "r" / "rows.csv").read_text()  # next to the JSON
        with open(d / "r" / "rows.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["budget"], r["attack"]) for r in rows] == [
            ("0.5", "clean"), ("0.5", "FlowFGSM"), ("0.5", "worst case"),
            ("1.0", "clean"), ("1.0", "FlowFGSM"), ("1.0", "worst case")]
        for row, res in zip(rows[1::3], record["results"]):
            assert float(row["accuracy"]) == pytest.approx(res["robust_accuracy"]["FlowFGSM"])
        assert float(rows[2]["accuracy"]) == pytest.approx(record["results"][0]["worst_case_accuracy"])
        model = SmallCNN(width=4)
        model.load_state_dict(torch.load(user["weights"], weights_only=True))
        model.eval()
        for eps in ("0.5", "1"):
            saved = torch.load(d / "adv" / f"adversarial_eps{eps}.pt", weights_only=True)
            assert saved["format"] == "deform-robust-adversarial/1" and saved["attacks"] == ["FlowFGSM"]
            assert saved["labels"].shape == (12,) and saved["adversarial"]["FlowFGSM"].shape == (12, 1, 28, 28)
            with torch.no_grad():
                fooled = model(saved["worst_case"]).argmax(1) != saved["labels"]
            assert torch.equal(fooled, ~saved["robust"])
        out = capsys.readouterr().out
        assert "adversarial_eps0.5.pt" in out and "rows.csv" in out

    @pytest.mark.parametrize(("flag", "where"), [("--out", "file/sub"), ("--save-adv", "file/sub"),
                                                 ("--csv", "file/rows.csv"), ("--csv", "folder")])
    def test_unwritable_destinations_fail_before_the_evaluation(self, flag: str, where: str, user: dict[str, Any],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
        d = user["dir"]
        (d / "file").write_text("not a folder")
        (d / "folder").mkdir()
        argv = [*user["args"], "--data", str(d / "missing.npz"), flag, str(d / where)]  # data never read
        assert dr_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag}: expected ") and "\n" not in err and "Traceback" not in err

    def test_a_full_disk_at_write_time_is_one_line(self, user: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        import fgr_defense.files

        def full(path: Any, write: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(fgr_defense.files, "atomic_write", full)
        assert dr_main([*user["args"], "--eps", "0.5", "--out", str(user["dir"] / "o")]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"error: --out: could not write {str(user['dir'] / 'o' / 'robustness.json')!r} " \
                      "(No space left on device)"


# 3 ----------------------------------------------------------------------------------------------
class TestProvenance:
    def test_results_json_and_zoo_records(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        torch.save(SmallCNN(width=4).state_dict(), tmp_path / "w.pt")
        cfg = parse_config({
            "name": "p", "device": "cpu", "checks": {"enabled": False},
            "data": {"dataset": "mnist5k", "n": 8, "batch_size": 8},
            "models": [{"name": "cnn", "source": "callable", "callable": "fgr_defense.models:SmallCNN",
                        "kwargs": {"width": 4}, "weights": str(tmp_path / "w.pt")},
                       {"name": "live", "source": "object", "obj": SmallCNN(width=4)}],
            "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]})
        results = run_config(cfg, tmp_path / "out", progress=False)
        assert results is not None
        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        check_provenance(saved["provenance"])
        assert saved["provenance"]["weights_sha256"] == {"cnn": sha256(tmp_path / "w.pt")}  # no file for "live"
        record = zoo_record(saved, "cnn")
        check_provenance(record["provenance"])
        assert record["provenance"]["weights_sha256"] == sha256(tmp_path / "w.pt")

    def test_one_home_for_the_rules(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        from eval import provenance as eval_prov

        assert eval_prov.git_revision is prov.git_revision
        from deform_robust import models

        assert models.file_sha256 is prov.file_sha256
        for path in (ROOT / "deform_robust").glob("*.py"):  # the installed package never imports eval/
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"^\s*(from|import) eval\b", text, flags=re.M), path.name
        if (ROOT / ".git").exists():
            assert REVISION.fullmatch(prov.provenance()["git_revision"] or "")
        monkeypatch.setattr(prov, "PACKAGE_ROOT", tmp_path)  # an installed wheel: no checkout around it
        assert prov.provenance()["git_revision"] is None
        (tmp_path / "w.bin").write_bytes(b"abc")
        assert prov.provenance(tmp_path / "w.bin")["weights_sha256"] == hashlib.sha256(b"abc").hexdigest()
