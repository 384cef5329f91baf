"""`python -m eval calibrate`: grids chosen on a seed the main run does not use (issue 15)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eval.calibrate import calibration_plan, choose_weights, expected_clean
from eval.cli import main
from eval.presets import PresetError, load_preset


def test_calibrate_command_on_the_tiny_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "calibration.json").read_text())
    assert res["seed"] == 100 and res["seed"] not in load_preset("tiny").seeds
    assert [m["model"] for m in res["models"]] == ["Standard", "IGR(w=0.5)", "IGR(w=4)", "FGR(w=5)", "FGR(w=40)",
                                                  "FGR+RS(w=5)"]
    for family, weights in res["grids"].items():
        scan = [(m["weight"], m["clean_acc"]) for m in res["models"] if m["defense"] == family]
        assert weights == sorted(set(weights))
        assert weights == choose_weights(scan, res["zero_clean"], res["targets"], res["max_step"])
        assert f"{{defense: {family}, weight: [" in out
    md = (tmp_path / "calibration.md").read_text()
    assert "![calibration](calibration.png)" in md and (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_refuses_a_main_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--preset", "tiny", "--seed", "0"]) == 2
    assert "--seed: expected a calibration seed that the main run does not use" in capsys.readouterr().err
    p = load_preset("tiny")
    bare = dataclasses.replace(p, raw={k: v for k, v in p.raw.items() if k != "calibration"})
    with pytest.raises(PresetError, match="calibration: expected a mapping with a non-empty 'scan'"):
        calibration_plan(bare)


def test_weights_land_where_the_scan_predicts() -> None:
    scan = [(1.0, 0.96), (2.0, 0.95), (4.0, 0.93), (8.0, 0.89), (16.0, 0.80)]
    weights = choose_weights(scan, 0.965, [1.5, 3.5, 7.5])
    assert [round(100 * (0.965 - expected_clean(scan, w)), 1) for w in weights] == pytest.approx([1.5, 3.5, 7.5],
                                                                                                  abs=0.15)
    # a steep step gets a weight in between; at most max_weights survive, the ends kept
    dense = choose_weights(scan, 0.965, [1.5, 7.5], max_step=2)
    assert len(dense) == 3 and dense[0] < dense[1] < dense[2]
    assert choose_weights(scan, 0.965, [0.5, 1.5, 2.5, 3.5, 7.5], max_weights=3)[::2] == \
        [choose_weights(scan, 0.965, [0.5])[0], choose_weights(scan, 0.965, [7.5])[0]]


def test_several_calibration_seeds_are_pooled_relative_to_each_seeds_standard() -> None:
    from eval.calibrate import pooled_scan

    rows = [{"seed": 100, "defense": "Standard", "weight": 0.0, "clean_acc": 0.96},
            {"seed": 101, "defense": "Standard", "weight": 0.0, "clean_acc": 0.98},
            {"seed": 100, "defense": "FGR", "weight": 10.0, "clean_acc": 0.95},
            {"seed": 101, "defense": "FGR", "weight": 10.0, "clean_acc": 0.95},
            {"seed": 100, "defense": "FGR", "weight": 20.0, "clean_acc": 0.90},
            {"seed": 101, "defense": "IGR", "weight": 20.0, "clean_acc": 0.50}]
    scan, zero = pooled_scan(rows, "FGR")
    # drops 1 and 3 points below their own seed's Standard: mean drop 2 below the mean Standard (97%)
    assert zero == pytest.approx(0.97)
    assert scan == [(10.0, pytest.approx(0.95)), (20.0, pytest.approx(0.91))]
    p = load_preset("tiny")
    seeds, insts, _ = calibration_plan(p, [100, 101])
    assert seeds == [100, 101] and insts[0].defense == "Standard"
    with pytest.raises(PresetError, match="calibration.seed: expected an integer or a list of distinct integers"):
        calibration_plan(p, [100, 100])
    with pytest.raises(PresetError, match="--seed: expected a calibration seed that the main run does not use"):
        calibration_plan(p, [100, 0])
    assert calibration_plan(load_preset("mnist5k"))[0] == [100, 101]


def test_max_weights_may_differ_per_family() -> None:
    """``max_weights: {family: n}`` caps each family on its own; a bad cap is one line naming the key."""
    from eval.calibrate import weight_cap

    p = load_preset("tiny")
    cal = {**p.raw["calibration"], "max_weights": {"FGR": 3}}
    assert weight_cap(cal, "FGR") == 3 and weight_cap(cal, "IGR") is None
    calibration_plan(dataclasses.replace(p, raw={**p.raw, "calibration": cal}))
    for bad in (1, {"FGR": 1.5}, True):
        broken = dataclasses.replace(p, raw={**p.raw, "calibration": {**cal, "max_weights": bad}})
        with pytest.raises(PresetError, match="calibration.max_weights: expected an integer >= 2"):
            calibration_plan(broken)


def test_where_the_scan_is_not_monotone_every_scanned_weight_is_kept() -> None:
    """A noisy stretch (2 and 3 pooled by the monotone fit) contributes each scanned weight; the cap drops others first."""
    from eval.calibrate import noisy_weights

    scan = [(1.0, 0.96), (2.0, 0.90), (3.0, 0.92), (4.0, 0.85), (8.0, 0.80)]
    assert noisy_weights(scan) == [2.0, 3.0]
    plain = choose_weights(scan, 0.965, [1.0, 8.0, 13.0])
    assert 2.0 not in plain and 3.0 not in plain
    kept = choose_weights(scan, 0.965, [1.0, 8.0, 13.0], keep_noisy=True)
    assert set(plain) | {2.0, 3.0} == set(kept)
    capped = choose_weights(scan, 0.965, [1.0, 8.0, 13.0], max_weights=len(kept) - 1, keep_noisy=True)
    assert {2.0, 3.0} <= set(capped) and len(capped) == len(kept) - 1
    assert noisy_weights([(1.0, 0.96), (2.0, 0.95)]) == []
