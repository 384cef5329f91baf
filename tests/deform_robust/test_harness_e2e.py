"""The harness end to end: a tiny MNIST-5k grid -> JSON, CSV, report, plots; resume; staleness; sharding.

The grid includes a torchattacks pixel baseline and a user's ``module:callable`` attack next to the flow
families, run through ``python -m eval run``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from deform_robust.cells import Cell, assign_cells, cell_seed, merge_records, plan_cells
from deform_robust.config import EvalConfig, parse_config
from deform_robust.results import CSV_FIELDS
from deform_robust.runner import StaleResultsError, run_config
from eval.cli import main as eval_main
from eval.report import pct, table1
from fgr_defense.checkpoint import save_model
from fgr_defense.data import load_mnist5k
from fgr_defense.models import SmallCNN
from fgr_defense.naming import slugify

ATTACKS = [
    {"family": "FlowFGSM", "budgets": [0.5, 1.0]},
    {"family": "FlowPGD", "budgets": [0.5, 1.0], "params": {"steps": 3, "alpha_ratio": 0.5}},
    {"family": "StAdv", "budgets": [0.5, 1.0], "params": {"steps": 5}},
    {"family": "FlowES", "budgets": [0.5, 1.0], "params": {"population": 4, "steps": 3}},
]
BASELINES = [
    {"family": "torchattacks.PGD", "name": "PGD (pixels)", "budgets": [0.1], "params": {"steps": 3, "alpha": 0.05}},
    {"family": "tests.helpers:make_attack", "name": "mine", "budgets": [0.1], "params": {"steps": 2}},
]
VOLATILE = {"time_s", "device", "rank"}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory, trained_model: nn.Module) -> dict[str, Path]:
    """Two small models: the session's SmallCNN (as module:callable + weights) and a checkpoint."""
    d = tmp_path_factory.mktemp("models")
    weights = d / "smallcnn16.pt"
    torch.save(trained_model.state_dict(), weights)
    torch.manual_seed(1)
    x, y = load_mnist5k(train=True)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i in range(0, 1536, 128):
        loss = F.cross_entropy(net(x[i : i + 128]), y[i : i + 128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = d / "fgr.pt"
    save_model(net.eval(), ckpt, {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28},
               meta={"defense": "FGR"})
    return {"weights": weights, "ckpt": ckpt}


def tiny_raw(files: dict[str, Path], attacks: list[dict[str, Any]] = ATTACKS, n: int = 96,
             models: int = 2, plots: bool = True) -> dict[str, Any]:
    entries = [
        {"name": "Standard", "defense": "Standard", "group": "SmallCNN", "source": "callable",
         "callable": "fgr_defense.models:SmallCNN", "kwargs": {"width": 16}, "weights": str(files["weights"])},
        {"name": "FGR(lam=1)", "group": "SmallCNN", "source": "checkpoint", "path": str(files["ckpt"])},
    ][:models]
    return {"name": "tiny", "device": "cpu", "seed": 3, "data": {"dataset": "mnist5k", "n": n, "batch_size": 40},
            "models": entries, "attacks": attacks, "plots": {"enabled": plots, "samples": 2, "grid": 7},
            "report": {"table1_exclude": []}}


def tiny_config(files: dict[str, Path], attacks: list[dict[str, Any]] = ATTACKS, n: int = 96,
                models: int = 2, plots: bool = True) -> EvalConfig:
    return parse_config(tiny_raw(files, attacks, n, models, plots))


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def _md_table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells as strings) of the first Markdown table after ``heading``."""
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows


def _mask(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s])


class TestEndToEnd:
    def test_outputs_are_complete_and_consistent(self, tmp_path: Path, model_files: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        raw = tiny_raw(model_files, attacks=ATTACKS + BASELINES)
        cfg = parse_config(raw)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        assert eval_main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path)]) == 0
        saved = json.loads((tmp_path / "results.json").read_text())
        assert len(saved["cells"]) == 2 * (4 * 2 + 2)
        flow_cells = [c for c in saved["cells"] if c["space"] == "flow"]
        pixel = [c for c in saved["cells"] if c["space"] == "pixel"]
        assert len(flow_cells) == 16 and {c["attack"] for c in pixel} == {"PGD (pixels)", "mine"}
        for c in pixel:  # the pixel baselines ran and respected their L-inf budget in pixel values
            assert c["budget_unit"] == "intensity" and c["linf_max"] <= c["budget"] + 1e-5
            assert c["robust_acc"] <= c["clean_acc"] and c["queries_per_sample"] > 0
        models = {m["name"]: m for m in saved["models"]}
        assert models["FGR(lam=1)"]["defense"] == "FGR" and models["Standard"]["clean_acc"] > 0.8

        # cells: counts, masks and fractions agree; robust examples are clean-correct ones
        for c in saved["cells"]:
            clean = _mask(models[c["model"]]["correct"])
            robust = _mask(c["robust"])
            assert c["n"] == 96 and int(robust.sum()) == c["robust_count"]
            assert c["robust_acc"] == pytest.approx(c["robust_count"] / c["n"])
            assert not bool((robust & ~clean).any())
            assert c["clean_count"] == int(clean.sum())
            assert c["linf_max"] <= c["budget"] + 1e-4  # Linf budgets respected
            assert c["queries_per_sample"] > 0

        # worst case = AND of the flow attacks' masks at a budget, <= every one of them; pixel baselines excluded
        assert {w["budget"] for w in saved["worst_case"]} == {0.5, 1.0}
        for w in saved["worst_case"]:
            level_cells = [c for c in flow_cells if c["model"] == w["model"] and c["budget"] == w["budget"]]
            assert len(level_cells) == 4 and sorted(w["attacks"]) == sorted(c["attack"] for c in level_cells)
            both = _mask(models[w["model"]]["correct"])
            for c in level_cells:
                assert w["robust_acc"] <= c["robust_acc"] + 1e-12
                both &= _mask(c["robust"])
            assert w["robust_count"] == int(both.sum())

        # CSV rows equal JSON cells
        with open(tmp_path / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == CSV_FIELDS and len(rows) == len(saved["cells"])
        for row, c in zip(rows, saved["cells"]):
            assert (row["model"], row["attack"], float(row["budget"])) == (c["model"], c["attack"], c["budget"])
            assert float(row["robust_acc"]) == pytest.approx(c["robust_acc"], abs=1e-12)
            assert int(row["robust_count"]) == c["robust_count"]
            assert float(row["l2_mean"]) == pytest.approx(c["l2_mean"])
        with open(tmp_path / "worst_case.csv") as fh:
            wrows = list(csv.DictReader(fh))
        assert [float(r["robust_acc"]) for r in wrows] == [w["robust_acc"] for w in saved["worst_case"]]

        # report tables show the same numbers
        report = (tmp_path / "report.md").read_text()
        for a in cfg.attacks:
            table = _md_table(report, f"## {a.name} (")
            unit = "px" if a.resolved.info.space == "flow" else "intensity"
            assert table[0] == ["model", "clean"] + [f"{b:g} {unit}" for b in a.budgets]
            for row in table[2:]:
                for i, value in enumerate(row[2:]):
                    cell = next(c for c in saved["cells"] if c["model"] == row[0]
                                and c["attack"] == a.name and c["budget_index"] == i)
                    assert value == pct(cell["robust_acc"])
        worst_table = _md_table(report, "## Worst case over the suite")
        assert worst_table[0] == ["model", "clean", "0.5 px", "1 px"]
        for row in worst_table[2:]:
            for budget, value in zip((0.5, 1.0), row[2:]):
                w = next(x for x in saved["worst_case"] if x["model"] == row[0] and x["budget"] == budget)
                assert value == pct(w["robust_acc"])
        assert report.index("## Worst case over the suite") < report.index("## FlowFGSM (")  # the headline first
        t1 = _md_table(report, "## Table 1")
        totals = {r[0]: int(r[-1]) for r in t1[2:]}
        assert totals == {d: c["TOTAL"] for d, c in table1(saved)["counts"].items()}
        assert sum(totals.values()) >= 8  # 4 flow attacks x 2 budgets, ties count twice
        assert "## Gradient-masking checks" in report

        # plots: every promised PNG exists, is a PNG and is linked from the report
        expected = {f"robust_vs_budget_{slugify(a.name)}.png" for a in cfg.attacks} | {
            "landscape.png", "flow_vs_pixel_distance.png", "samples_standard.png", "samples_fgr-lam-1.png"}
        assert expected == {p.name for p in tmp_path.glob("*.png")}
        for name in expected:
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({name})" in report
        assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.png"))

    def test_cli_report_rerenders(self, tmp_path: Path, model_files: dict[str, Path]) -> None:
        cfg = tiny_config(model_files, attacks=ATTACKS[:1], n=32, models=1, plots=False)
        run_config(cfg, tmp_path)
        (tmp_path / "robust_vs_budget_flowfgsm.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a figure of an earlier run
        assert eval_main(["report", "--out", str(tmp_path)]) == 0
        report = (tmp_path / "report.md").read_text()
        assert "## FlowFGSM" in report and "](robust_vs_budget_flowfgsm.png)" in report  # kept, shown
        assert eval_main(["report", "--out", str(tmp_path / "nope")]) == 2


class TestCli:
    def test_run_from_yaml(self, tmp_path: Path, model_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
        main = eval_main
        raw = {"name": "cli", "device": "cpu", "data": {"dataset": "mnist5k", "n": 16},
               "models": [{"name": "FGR", "source": "checkpoint", "path": str(model_files["ckpt"])}],
               "attacks": [{"family": "FlowFGSM", "budgets": [0.0, 1.0]}]}
        path = tmp_path / "cli.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", "--config", str(path), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
        res = json.loads((tmp_path / "out" / "results.json").read_text())
        zero = next(c for c in res["cells"] if c["budget"] == 0.0)
        assert zero["robust_acc"] == zero["clean_acc"] and zero["queries_per_sample"] == 0  # budget 0 = identity
        assert not list((tmp_path / "out").glob("*.png")) and "report.md" in capsys.readouterr().out

        raw["attacks"][0]["budgets"] = [-1.0]
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", "--config", str(path), "--out", str(tmp_path / "bad")]) == 2
        assert "attacks[0].budgets[0]: expected a finite number in [0, 10000]" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


class TestResume:
    ATTACKS = [ATTACKS[0], ATTACKS[1]]

    def test_killed_run_resumes_to_identical_results(self, tmp_path: Path, model_files: dict[str, Path]) -> None:
        cfg = tiny_config(model_files, attacks=self.ATTACKS, n=48, models=1, plots=False)
        full = run_config(cfg, tmp_path / "full")
        assert full is not None

        done: list[str] = []

        def killer(cell: Cell, rec: dict[str, Any]) -> None:
            done.append(cell.key)
            if len(done) == 3:
                raise KeyboardInterrupt("simulated kill")

        with pytest.raises(KeyboardInterrupt):
            run_config(cfg, tmp_path / "resumed", on_cell_done=killer)
        cells_dir = tmp_path / "resumed" / "cells"
        assert len(list(cells_dir.glob("*.json"))) == 3 and not list(cells_dir.glob(".*"))
        assert not (tmp_path / "resumed" / "results.json").exists()

        rerun: list[str] = []
        resumed = run_config(cfg, tmp_path / "resumed", on_cell_done=lambda c, r: rerun.append(c.key))
        assert resumed is not None
        assert len(rerun) == len(plan_cells(cfg)) - 3 and not set(rerun) & set(done)
        assert [_strip(c) for c in resumed["cells"]] == [_strip(c) for c in full["cells"]]
        assert resumed["worst_case"] == full["worst_case"]

        # a finished run restarted with the same command does nothing
        again: list[str] = []
        run_config(cfg, tmp_path / "resumed", on_cell_done=lambda c, r: again.append(c.key))
        assert again == []

    def test_stale_cells_are_detected(self, tmp_path: Path, model_files: dict[str, Path]) -> None:
        cfg = tiny_config(model_files, attacks=self.ATTACKS, n=24, models=1, plots=False)
        run_config(cfg, tmp_path)
        changed = [ATTACKS[0], {**ATTACKS[1], "params": {"steps": 2, "alpha_ratio": 0.5}}]
        cfg2 = tiny_config(model_files, attacks=changed, n=24, models=1, plots=False)
        with pytest.raises(StaleResultsError) as info:
            run_config(cfg2, tmp_path)
        msg = str(info.value)
        assert "2 finished cell(s)" in msg and "Standard|FlowPGD|0.5" in msg and "--overwrite-stale" in msg
        assert '"steps": 3' in msg and '"steps": 2' in msg
        redone: list[str] = []
        run_config(cfg2, tmp_path, overwrite_stale=True, on_cell_done=lambda c, r: redone.append(c.label))
        assert sorted(redone) == ["Standard|FlowPGD|0.5", "Standard|FlowPGD|1.0"]
        # new weights make every cell of the model stale
        other = dict(model_files)
        other["weights"] = tmp_path / "w2.pt"
        torch.save(SmallCNN(width=16).state_dict(), other["weights"])
        with pytest.raises(StaleResultsError, match=r"(?s)5 finished cell\(s\).*Standard\|clean \(model: "):
            run_config(tiny_config(other, attacks=changed, n=24, models=1, plots=False), tmp_path)

    def test_seeds_are_per_cell(self) -> None:
        a, b = Cell("m", "FlowPGD", 0, 0.5), Cell("m", "FlowPGD", 1, 1.0)
        assert cell_seed(0, a) == cell_seed(0, a) != cell_seed(0, b) and cell_seed(1, a) != cell_seed(0, a)


class TestSharding:
    def test_assign_cells_partitions_and_balances(self) -> None:
        costs = [0.1, 1, 3, 3, 50, 50, 0.1, 1, 3, 3, 50, 50]
        for world in (1, 2, 3, 5):
            shards = assign_cells(costs, world)
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(len(costs)))
            assert all(s == sorted(s) for s in shards)
            loads = [sum(costs[i] for i in s) for s in shards]
            assert max(loads) - min(loads) <= max(costs)
        with pytest.raises(ValueError, match="world_size"):
            assign_cells(costs, 0)

    def test_merge_records(self) -> None:
        a = [{"key": "m|clean", "clean_acc": 0.9, "rank": 0}]
        b = [{"key": "m|A|1.0", "robust_acc": 0.5, "rank": 1}, {"key": "m|clean", "clean_acc": 0.9, "rank": 1}]
        assert sorted(merge_records([a, b])) == ["m|A|1.0", "m|clean"]
        with pytest.raises(RuntimeError, match="ranks disagree"):
            merge_records([a, [{"key": "m|clean", "clean_acc": 0.8}]])

    def test_two_process_gloo_run_matches_single_process(self, tmp_path: Path, model_files: dict[str, Path]) -> None:
        cfg = tiny_config(model_files, attacks=[ATTACKS[0]], n=24, models=2, plots=False)
        single = run_config(cfg, tmp_path / "single")
        assert single is not None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_rank_main, args=(2, port, cfg, str(tmp_path / "dist")), nprocs=2, join=True)
        merged = json.loads((tmp_path / "dist" / "results.json").read_text())
        assert {c["rank"] for c in merged["cells"]} == {0, 1}
        assert [_strip(c) for c in merged["cells"]] == [_strip(c) for c in json.loads(json.dumps(single["cells"]))]


def _rank_main(rank: int, world: int, port: int, cfg: EvalConfig, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    res = run_config(cfg, out)
    assert (res is None) == (rank != 0)


def test_cell_filenames_are_safe() -> None:
    name = Cell("IGR(lam=1000) / v2", "Flow PGD", 0, 0.25).filename
    assert re.fullmatch(r"[a-z0-9._-]+\.json", name)
    assert Cell("FGR+RS", "A", 0, 1.0).filename != Cell("FGR-RS", "A", 0, 1.0).filename  # the hash keeps them apart
