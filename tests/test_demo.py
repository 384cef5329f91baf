"""The demo pipeline end to end on the tiny preset, and the paper presets (plan and smoke run).

The tiny preset trains 16 SmallCNNs on 512 MNIST-5k images for one epoch (two seeds) and
attacks them on 60 test images; its numbers mean nothing, but every artifact and every
number of the report must be consistent with results.json and recomputable from it.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval.cli import main
from eval.demo import (
    PAIRS,
    Instance,
    demo_pipeline,
    lam_of_weight,
    match_instances,
    run_demo,
    scaled_schedule,
    seed_stats,
)
from eval.reproduce import conversion_table, paper_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--preset", "tiny", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, (out / "report.md").read_text()


def _fmt(x: float) -> str:
    return f"{100 * x:.2f}"


# -- artifacts -----------------------------------------------------------------------------
def test_every_artifact_exists(tiny: tuple[Path, dict[str, Any], str]) -> None:
    out, res, report = tiny
    for name in ("report.md", "results.json", "results.csv", "headline.csv"):
        assert (out / name).is_file(), name
    attacks = [a["name"] for a in res["runs"]["0"]["config"]["attacks"]]
    expected = {"headline.png", "tradeoff.png", "landscape.png", "flow_vs_pixel_distance.png",
                *[f"robust_vs_budget_{a}.png" for a in attacks]}
    assert expected <= set(res["figures"])
    for f in res["figures"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 1000, f
        assert f"]({f})" in report, f"{f} is not shown in the report"
    assert any(f.startswith("samples_") for f in res["figures"])
    # checkpoints stay in the cache (git-ignored), never next to the report
    assert not [p for p in out.rglob("*.pt") if "cache" not in p.relative_to(out).parts]
    assert list((out / "cache" / "train").rglob("model.pt"))


def test_header_gives_command_revision_seeds_and_wall_time(tiny: tuple[Path, dict[str, Any], str]) -> None:
    _, res, report = tiny
    h = res["header"]
    assert f"- Command: `{h['command']}`" in report and "--preset tiny" in h["command"]
    assert f"- Git revision: `{h['git_revision']}`" in report
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", h["git_revision"])
    assert "- Seeds: training 0, 1 (main seed 0)" in report
    assert f"- Wall time: {h['wall_s']:.0f} s" in report
    assert h["wall_s"] >= h["train_s"] + h["eval_s"] - 1e-6
    assert h["models_trained"] == 10 + 6 and h["models_cached"] == 0


# -- matching --------------------------------------------------------------------------------
def test_matched_selection_is_closest_to_the_reference(tiny: tuple[Path, dict[str, Any], str]) -> None:
    _, res, _ = tiny
    hl = res["headline"]
    ref = next(m for m in res["pools"]["0"] if m["defense"] == "AT-PGD")
    assert hl["target"]["clean_acc"] == ref["clean_acc"] and hl["target"]["model"] == "AT-PGD"
    rows = {(r["seed"], r["family"]): r for r in hl["selection"]}
    assert set(rows) == {(s, f) for s in (0, 1) for f in ("IGR", "FGR", "FGR+RS")}
    for s in ("0", "1"):
        for fam in ("IGR", "FGR", "FGR+RS"):
            cands = [m for m in res["pools"][s] if m["defense"] == fam]
            assert len(cands) == 2
            gaps = [abs(m["clean_acc"] - ref["clean_acc"]) for m in cands]
            best = cands[int(np.argmin(gaps))]  # argmin: first of ties, as the rule says
            row = rows[(int(s), fam)]
            assert row["model"] == best["name"]
            assert row["clean_acc"] == best["clean_acc"]


def test_clean_pools_agree_with_the_attacked_runs(tiny: tuple[Path, dict[str, Any], str]) -> None:
    _, res, _ = tiny
    for s, run in res["runs"].items():
        pool = {m["name"]: m["clean_acc"] for m in res["pools"][s]}
        for m in run["models"]:
            assert m["clean_acc"] == pool[m["name"]]
    # main seed: every instance attacked; seed 1: only the three matched ones
    assert len(res["runs"]["0"]["models"]) == 10
    matched1 = {r["model"] for r in res["headline"]["selection"] if r["seed"] == 1}
    assert {m["name"] for m in res["runs"]["1"]["models"]} == matched1


# -- seed spread -------------------------------------------------------------------------------
def test_seed_spread_is_recomputable(tiny: tuple[Path, dict[str, Any], str]) -> None:
    _, res, _ = tiny
    hl = res["headline"]
    sel = {(r["seed"], r["family"]): r["model"] for r in hl["selection"]}
    robust = {(s, c["model"], c["attack"], c["budget"]): c["robust_acc"]
              for s, run in res["runs"].items() for c in run["cells"]}
    n_cells = 0
    for cell in hl["cells"]:
        vals = [robust[(str(s), sel[(s, cell["family"])], cell["attack"], cell["budget"])] for s in (0, 1)]
        assert cell["values"] == vals
        assert math.isclose(cell["mean"], float(np.mean(vals)), abs_tol=1e-12)
        assert math.isclose(cell["std"], float(np.std(vals, ddof=1)), abs_tol=1e-12)
        n_cells += 1
    assert n_cells == 3 * 8  # 3 families x 4 attacks x 2 budgets
    for g in hl["gains"]:
        hi, lo = g["pair"].split(" - ")
        vals = [100 * (robust[(str(s), sel[(s, hi)], g["attack"], g["budget"])]
                       - robust[(str(s), sel[(s, lo)], g["attack"], g["budget"])]) for s in (0, 1)]
        assert np.allclose(g["values"], vals)
        assert math.isclose(g["std"], float(np.std(vals, ddof=1)), abs_tol=1e-9)
        assert g["seeds_positive"] == sum(v > 0 for v in vals)
    for s in hl["summary"]:
        rows = [g for g in hl["gains"] if g["pair"] == s["pair"]]
        assert math.isclose(s["mean"], float(np.mean([g["mean"] for g in rows])), abs_tol=1e-9)
        per_seed = [float(np.mean([g["values"][k] for g in rows])) for k in range(2)]
        assert np.allclose(s["per_seed_mean"], per_seed)
        assert math.isclose(s["seed_std"], float(np.std(per_seed, ddof=1)), abs_tol=1e-9)
    assert [s["pair"] for s in hl["summary"]] == [f"{a} - {b}" for a, b in PAIRS]


# -- report == results.json ----------------------------------------------------------------
def test_report_numbers_equal_results_json(tiny: tuple[Path, dict[str, Any], str]) -> None:
    _, res, report = tiny
    hl = res["headline"]
    cell = {(c["attack"], c["budget"], c["family"]): c for c in hl["cells"]}
    gain = {(g["attack"], g["budget"], g["pair"]): g for g in hl["gains"]}
    rows = [ln for ln in report.splitlines() if re.match(r"\| Flow\w+ \| |\| StAdv \| ", ln)]
    headline_rows = [r for r in rows if "±" in r]
    assert len(headline_rows) == 8
    for row in headline_rows:
        parts = [p.strip() for p in row.strip("|").split("|")]
        attack, budget = parts[0], float(parts[1])
        for f, text in zip(("IGR", "FGR", "FGR+RS"), parts[2:5]):
            c = cell[(attack, budget, f)]
            assert text == f"{_fmt(c['mean'])} ± {_fmt(c['std'])}"
        for pair, text in zip(("FGR - IGR", "FGR+RS - IGR", "FGR+RS - FGR"), parts[5:8]):
            g = gain[(attack, budget, pair)]
            assert text == f"{g['mean']:+.2f} ± {g['std']:.2f} ({g['seeds_positive']}/2)"
    for s in hl["summary"]:
        assert f"**{s['pair']}**" in report
        assert f"mean gain {s['mean']:+.2f} ± {s['seed_std']:.2f} points over {s['cells']}" in report
    for r in hl["selection"]:
        assert f"**{r['model']}** {_fmt(r['clean_acc'])}" in report
    # the main seed's harness tables: clean accuracy of every model
    for m in res["runs"]["0"]["models"]:
        assert f"| {m['name']} | {m['defense']} | SmallCNN | checkpoint | SmallCNN | {_fmt(m['clean_acc'])} |" in report
    from eval.report import table1

    t1 = table1(res["runs"]["0"])
    for d, c in t1["counts"].items():
        assert re.search(rf"^\| {re.escape(d)} \| {c['TOTAL']} \| \d* \| \d* \|$", report, re.M), d


def test_csv_rows_match_results(tiny: tuple[Path, dict[str, Any], str]) -> None:
    import csv

    out, res, _ = tiny
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    cells = [(s, c) for s, run in res["runs"].items() for c in run["cells"]]
    assert len(rows) == len(cells)
    for row, (s, c) in zip(rows, cells):
        assert row["seed"] == s and row["model"] == c["model"]
        assert float(row["robust_acc"]) == c["robust_acc"]


# -- cache -----------------------------------------------------------------------------------
def test_second_run_reuses_checkpoints_and_cells(tiny: tuple[Path, dict[str, Any], str]) -> None:
    out, res, _ = tiny
    cells = sorted((out / "cache" / "eval").rglob("cells/*.json"))
    before = {p: p.stat().st_mtime_ns for p in cells}
    again = run_demo(out=out, preset="tiny")
    assert again["header"]["models_trained"] == 0 and again["header"]["models_cached"] == 16
    assert {p: p.stat().st_mtime_ns for p in cells} == before  # nothing recomputed
    assert again["headline"]["cells"] == res["headline"]["cells"]
    assert again["headline"]["selection"] == res["headline"]["selection"]


# -- helpers ---------------------------------------------------------------------------------
def test_seed_stats_uses_sample_std() -> None:
    s = seed_stats([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert seed_stats([3.0])["std"] is None
    with pytest.raises(ValueError, match="values"):
        seed_stats([])


def test_match_instances_ties_and_no_reference() -> None:
    ms = [{"name": "a", "defense": "FGR", "clean_acc": 0.5}, {"name": "b", "defense": "FGR", "clean_acc": 0.75},
          {"name": "c", "defense": "IGR", "clean_acc": 0.875}]
    assert match_instances(ms, ["FGR", "IGR"], "AT-PGD", 0.625) == {"FGR": "a", "IGR": "c"}  # exact tie: first
    assert match_instances(ms, ["FGR"], "AT-PGD", 0.7) == {"FGR": "b"}
    assert match_instances(ms, ["FGR"], "AT-PGD", None) == {"FGR": "b"}  # highest clean accuracy


def test_weight_lambda_conversions_round_trip() -> None:
    from fgr_defense import paper_lambda_to_weight

    for lam in (100.0, 300.0, 1000.0):
        assert lam_of_weight(paper_lambda_to_weight(lam, 256, 32, kind="flow"), "FGR+RS", 32) == pytest.approx(lam)
        assert lam_of_weight(paper_lambda_to_weight(lam, 256, kind="input"), "IGR", 28) == pytest.approx(lam)


def test_scaled_schedule_and_demo_preset_validation() -> None:
    from fgr_defense.presets import get_schedule

    s = scaled_schedule(get_schedule("paper", "cifar10"), 8)
    assert (s.epochs, s.milestones) == (8, (4, 6))
    with pytest.raises(ValueError, match="epochs"):
        scaled_schedule(s, 0)
    with pytest.raises(ValueError, match="preset"):
        demo_pipeline("nope")
    p = demo_pipeline()
    assert [i.name for i in p.instances_for(2)] == [i.name for i in p.instances if i.all_seeds]
    assert {i.defense for i in p.instances} == {"Standard", "AT-FGSM", "AT-PGD", "IGR", "FGR", "FGR+RS",
                                                "FGR+RS+AT-PGD"}
    bad = demo_pipeline("tiny")
    import dataclasses

    with pytest.raises(ValueError, match="duplicate"):
        dataclasses.replace(bad, instances=(Instance("IGR", weight=1), Instance("IGR", weight=1))).validate()


# -- paper presets -------------------------------------------------------------------------
def test_paper_presets_follow_the_paper() -> None:
    from torchattacks_deform.flow import normalized_to_pixels

    p = paper_pipeline("cifar10-vgg11")
    assert (p.schedule.epochs, p.schedule.milestones, p.schedule.batch_size, p.schedule.lr) == (80, (40, 60), 256, 0.1)
    assert p.schedule.optimizer == "sgd" and p.schedule.momentum == 0.9 and p.schedule.weight_decay == 5e-4
    assert p.augment and p.dataset == "cifar10" and p.model == "vgg11"
    lams = {d: sorted(i.lam for i in p.instances if i.defense == d and i.lam is not None) for d in ("IGR", "FGR")}
    assert lams == {"IGR": [1000, 3000, 5000, 7000], "FGR": [100, 400, 500, 1000]}
    anchor = next(a for a in p.attacks if a.get("name") == "FlowPGD-anchor")
    assert anchor["budgets"] == [normalized_to_pixels(0.01, 32, align_corners=True)]
    assert anchor["params"]["steps"] == 100 and anchor["params"]["norm"] == "Linf"
    assert p.anchor is not None and p.anchor["budget"] == anchor["budgets"][0]
    rows = {r["model"]: r for r in conversion_table(p)}
    assert rows["FGR+RS(lam=300)"]["weight"] == pytest.approx(300 * 15.5**2 / 256)
    assert rows["FGR+RS(lam=300)"]["sigma_px"] == pytest.approx(0.155)
    assert rows["IGR(lam=1000)"]["weight"] == pytest.approx(1000 / 256)
    m = paper_pipeline("mnist-resnet18")
    assert (m.schedule.epochs, m.schedule.milestones) == (30, (10, 20)) and m.anchor is None
    for name in ("cifar10-resnet18", "cifar100-vgg11", "cifar100-resnet18", "mnist-vgg11"):
        assert paper_pipeline(name).instances
    with pytest.raises(ValueError, match="preset"):
        paper_pipeline("imagenet-vgg11")
    with pytest.raises(ValueError, match="only"):
        paper_pipeline("cifar10-vgg11", only=["FGR(lam=7)"])


def test_reproduce_dry_run_prints_the_conversions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--preset", "cifar10-vgg11", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "FGR+RS(lam=300)" in text and "weight 281.543" in text and "-> 0.155 px" in text
    assert "FlowPGD-anchor: FlowPGD budgets [0.155" in text and "'steps': 100" in text


def test_reproduce_smoke_run_on_embedded_data(tmp_path: Path) -> None:
    """cifar10-vgg11 on MNIST-5k, 1 step of training, capped attacks: the pipeline and anchor report run."""
    out = tmp_path / "rep"
    rc = main(["reproduce", "--preset", "cifar10-vgg11", "--dataset-override", "mnist5k", "--epochs", "1",
               "--limit", "32", "--n", "8", "--only", "Standard,FGR+RS(lam=300)", "--max-attack-steps", "1",
               "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert "DATASET OVERRIDDEN" in report and "NOT comparable" in report
    assert "90.27" in report and "55.15" in report
    rows = {r["model"]: r for r in res["anchor"]}
    cell = next(c for c in res["runs"]["0"]["cells"]
                if c["model"] == "FGR+RS(lam=300)" and c["attack"] == "FlowPGD-anchor")
    assert rows["FGR+RS(lam=300)"]["our_adv"] == cell["robust_acc"]
    assert f"| {_fmt(cell['robust_acc'])} |" in report
    assert res["training"][1]["weight"] == pytest.approx(300 * 13.5**2 / 256)  # converted for 28 px


def test_harness_keeps_batchnorm_models_in_eval_mode(tmp_path: Path, trained_model: Any) -> None:
    """Regression: the attack cells must not leave a BN model in train mode (running stats intact)."""
    import copy

    import torch
    from torch import nn

    from eval.config import parse_config
    from eval.runner import evaluate

    bn = nn.BatchNorm2d(1)  # running mean 0, var 1: the identity (up to eps) in eval mode
    model = nn.Sequential(bn, copy.deepcopy(trained_model)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = parse_config({"models": [{"name": "bn", "source": "object", "obj": model}],
                        "attacks": [{"family": "FlowPGD", "budgets": [0.5], "params": {"steps": 1}}],
                        "data": {"dataset": "mnist5k", "n": 16, "batch_size": 8}, "device": "cpu",
                        "checks": {"enabled": False}, "plots": {"enabled": False}})
    res = evaluate(cfg, tmp_path)
    assert res is not None and res["cells"][0]["n_attacked"] > 0
    assert not model.training and not bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_killed_training_resumes_and_changed_settings_retrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import torch

    from eval.demo import _train_one
    from fgr_defense import get_dataset, load_checkpoint
    from fgr_defense.trainer import Trainer

    p = dataclasses.replace(demo_pipeline("tiny", epochs=2), train_limit=64)
    inst = Instance("FGR", weight=5.0, all_seeds=True)
    data = get_dataset("mnist5k", train=True, augment=True, limit=64)
    original = Trainer._finish_epoch

    def killed_after_first_epoch(self: Trainer, epoch: int, val_loader: Any) -> dict[str, Any]:
        original(self, epoch, val_loader)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_finish_epoch", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train_one(p, inst, 0, tmp_path, torch.device("cpu"), data, progress=False)
    ckpt = tmp_path / "seed0" / "FGR-w-5" / "model.pt"
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 1 and not load_checkpoint(ckpt)["meta"]["complete"]
    first = load_checkpoint(ckpt)["trainer"]["history"][0]
    monkeypatch.setattr(Trainer, "_finish_epoch", original)
    info = _train_one(p, inst, 0, tmp_path, torch.device("cpu"), data, progress=False)
    meta = load_checkpoint(ckpt)["meta"]
    assert not info["cached"] and meta["complete"] and meta["epoch"] == 2
    history = load_checkpoint(ckpt)["trainer"]["history"]
    assert [r["epoch"] for r in history] == [1, 2] and history[0] == first  # resumed, not retrained
    assert _train_one(p, inst, 0, tmp_path, torch.device("cpu"), data, progress=False)["cached"]
    # other settings (one more epoch): the cached model is not reused
    p3 = dataclasses.replace(p, schedule=dataclasses.replace(p.schedule, epochs=3))
    info3 = _train_one(p3, inst, 0, tmp_path, torch.device("cpu"), data, progress=False)
    assert not info3["cached"] and load_checkpoint(ckpt)["meta"]["epoch"] == 3
