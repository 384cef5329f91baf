"""The experiment pipeline (eval.pipeline) end to end on the tiny preset, and every shipped preset's plan.

The tiny preset trains 13 SmallCNNs (two seeds) for one epoch on 192 MNIST-5k images and attacks them on
24 test images: its numbers mean nothing, but every artifact and every number of the report must be
consistent with results.json and recomputable from the runs by the rules the report states.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from eval.analysis import robust_of
from eval.cli import main
from eval.pipeline import describe, prepare, train_specs
from eval.presets import PresetError, available_presets, load_preset
from eval.report import pct


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("tiny")
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def _interp(points: list[tuple[float, float]], at: float) -> float | None:
    """Piecewise-linear interpolation written out here (the report's rule), averaging equal x."""
    xs = sorted({p[0] for p in points})
    ys = [statistics.fmean(y for x, y in points if x == x0) for x0 in xs]
    if not xs or at < xs[0] or at > xs[-1]:
        return None
    for i in range(len(xs) - 1):
        if xs[i] <= at <= xs[i + 1]:
            return ys[i] if xs[i + 1] == xs[i] else ys[i] + (ys[i + 1] - ys[i]) * (at - xs[i]) / (xs[i + 1] - xs[i])
    return ys[0]


def _step_gain(hi: list[tuple[float, float]], lo: list[tuple[float, float]]) -> float | None:
    """The registered rule written out: best robust among points at least c accurate, over 201 c in [L, U]."""
    low, up = max(min(x for x, _ in hi), min(x for x, _ in lo)), min(max(x for x, _ in hi), max(x for x, _ in lo))
    if low > up:
        return None
    cs = [low + (up - low) * k / 200 for k in range(201)]
    return 100 * statistics.fmean(max(r for x, r in hi if x >= c) - max(r for x, r in lo if x >= c) for c in cs)


class TestTinyRun:
    def test_artifacts(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        out, res, report = tiny
        for name in ("report.md", "results.json", "results.csv", "frontier.csv"):
            assert (out / name).is_file(), name
        assert {"frontier.png", "matched.png", "matching.png", "landscape.png"} <= set(res["figures"])
        for f in res["figures"]:
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
            assert f"]({f})" in report, f"{f} is not shown in the report"
        assert not [p for p in out.rglob("*.pt") if "cache" not in p.relative_to(out).parts]

    def test_header(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        _, res, report = tiny
        h = res["header"]
        assert f"- Command: `{h['command']}`" in report and "--preset tiny" in h["command"]
        assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", h["git_revision"])
        assert "- Seeds: training 0, 1 (main seed 0)" in report
        assert h["models_trained"] + h["models_cached"] == 7 + 6 == len(res["training"])
        assert h["wall_s"] >= h["train_s"] + h["eval_s"] - 1e-6

    def test_matched_instances_are_closest_to_each_seeds_reference(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        _, res, _ = tiny
        m = res["analysis"]["matched"]
        for row in m["selection"]:
            models = res["runs"][str(row["seed"])]["models"]
            target = next(x["clean_acc"] for x in models if x["defense"] == "AT-PGD")
            assert row["target"] == target
            dists = [abs(x["clean_acc"] - target) for x in models if x["defense"] == row["family"]]
            assert abs(row["clean_acc"] - target) == min(dists)

    def test_frontier_gains_recomputed_from_the_runs(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        """The registered rule, recomputed from the stored cells with the rule written out in this test."""
        _, res, report = tiny
        a = res["analysis"]
        per_seed_summary = []
        for k, seed in enumerate(a["seeds"]):
            run = res["runs"][str(seed)]
            robust = robust_of(run)
            cell_means = []
            for attack, budget in a["metrics"]:
                fam = {f: [(m["clean_acc"], robust[(m["name"], attack, budget)]) for m in run["models"]
                           if m["defense"] in (f, a["zero_weight"])] for f in ("FGR", "IGR")}
                mine = _step_gain(fam["FGR"], fam["IGR"])
                g = next(x for x in a["frontier"]["gains"] if x["pair"] == "FGR - IGR" and x["attack"] == attack
                         and x["budget"] == budget)
                assert (mine is None and g["per_seed"][k] is None) or g["per_seed"][k] == pytest.approx(mine)
                if attack != "worst case" and mine is not None:
                    cell_means.append(mine)
            per_seed_summary.append(statistics.fmean(cell_means) if cell_means else None)
        summary = next(s for s in a["frontier"]["summary"] if s["pair"] == "FGR - IGR")
        assert summary["per_seed"] == pytest.approx(per_seed_summary)
        defined = [v for v in per_seed_summary if v is not None]
        if len(defined) > 1:
            half = {1: 12.706, 2: 4.303}[len(defined) - 1] * statistics.stdev(defined) / math.sqrt(len(defined))
            assert summary["ci95"] == pytest.approx([statistics.fmean(defined) - half, statistics.fmean(defined) + half],
                                                    abs=1e-3)
            expected = "reproduced" if summary["ci95"][0] > 0 else "contradicted" if summary["ci95"][1] < 0 \
                else "not detected"
            assert summary["verdict"] == expected
            assert f"**{expected}**" in report
        assert report.index("| FGR - IGR | attacks |") < report.index("## Frontier")

    def test_withdrawn_interpolation_rule_is_a_secondary_view(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        _, res, report = tiny
        a = res["analysis"]
        per_seed = []
        for seed in a["seeds"]:
            run = res["runs"][str(seed)]
            robust = robust_of(run)
            means = []
            for attack, budget in a["metrics"]:
                if attack == "worst case":
                    continue
                igr = [(m["clean_acc"], robust[(m["name"], attack, budget)]) for m in run["models"]
                       if m["defense"] in ("IGR", "Standard")]
                diffs = [100 * (robust[(m["name"], attack, budget)] - _interp(igr, m["clean_acc"]))  # type: ignore[operator]
                         for m in run["models"] if m["defense"] == "FGR" and _interp(igr, m["clean_acc"]) is not None]
                if diffs:
                    means.append(statistics.fmean(diffs))
            per_seed.append(statistics.fmean(means) if means else None)
        s = next(x for x in a["secondary"] if x["rule"] == "interpolate" and x["pair"] == "FGR - IGR"
                 and x["over"] == "attacks")
        assert s["per_seed"] == pytest.approx(per_seed)
        assert "Secondary views (not the endpoint)" in report and "under the second fair rule" in report
        inf = next(r for r in a["influence"] if r["pair"] == "FGR - IGR" and r["over"] == "attacks")
        assert inf["models"] == sum(m["defense"] in ("FGR", "IGR") for s in a["seeds"]
                                    for m in res["runs"][str(s)]["models"])
        assert "Leave one model out (not the endpoint)" in report
        assert f"| FGR - IGR | attacks | {inf['verdict']} | {inf['models']} |" in report
        assert "| other views that disagree (not the endpoint) |" in report

    def test_report_tables_show_results_json(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        _, res, report = tiny
        run = res["runs"]["0"]
        for m in run["models"]:
            assert f"| {m['name']} | {m['defense']} |" in report
            assert pct(m["clean_acc"]) in report
        assert "Registered endpoint" in report and res["preset"]["analysis"]["criterion"].split()[0] in report

    def test_report_recomputes_a_pipeline_folder(self, tiny: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
        _, res, _ = tiny
        stale = {**res, "analysis": {k: v for k, v in res["analysis"].items() if k != "secondary"}}
        (tmp_path / "results.json").write_text(json.dumps(stale))
        assert main(["report", "--out", str(tmp_path)]) == 0
        again = json.loads((tmp_path / "results.json").read_text())
        assert again["analysis"] == res["analysis"]  # recomputed, secondary views included
        assert again["header"]["wall_s"] == res["header"]["wall_s"] and again["runs"] == res["runs"]
        report = (tmp_path / "report.md").read_text()
        assert "- Re-rendered: `python -m eval report --out" in report and "Secondary views" in report

    def test_second_run_is_cached(self, tiny: tuple[Path, dict[str, Any], str]) -> None:
        out, res, _ = tiny
        assert main(["demo", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
        again = json.loads((out / "results.json").read_text())
        assert again["header"]["models_trained"] == 0 and again["header"]["models_cached"] == 13
        assert again["analysis"] == res["analysis"]


class TestPresets:
    @pytest.mark.parametrize("name", [n for n in available_presets() if n != "paper"])
    def test_every_shipped_preset_prepares(self, name: str) -> None:
        p = prepare(name)
        assert p.instances and p.seeds
        text = describe(p)
        assert p.title in text and "attack" in text

    def test_dry_run_prints_the_conversions(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["reproduce", "--preset", "cifar10-vgg11", "--dry-run"]) == 0
        out = capsys.readouterr().out
        # the authors' reduction, written out: FGR weight = lam * ((W - 1) / 2)^2 / B^2, IGR weight = lam / B^2
        assert "lam 300 " not in out  # the paper's grid only (no extra anchor instance)
        for lam in (100, 400, 500, 1000):
            assert f"lam {lam:g} (batch 256) -> weight {lam * 15.5 ** 2 / 256 ** 2:.6g}" in out
        for lam in (1000, 3000, 5000, 7000):
            assert f"lam {lam:g} (batch 256) -> weight {lam / 256 ** 2:.6g}" in out

    def test_authors_preset_follows_their_code(self) -> None:
        p = prepare("cifar10-vgg11-authors")
        specs = {inst.name: spec for (seed, inst), spec in train_specs(p).items() if seed == p.main_seed}
        fgr = specs["FGR+RS(lam=300)"]
        sched = fgr.training_schedule()
        # utils/settings.py: batch 128, lr 0.01, decay at 40 and 60, 80 epochs; train.py: SGD momentum 0.9, wd 5e-4
        assert (sched.optimizer, sched.batch_size, sched.lr, sched.epochs, tuple(sched.milestones), sched.gamma,
                sched.momentum, sched.weight_decay) == ("sgd", 128, 0.01, 80, (40, 60), 0.1, 0.9, 5e-4)
        assert fgr.variant == "authors" and fgr.pipeline == "authors" and fgr.keep_best
        assert fgr.lam == 300 and fgr.lam_batch_size == 128
        assert specs["Standard"].keep_best and specs["Standard"].pipeline == "authors"
        (attack,) = p.raw["attacks"]
        # attacks/gradient.py multi_step as evaluate.py calls it: eps 0.01 normalized (align_corners=True), 100
        # iterations of step eps / iters, no random start, zeros padding, cross-entropy
        assert attack["budgets"] == [pytest.approx(0.01 * (32 - 1) / 2)]
        assert attack["params"] == {"steps": 100, "alpha_ratio": 0.01, "random_start": False, "padding_mode": "zeros",
                                    "loss": "ce", "restarts": 1}
        assert p.raw["data"]["pipeline"] == "authors" and p.raw["data"]["n"] is None

    def test_authors_settings_smoke_run_on_embedded_data(self, tmp_path: Path) -> None:
        """The exact settings of the anchor preset on CPU, on MNIST-5k instead of CIFAR-10 (1 epoch, 64 images)."""
        args = ["reproduce", "--preset", "cifar10-vgg11-authors", "--dataset-override", "mnist5k", "--epochs", "1",
                "--limit", "64", "--n", "8", "--seeds", "0", "--out", str(tmp_path), "--no-progress"]
        assert main(args) == 0
        res = json.loads((tmp_path / "results.json").read_text())
        for t in res["training"]:
            assert t["path"].endswith("best.pt")  # best-checkpoint selection
            assert t["spec"]["pipeline"] == "authors" and t["spec"]["keep_best"]
        assert {t["spec"]["variant"] for t in res["training"]} == {"paper", "authors"}
        cell = next(c for c in res["runs"]["0"]["cells"] if c["attack"] == "FlowPGD-anchor")
        assert cell["params"]["steps"] == 100 and cell["params"]["padding_mode"] == "zeros"
        assert cell["queries_per_sample"] >= 100  # every step ran (no early stop, no step cap)
        report = (tmp_path / "report.md").read_text()
        assert "DATASET OVERRIDDEN" in report and "## Anchor" in report and "90.27" in report

    def test_bad_presets_name_the_key(self, tmp_path: Path) -> None:
        with pytest.raises(PresetError, match="no preset 'nope'"):
            load_preset("nope")
        bad = tmp_path / "bad.yaml"
        bad.write_text("extends: tiny\ntraining:\n  instances:\n    - {defense: IGR, lam: 5, weight: 1}\n")
        with pytest.raises(PresetError, match=r"training.instances\[0\]: give weight or lam"):
            load_preset(str(bad))
        bad.write_text("extends: tiny\nattacks:\n  - {family: FlowPGD, budgets: [0.5], params: {steps: -1}}\n")
        with pytest.raises(ValueError, match=r"attacks\[0\]\.params\.steps"):
            prepare(str(bad))
        with pytest.raises(PresetError, match="--epochs"):
            load_preset("tiny", epochs=0)


def test_matched_view_uses_the_main_targets_when_a_seed_has_no_reference() -> None:
    from eval.analysis import analyze

    def run(models: list[tuple[str, str, float]]) -> dict[str, Any]:
        return {"config": {"attacks": [{"name": "A", "budgets": [0.5]}]}, "worst_case": [],
                "models": [{"name": n, "defense": d, "clean_acc": c} for n, d, c in models],
                "cells": [{"model": n, "attack": "A", "budget": 0.5, "robust_acc": c / 2} for n, _, c in models]}

    main = run([("AT", "AT-PGD", 0.90), ("I1", "IGR", 0.95), ("I2", "IGR", 0.89), ("F1", "FGR", 0.91)])
    other = run([("I1", "IGR", 0.96), ("I2", "IGR", 0.905), ("F1", "FGR", 0.92)])
    m = analyze({0: main, 1: other}, ["IGR", "FGR"], [["FGR", "IGR"]], "AT-PGD")["matched"]
    assert m["targets"] == {"0": 0.90, "1": 0.90}
    assert {(r["seed"], r["family"]): r["model"] for r in m["selection"]} == {
        (0, "IGR"): "I2", (0, "FGR"): "F1", (1, "IGR"): "I2", (1, "FGR"): "F1"}


def test_zero_weight_model_extends_the_baseline_frontier() -> None:
    from eval.analysis import analyze

    res = {"config": {"attacks": [{"name": "A", "budgets": [0.5]}]}, "worst_case": [],
           "models": [{"name": "S", "defense": "Standard", "clean_acc": 0.96},
                      {"name": "I", "defense": "IGR", "clean_acc": 0.90},
                      {"name": "F", "defense": "FGR", "clean_acc": 0.94}],
           "cells": [{"model": "S", "attack": "A", "budget": 0.5, "robust_acc": 0.20},
                     {"model": "I", "attack": "A", "budget": 0.5, "robust_acc": 0.50},
                     {"model": "F", "attack": "A", "budget": 0.5, "robust_acc": 0.45}]}
    without = analyze({0: res}, ["IGR", "FGR"], [["FGR", "IGR"]], "AT-PGD")["frontier"]["gains"][0]
    assert without["per_seed"] == [None]  # F (0.94) lies outside IGR's single point (0.90)
    with_zero = analyze({0: res}, ["IGR", "FGR"], [["FGR", "IGR"]], "AT-PGD", zero_weight="Standard")
    # Standard joins both families: the shared range is [0.94, 0.96]; at c = 0.94 FGR's frontier is 0.45 and IGR's
    # 0.20 (its 0.90 model is less accurate), above it both are Standard's 0.20: +25 points at 1 of 201 c
    assert with_zero["frontier"]["gains"][0]["per_seed"][0] == pytest.approx(25 / 201)


def test_a_dirty_checkout_is_warned_about_before_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Results to commit need a clean tree: a dirty one is said at the start, not found after 90 minutes."""
    import eval.pipeline as pipeline

    class Stop(Exception):
        pass

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Stop

    monkeypatch.setattr(pipeline, "_train_all", stop)
    for revision, warned in (("abc1234+dirty", True), ("abc1234", False)):
        monkeypatch.setattr(pipeline, "git_revision", lambda exclude=None, r=revision: r)
        caplog.clear()
        with caplog.at_level("WARNING", logger="eval.pipeline"), pytest.raises(Stop):
            pipeline.run_pipeline(load_preset("tiny"), tmp_path / "out", device="cpu", progress=False)
        said = [r.getMessage() for r in caplog.records if "abc1234+dirty" in r.getMessage()]
        assert bool(said) == warned, said


def test_verdict_names_the_views_and_drops_that_disagree() -> None:
    from eval.pipeline_report import _disagreements

    a = {"secondary": [{"rule": "pareto-linear", "pair": "F - I", "over": "attacks", "verdict": "not detected"},
                       {"rule": "step-pareto-range", "pair": "F - I", "over": "attacks", "verdict": "not detected"},
                       {"rule": "step-own-range", "pair": "F - I", "over": "attacks", "verdict": "reproduced"},
                       {"rule": "interpolate", "pair": "F - I", "over": "attacks", "verdict": "not detected"}],
         "influence": [{"pair": "F - I", "over": "attacks", "models": 9, "flips": [{}, {}]}]}
    assert _disagreements(a, "F - I", "attacks", "reproduced") == \
        "non-dominated range: not detected; leave one model out: 2 of 9 drops"
    assert _disagreements({**a, "influence": []}, "F - I", "attacks", "not detected") == \
        "range cut at the lower top model: reproduced"
    assert _disagreements({}, "F - I", "attacks", "reproduced") == "none"
