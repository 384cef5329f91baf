"""Regressions of the first-hour reliability report (issue 16): each test fails without its fix.

1. cell identities are structured (names with ``|`` do not collide); format-2 cells are still read
2. training holds the output folder's lock
3. attacks and evaluate_robustness restore each module's own train/eval mode
4. suite and evaluation members must attack at the reported eps
5. StAdv works in float16
6. long and non-ASCII model/attack names give bounded cell file names
7. stale temporaries of the atomic writer are swept on start
8. YAML: duplicate keys and alias bombs are refused
9. the atomic writer respects the umask
10. huge finite budgets and learning rates are refused when parsed
11. ``module:callable`` resolves from the working directory; every model callable is resolved at parse time
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deform_robust import TrainSpec, train_from_spec
from deform_robust.cells import Cell, CellStore, plan_cells
from deform_robust.cli import main as dr_main
from deform_robust.cli import main as fgr_main
from deform_robust.config import ConfigError, load_config, parse_config, read_yaml
from deform_robust.registry import import_object
from deform_robust.runner import run_config
from fgr_defense.files import OutputLock, atomic_write_text, remove_stale_temporaries
from torchattacks_deform import FlowAutoAttack, FlowFGSM, FlowPGD, StAdv, evaluate_robustness

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["--epochs", "1", "--limit", "16", "--batch-size", "16", "--no-val", "--device", "cpu", "--no-progress"]


def linear(classes: int = 10, pixels: int = 784) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))


def grid(models: list[tuple[str, nn.Module]], attacks: list[dict[str, Any]], n: int = 8) -> Any:
    return parse_config({"name": "r", "device": "cpu", "checks": {"enabled": False},
                         "data": {"dataset": "mnist5k", "n": n, "batch_size": n},
                         "models": [{"name": name, "source": "object", "obj": obj} for name, obj in models],
                         "attacks": attacks})


# 1 ----------------------------------------------------------------------------------------------
class TestCellIdentity:
    def test_names_with_bars_do_not_collide(self, tmp_path: Path) -> None:
        a, b = Cell("m|A", "B", 0, 1.0), Cell("m", "A|B", 0, 1.0)
        assert a.key != b.key and a.filename != b.filename
        assert json.loads(a.key) == ["m|A", "B", 1.0] and json.loads(Cell("m").key) == ["m"]
        cfg = grid([("m|A", linear()), ("m", linear())],
                   [{"family": "FlowFGSM", "name": "B", "budgets": [1.0]},
                    {"family": "FlowFGSM", "name": "A|B", "budgets": [1.0]}])
        res = run_config(cfg, tmp_path, progress=False)
        assert res is not None
        got = sorted((c["model"], c["attack"]) for c in res["cells"])
        assert got == sorted([("m|A", "B"), ("m|A", "A|B"), ("m", "B"), ("m", "A|B")])
        assert len(list((tmp_path / "cells").glob("*.json"))) == len(plan_cells(cfg)) == 6

    def test_format2_cell_files_are_still_read(self, tmp_path: Path) -> None:
        cfg = grid([("m", linear())], [{"family": "FlowFGSM", "budgets": [0.5]}])
        first = run_config(cfg, tmp_path, progress=False)
        assert first is not None
        store = CellStore(tmp_path)
        for cell in plan_cells(cfg):  # rewrite every cell as format 2 did: "|"-joined key and file name
            rec = json.loads(store.path(cell).read_text())
            store.path(cell).unlink()
            rec["key"] = cell.label
            digest = hashlib.sha256(cell.label.encode()).hexdigest()[:10]
            assert cell.legacy_filename.endswith(f"__{digest}.json")
            (store.dir / cell.legacy_filename).write_text(json.dumps(rec))
        redone: list[str] = []
        again = run_config(cfg, tmp_path, progress=False, on_cell_done=lambda c, r: redone.append(c.key))
        assert redone == [] and again is not None
        assert [c["robust"] for c in again["cells"]] == [c["robust"] for c in first["cells"]]
        assert [c["key"] for c in again["cells"]] == [c.key for c in plan_cells(cfg)[1:]]

    def test_format2_file_of_the_other_colliding_cell_is_not_taken(self, tmp_path: Path) -> None:
        mine, other = Cell("m|", "|B", 0, 1.0), Cell("m", "||B", 0, 1.0)
        assert mine.legacy_filename == other.legacy_filename  # the old collision: same label, same slugs
        store = CellStore(tmp_path)
        store.dir.mkdir(parents=True)
        rec = {"kind": "attack", "key": other.label, "fingerprint": "f", "model": "m", "attack": "||B",
               "budget": 1.0, "budget_index": 0, "robust_acc": 0.5, "robust": "01"}
        (store.dir / other.legacy_filename).write_text(json.dumps(rec))
        assert store.read(mine) is None
        assert store.read(other) == {**rec, "key": other.key}


# 2 ----------------------------------------------------------------------------------------------
class TestTrainLock:
    def test_second_train_on_one_out_stops_at_once(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "run"
        with OutputLock(out):  # another run holds the folder
            argv = ["train", "--out", str(out), *TINY_TRAIN]
            status = dr_main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 1 and len(err.splitlines()) == 1, err
        assert str(out) in err and f"pid {os.getpid()}" in err
        assert not (out / "model.pt").exists()

    def test_train_from_spec_releases_the_lock(self, tmp_path: Path) -> None:
        spec = TrainSpec(epochs=1, limit=16, batch_size=16, validation=False, device="cpu", progress=False)
        with pytest.raises(FileNotFoundError, match="^resume: no checkpoint"):
            train_from_spec(spec, tmp_path, mode="resume")
        OutputLock(tmp_path).acquire().release()  # free again


# 3 ----------------------------------------------------------------------------------------------
class FrozenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).flatten(1))


class TestModes:
    def _model(self) -> FrozenBN:
        torch.manual_seed(0)
        model = FrozenBN().train()
        model.bn.eval()  # frozen batch norm in a model that is training
        return model

    def _assert_modes(self, model: FrozenBN) -> None:
        assert model.training and model.conv.training and model.fc.training and not model.bn.training

    def test_attacks_restore_each_module(self) -> None:
        model = self._model()
        x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        atk = FlowPGD(model, eps=0.5, steps=2)
        atk(x, y)
        self._assert_modes(model)
        atk.get_flow(x, y)
        self._assert_modes(model)
        FlowAutoAttack(model, eps=0.5, version="custom", attacks=[FlowFGSM(model, eps=0.5)])(x, y)
        self._assert_modes(model)

    def test_evaluate_robustness_restores_each_module(self) -> None:
        model = self._model()
        x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        evaluate_robustness(model, x, y, eps=0.5, attacks=[FlowFGSM(model, eps=0.5)], progress=False)
        self._assert_modes(model)
        evaluate_robustness(model, x, y, eps=0.5, attacks=[FlowFGSM(model, eps=0.5)], cascade=True,
                            progress=False)
        self._assert_modes(model)


# 4 ----------------------------------------------------------------------------------------------
class TestMemberBudgets:
    def test_suite_refuses_a_member_with_another_budget(self) -> None:
        model = linear(3, 16)
        with pytest.raises(ValueError, match=r"^attacks\[1\]: expected a budget of Linf eps=0.1 px.*eps=3\.0"):
            FlowAutoAttack(model, eps=0.1, version="custom",
                           attacks=[FlowFGSM(model, eps=0.1), FlowPGD(model, eps=3.0, steps=1)])
        with pytest.raises(ValueError, match=r"^attacks\[0\]: .*bound=None"):
            FlowAutoAttack(model, eps=0.1, version="custom", attacks=[StAdv(model, steps=1)])
        with pytest.raises(ValueError, match=r"^attacks\[0\]: expected a budget of Linf .*\(L2\)"):
            FlowAutoAttack(model, eps=0.1, version="custom", attacks=[FlowPGD(model, eps=0.1, norm="L2")])
        FlowAutoAttack(model, eps=0.1, version="custom", attacks=[StAdv(model, steps=1, bound=0.1)])

    def test_evaluate_robustness_refuses_a_member_with_another_budget(self) -> None:
        model = linear(3, 16)
        x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
        with pytest.raises(ValueError, match=r"^attacks\['big'\]: expected a budget of Linf eps=0.1 px"):
            evaluate_robustness(model, x, y, eps=0.1, attacks={"ok": FlowFGSM(model, eps=0.1),
                                                               "big": FlowFGSM(model, eps=3.0)})
        with pytest.raises(ValueError, match=r"^attacks\[0\]: expected a budget"):
            evaluate_robustness(model, x, y, eps=0.1, attacks=[FlowPGD(model, eps=3.0, steps=1)], cascade=True)


# 5 ----------------------------------------------------------------------------------------------
def test_stadv_works_in_float16() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)).half()
    x, y = torch.rand(4, 1, 28, 28).half(), torch.randint(0, 10, (4,))
    atk = StAdv(model, steps=5)  # the default settings, fewer steps
    flow = atk.get_flow(x, y)
    assert flow.dtype == torch.float16 and bool(torch.isfinite(flow).all())
    adv = atk(x, y)
    assert adv.dtype == torch.float16 and bool(torch.isfinite(adv).all())


# 6 ----------------------------------------------------------------------------------------------
class TestNames:
    LONG_MODEL, LONG_ATTACK = "M" * 119, "A" * 118

    def test_long_names_give_bounded_file_names(self, tmp_path: Path) -> None:
        store = CellStore(tmp_path)
        for cell in (Cell(self.LONG_MODEL), Cell(self.LONG_MODEL, self.LONG_ATTACK, 0, 0.5),
                     Cell("Модель", "Атака", 0, 1.0), Cell("模型", "攻击", 0, 1.0), Cell("+++", "***", 0, 1.0)):
            assert len(cell.filename.encode()) < 200
            store.write({"key": cell.key}, cell)
            assert store.path(cell).is_file()
        a, b = Cell("x" * 100 + "1", "A", 0, 1.0), Cell("x" * 100 + "2", "A", 0, 1.0)
        assert a.filename.split("__")[0] != b.filename.split("__")[0]  # cut names keep their hash

    def test_run_with_long_and_cyrillic_names(self, tmp_path: Path) -> None:
        cfg = grid([(self.LONG_MODEL, linear()), ("Модель", linear())],
                   [{"family": "FlowFGSM", "name": self.LONG_ATTACK, "budgets": [0.5]},
                    {"family": "FlowFGSM", "name": "攻击", "budgets": [0.5]}], n=4)
        res = run_config(cfg, tmp_path, progress=False)
        assert res is not None and len(res["cells"]) == 4


# 7 ----------------------------------------------------------------------------------------------
class TestStaleTemporaries:
    OURS = (".model.pt.k3j_x9a2.tmp", ".log.json.abcdefgh.tmp")
    NOT_OURS = (".model.pt.tmp", "notes.tmp", ".x.toolong123.tmp", "results.json")

    def _litter(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (*self.OURS, *self.NOT_OURS):
            (folder / name).write_bytes(b"x")

    def _check(self, folder: Path) -> None:
        names = {p.name for p in folder.iterdir()}
        assert not names & set(self.OURS) and set(self.NOT_OURS) <= names

    def test_sweep_matches_only_the_atomic_writer_pattern(self, tmp_path: Path) -> None:
        self._litter(tmp_path)
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in removed) == sorted(self.OURS)
        self._check(tmp_path)

    def test_train_sweeps_its_folder(self, tmp_path: Path) -> None:
        self._litter(tmp_path)
        spec = TrainSpec(epochs=1, limit=16, batch_size=16, validation=False, device="cpu", progress=False)
        with pytest.raises(FileNotFoundError):
            train_from_spec(spec, tmp_path, mode="resume")  # stops after the sweep
        self._check(tmp_path)

    def test_run_sweeps_its_folders(self, tmp_path: Path) -> None:
        self._litter(tmp_path)
        self._litter(tmp_path / "cells")
        cfg = parse_config({"models": [{"name": "m", "path": str(tmp_path / "missing.pt")}],
                            "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]}, check_files=False)
        with pytest.raises(FileNotFoundError):
            run_config(cfg, tmp_path)  # stops at the missing checkpoint, after the sweep
        self._check(tmp_path)
        self._check(tmp_path / "cells")


# 8 ----------------------------------------------------------------------------------------------
class TestYaml:
    def test_duplicate_key_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "dup.yaml"
        path.write_text("models: [{name: m, source: callable, callable: 'fgr_defense.models:SmallCNN'}]\n"
                        "attacks: [{family: FlowFGSM, budgets: [1]}]\n"
                        "attacks: [{family: FlowPGD, budgets: [1]}]\n")
        with pytest.raises(ConfigError, match=r"dup\.yaml: attacks: duplicate key at line 3 \(first at line 2\)"):
            load_config(path)

    def test_alias_bomb_and_recursive_alias_are_refused(self, tmp_path: Path) -> None:
        lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
        for prev, cur in zip("abcdefgh", "bcdefghi"):
            lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match=r"bomb\.yaml: anchor 'e' \(line 5\): .*alias bomb"):
            read_yaml(bomb)
        loop = tmp_path / "loop.yaml"
        loop.write_text("a: &a [1, *a]\n")
        with pytest.raises(ConfigError, match=r"loop\.yaml: recursive alias"):
            read_yaml(loop)

    def test_shipped_configs_with_plain_aliases_still_load(self) -> None:
        assert read_yaml(ROOT / "deform_robust" / "zoo.yaml")["attacks"]


# 9 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_umask(tmp_path: Path, mask: int, mode: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode


# 10 ---------------------------------------------------------------------------------------------
class TestHugeValues:
    def test_train_lr_and_eps(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert fgr_main(["train", "--out", str(tmp_path / "a"), "--lr", "1e300", *TINY_TRAIN]) == 2
        assert "--lr: expected a finite number in (0, 10]" in capsys.readouterr().err
        assert fgr_main(["train", "--out", str(tmp_path / "b"), "--defense", "AT-PGD", "--eps", "1e300",
                         *TINY_TRAIN]) == 2
        assert "--eps: expected a finite number in [0, 10000]" in capsys.readouterr().err
        for k, flag in enumerate(("--weight", "--lam")):
            assert fgr_main(["train", "--out", str(tmp_path / f"w{k}"), "--defense", "FGR", flag, "1e300",
                             *TINY_TRAIN]) == 2
            assert f"{flag}: expected a finite number in [0, " in capsys.readouterr().err
            assert not (tmp_path / f"w{k}").exists()
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    def test_evaluate_eps(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status = dr_main(["evaluate", "--model", str(tmp_path / "none.pt"), "--data", "mnist5k", "--eps", "1e300"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and err.startswith("error: --eps: expected a finite number in (0, 10000]"), err

    def test_config_budgets_and_attacks(self) -> None:
        with pytest.raises(ConfigError, match=r"attacks\[0\]\.budgets\[1\]: expected a finite number in \[0, 10000\]"):
            parse_config({"models": [{"name": "m", "source": "object", "obj": linear()}],
                          "attacks": [{"family": "torchattacks.PGD", "budgets": [0.1, 1e300]}]})
        for make in (lambda m: FlowPGD(m, eps=1e300), lambda m: FlowAutoAttack(m, eps=1e300)):
            with pytest.raises(ValueError, match=r"^eps: expected a finite number in \[0, 10000\], got 1e\+300"):
                make(linear())
        with pytest.raises(ValueError, match=r"^eps: "):
            evaluate_robustness(linear(3, 16), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), eps=1e300)


# 11 ---------------------------------------------------------------------------------------------
class TestImports:
    def _package(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        name = f"firsthour_pkg_{os.getpid()}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "nets.py").write_text(
            "import torch\n\ndef Net():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
        monkeypatch.chdir(tmp_path)
        # as under the console script: neither "" nor the folder is on sys.path
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())])
        for mod in [m for m in sys.modules if m.startswith(name)]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setattr(sys, "modules", dict(sys.modules))
        return name

    def test_module_callable_resolves_from_the_working_directory(self, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
        name = self._package(tmp_path, monkeypatch)
        net = import_object(f"{name}.nets:Net")()
        assert isinstance(net, nn.Module)
        assert sys.path[0] == str(tmp_path)

    def test_every_model_callable_is_resolved_at_parse_time(self) -> None:
        raw = {"models": [{"name": "a", "source": "callable", "callable": "fgr_defense.models:SmallCNN"},
                          {"name": "b", "source": "callable", "callable": "fgr_defense.models:SmalCNN"}],
               "attacks": [{"family": "FlowFGSM", "budgets": [0.5]}]}
        with pytest.raises(ConfigError, match=r"^<dict>: models\[1\] \(b\)\.callable: module 'fgr_defense.models' "
                                              r"has no attribute 'SmalCNN'"):
            parse_config(raw)
