"""deform_robust.config / deform_robust.registry: bad configs fail at parse time with errors that name the entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from deform_robust.config import ConfigError, load_config, parse_config
from deform_robust.data import TestData
from deform_robust.registry import FLOW_FAMILIES, build_attack, resolve_attack
from deform_robust.runner import run_config
from deform_robust.zoo import DEFAULT_SUITE
from fgr_defense.models import SmallCNN

CONFIGS = sorted((Path(__file__).parents[2] / "eval" / "configs").glob("*.yaml"))
PAPER_FAMILIES = {"FlowFGSM", "FlowPGD", "StAdv", "FlowES"}


def _data(x: torch.Tensor, y: torch.Tensor) -> TestData:
    return TestData(x, y, "test", 10)


def _cfg(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {"dataset": "mnist5k", "n": 8},
        "models": [{"name": "m", "source": "object", "obj": SmallCNN(width=4)}],
        "attacks": [{"family": "FlowFGSM", "budgets": [0.5, 1.0]}],
    }
    raw.update(over)
    return raw


class TestParse:
    def test_smoke(self) -> None:
        cfg = parse_config(_cfg())
        assert cfg.attacks[0].name == "FlowFGSM" and cfg.attacks[0].budgets == (0.5, 1.0)
        assert cfg.models[0].defense == "m" and cfg.models[0].group == "all"
        assert cfg.data.batch_size == 250 and cfg.device == "auto"

    def test_defense_from_instance_name(self) -> None:
        raw = _cfg(models=[{"name": "IGR(lam=1000)", "source": "object", "obj": SmallCNN(width=4)}])
        assert parse_config(raw).models[0].defense == "IGR"

    def test_round_trip(self) -> None:
        raw = _cfg(attacks=[{"family": "FlowPGD", "name": "PGD-7", "budgets": [1.0], "params": {"steps": 7}}])
        cfg = parse_config(raw)
        d = cfg.to_dict()
        assert d["attacks"] == [{"name": "PGD-7", "family": "FlowPGD", "budgets": [1.0], "params": {"steps": 7}}]

    @pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
    def test_shipped_configs_parse(self, path: Path) -> None:
        cfg = load_config(path, check_files=False)
        assert cfg.attacks and cfg.models
        assert {a.family for a in cfg.attacks} == PAPER_FAMILIES

    def test_shipped_zoo_suite_parses(self) -> None:
        from deform_robust.zoo import zoo_config

        cfg = zoo_config("cifar10", "Linf", ["Standard", "Carmon2019Unlabeled"], "models",
                         yaml.safe_load(DEFAULT_SUITE.read_text()))
        assert [m.name for m in cfg.models] == ["Standard", "Carmon2019Unlabeled"]
        assert cfg.models[0].source == "robustbench" and cfg.data.dataset == "cifar10"
        assert {a.family for a in cfg.attacks} == PAPER_FAMILIES


class TestErrors:
    @pytest.mark.parametrize(
        ("over", "key", "words"),
        [
            ({"attacks": [{"family": "FlowCW", "budgets": [1.0]}]}, "attacks[0].family", "unknown attack 'FlowCW'"),
            ({"attacks": [{"family": "torchattacks.Nope", "budgets": [1.0]}]}, "attacks[0].family",
             "torchattacks has no attack 'Nope'"),
            ({"attacks": [{"family": "no_such_module:f", "budgets": [1.0]}]}, "attacks[0].family", "cannot import"),
            ({"attacks": [{"family": "FlowPGD", "budgets": [0.5, -1.0]}]}, "attacks[0].budgets[1]", "in [0, 10000]"),
            ({"attacks": [{"family": "FlowPGD", "budgets": [0.5, float("inf")]}]}, "attacks[0].budgets[1]", "finite"),
            ({"attacks": [{"family": "FlowPGD", "budgets": [1.0, 0.5]}]}, "attacks[0].budgets[1]", "increasing"),
            ({"attacks": [{"family": "FlowPGD", "budgets": []}]}, "attacks[0].budgets", "non-empty"),
            ({"attacks": [{"family": "FlowPGD", "budgets": [1], "params": {"nope": 1}}]},
             "attacks[0].params.nope", "takes no parameter"),
            ({"attacks": [{"family": "FlowPGD", "budgets": [1], "params": {"eps": 1}}]},
             "attacks[0].params.eps", "budget comes from"),
            ({"attacks": [{"family": "FlowFGSM", "budgets": [1]}, {"family": "FlowFGSM", "budgets": [2]}]},
             "attacks[1].name", "duplicate"),
            ({"models": [{"name": "x", "source": "checkpoint", "path": "/nonexistent/ckpt.pt"}]},
             "models[0] (x).path", "checkpoint file not found"),
            ({"models": [{"name": "x", "source": "callable", "callable": "no_colon"}]},
             "models[0] (x).callable", "module:attribute"),
            ({"models": [{"name": "x", "source": "zip"}]}, "models[0] (x).source", "expected one of"),
            ({"data": {"dataset": "imagenet"}}, "data.dataset", "no dataset named 'imagenet'"),
            ({"data": {"pipeline": "fancy"}}, "data.pipeline", "expected one of"),
            ({"data": {"n": 0}}, "data.n", "int >= 1"),
            ({"device": "tpu"}, "device", "expected auto"),
            ({"typo": 1}, "typo", "unknown key"),
            ({"plots": {"attack": "FlowPGD"}}, "plots.attack", "attack names"),
        ],
    )
    def test_bad_config_names_the_key(self, over: dict[str, Any], key: str, words: str) -> None:
        with pytest.raises(ConfigError) as info:
            parse_config(_cfg(**over), source="my.yaml")
        msg = str(info.value)
        assert msg.startswith(f"my.yaml: {key}: "), msg
        assert words in msg

    def test_yaml_file_errors(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="config: no file"):
            load_config(tmp_path / "missing.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("attacks: [\n")
        with pytest.raises(ConfigError, match="not a valid YAML"):
            load_config(bad)
        neg = tmp_path / "neg.yaml"
        neg.write_text(yaml.safe_dump({"models": [{"name": "a", "source": "callable",
                                                   "callable": "fgr_defense.models:SmallCNN"}],
                                       "attacks": [{"family": "StAdv", "budgets": [-0.5]}]}))
        with pytest.raises(ConfigError, match=r"neg.yaml: attacks\[0\].budgets\[0\]: expected a finite number in \[0, 10000\]"):
            load_config(neg)

    @pytest.mark.parametrize(
        ("model", "words"),
        [(SmallCNN(in_channels=3, size=32, width=4), "does not accept 'test' images of shape (1, 28, 28)"),
         (SmallCNN(num_classes=5, width=4), "has 5 outputs but the data has 10 classes")],
    )
    def test_dataset_model_mismatch(self, tmp_path: Path, model: torch.nn.Module, words: str) -> None:
        cfg = parse_config(_cfg(models=[{"name": "cifar-net", "source": "object", "obj": model}]))
        x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
        with pytest.raises(ConfigError) as info:
            run_config(cfg, tmp_path, data=_data(x, y))
        assert "models[0] (cifar-net)" in str(info.value) and words in str(info.value)

    def test_callable_weights_mismatch(self, tmp_path: Path) -> None:
        w = tmp_path / "w.pt"
        torch.save(SmallCNN(width=8).state_dict(), w)
        cfg = parse_config(_cfg(models=[{"name": "c", "source": "callable", "callable": "fgr_defense.models:SmallCNN",
                                         "kwargs": {"width": 4}, "weights": str(w)}]))
        with pytest.raises(ConfigError, match=r"models\[0\] \(c\).weights: .* does not fit"):
            run_config(cfg, tmp_path / "out", data=_data(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)))


class TestBuildAttack:
    def test_pgd_alpha_rules(self) -> None:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        assert build_attack("FlowPGD", model, 2.0, {"steps": 5, "alpha_ratio": 0.25}).alpha == pytest.approx(0.5)
        assert build_attack("FlowPGD", model, 2.0, {"steps": 5}).alpha == pytest.approx(0.5)  # FlowPGD's eps/4
        assert build_attack("FlowPGD", model, 2.0, {"steps": 5, "alpha": 0.1}).alpha == pytest.approx(0.1)

    @pytest.mark.parametrize("family", [*FLOW_FAMILIES, "torchattacks.PGD", "torchattacks.FGSM"])
    def test_every_family_builds_with_budget(self, family: str) -> None:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        params = {"version": "fast"} if family == "FlowAutoAttack" else {}
        atk = build_attack(family, model, 0.75, params)
        assert getattr(atk, resolve_attack(family).info.budget_arg) == 0.75
        adv = atk(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        assert adv.shape == (2, 1, 4, 4)


class TestParseTimeValidation:
    """Attack parameters are checked when the config is parsed, naming the entry (not 3-7 cells into the run)."""

    @pytest.mark.parametrize(
        ("family", "params", "key", "words"),
        [
            ("FlowPGD", {"steps": "5"}, "attacks[0].params.steps", "expected an int"),
            ("FlowPGD", {"steps": -5}, "attacks[0].params.steps", ">= 0"),
            ("FlowPGD", {"steps": 5.5}, "attacks[0].params.steps", "expected an int"),
            ("FlowES", {"population": 3}, "attacks[0].params.population", "even"),
            ("FlowPGD", {"alpha": float("nan")}, "attacks[0].params.alpha", "finite"),
            ("StAdv", {"lr": float("inf")}, "attacks[0].params.lr", "finite"),
            ("FlowPGD", {"alpha_ratio": float("inf")}, "attacks[0].params.alpha_ratio", "finite"),
            ("FlowPGD", {"alpha_ratio": 0.5, "alpha": 0.1}, "attacks[0].params.alpha_ratio", "not both"),
            ("FlowPGD", {"loss": "hinge"}, "attacks[0].params.loss", "expected one of"),
            ("torchattacks.PGD", {"steps": "7"}, "attacks[0].params.steps", "expected an int"),
            ("torchattacks.PGD", {"nope": 1}, "attacks[0].params.nope", "takes no parameter"),
        ],
    )
    def test_bad_value_names_the_entry(self, family: str, params: dict[str, Any], key: str, words: str) -> None:
        raw = _cfg(attacks=[{"family": family, "budgets": [0.5], "params": params}])
        with pytest.raises(ConfigError) as info:
            parse_config(raw, source="c.yaml")
        msg = str(info.value)
        assert msg.startswith(f"c.yaml: {key}: "), msg
        assert words in msg, msg

    def test_yaml_nan_and_inf(self, tmp_path: Path) -> None:
        for value, words in ((".nan", "finite"), (".inf", "finite"), ("-5", ">= 0")):
            path = tmp_path / "c.yaml"
            path.write_text("models: [{name: m, source: callable, callable: 'fgr_defense.models:SmallCNN'}]\n"
                            f"attacks:\n- family: FlowPGD\n  budgets: [0.5]\n- family: FlowPGD\n  name: b\n"
                            f"  budgets: [0.5]\n  params: {{alpha_ratio: 0.1}}\n- family: StAdv\n  budgets: [0.5]\n"
                            f"  params: {{tau: {value}}}\n")
            with pytest.raises(ConfigError, match=rf"attacks\[2\]\.params\.tau: .*{words}"):
                load_config(path)

    def test_user_callable_attack_and_pixel_baseline_parse(self) -> None:
        cfg = parse_config(_cfg(attacks=[{"family": "torchattacks.PGD", "budgets": [0.03], "params": {"steps": 3}},
                                         {"family": "tests.helpers:make_attack", "budgets": [0.5]}]))
        assert [a.resolved.info.space for a in cfg.attacks] == ["pixel", "pixel"]
        assert cfg.attacks[0].resolved.budget_unit == "intensity"
