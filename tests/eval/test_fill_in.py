"""The per-seed fill-in rule (eval.fill_in) and its loop in the pipeline, on hand-made accuracies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import eval.pipeline as pipeline
from eval.fill_in import fill_in_options, next_fill_weight
from eval.pipeline_report import _coverage_section
from eval.presets import PresetError, load_preset


def test_largest_gap_first_and_its_neighbours_mean() -> None:
    # gaps: 0.963-0.951 = 1.2, 0.950-0.924 = 2.6 (21 -> 27), 0.924-0.890 = 3.4 (27 -> 33): the largest first
    pts = [(0, 0.963), (15, 0.951), (21, 0.950), (27, 0.924), (33, 0.890)]
    assert next_fill_weight(pts, 0.02, [15, 21, 27, 33]) == 30.0
    # that one trained: the next largest gap
    assert next_fill_weight(pts + [(30, 0.91)], 0.02, [15, 21, 27, 30, 33]) == 24.0
    # a gap of exactly max_gap meets the requirement (as eval.analysis.meets_coverage reads it)
    assert next_fill_weight([(0, 0.96), (5, 0.94)], 0.02, [5]) is None


def test_non_monotone_neighbours_and_rounding() -> None:
    # weight 36 landed above 35: the gap 0.911 -> 0.888 has neighbours 35 and 37; their mean 36 is trained
    pts = [(0, 0.963), (20, 0.945), (30, 0.93), (35, 0.911), (36, 0.915), (37, 0.888)]
    assert next_fill_weight(pts, 0.02, [20, 30, 35, 36, 37]) is None
    assert next_fill_weight(pts, 0.02, [20, 30, 35, 37]) == 36.0
    assert next_fill_weight([(0, 0.96), (1, 0.93)], 0.02, [1], resolution=0.25) == 0.5
    assert next_fill_weight([(0, 0.96), (0.1, 0.93)], 0.02, [0.1], resolution=0.1) is None


def test_subdivide_samples_untried_weights_inside_a_non_monotone_gap() -> None:
    # mnist5k FGR seed 0 (results/mnist5k at b3a160e): the 2.3-point gap is between w=35 (91.1%) and w=37
    # (88.8%); their mean 36 is trained (91.5%), so the rule as run stops
    pts = [(0, 0.963), (17, 0.958), (23, 0.952), (26, 0.942), (29, 0.933), (33, 0.924), (34, 0.927), (35, 0.911),
           (36, 0.915), (37, 0.888), (40, 0.883)]
    trained = [17, 23, 26, 29, 33, 34, 35, 36, 37, 40]
    assert next_fill_weight(pts, 0.02, trained) is None
    assert next_fill_weight(pts, 0.02, trained, subdivide=True) == 35.5  # two stretches of 1: the first
    assert next_fill_weight(pts, 0.02, [*trained, 35.5], subdivide=True) == 36.5
    # FGR seed 3: gap 37 (86.7%) - 41 (89.0%); 39 and 40 trained inside: the widest stretch is 37-39
    pts = [(0, 0.925), (37, 0.867), (39, 0.911), (40, 0.897), (41, 0.890), (42, 0.866)]
    assert next_fill_weight(pts, 0.02, [37, 39, 40, 41, 42]) is None
    assert next_fill_weight(pts, 0.02, [37, 39, 40, 41, 42], subdivide=True) == 38.0
    # a gap whose mean is untried behaves as without subdivide
    assert next_fill_weight([(0, 0.96), (2, 0.93)], 0.02, [2], subdivide=True) == 1.0


def test_options_defaults_and_errors() -> None:
    analysis = {"families": ["IGR", "FGR"], "coverage": {"min_drop": 0.06, "max_gap": 0.02}}
    assert fill_in_options({}, analysis, "p") is None
    assert fill_in_options({"fill_in": True}, analysis, "p") == {"max_gap": 0.02, "max_extra": 3, "resolution": 0.1,
                                                                 "families": ["IGR", "FGR"], "subdivide": False}
    bad = [({"gap": 1}, r"^p: training.fill_in: expected true or a mapping"),
           ({"max_gap": 2}, r"^p: training.fill_in.max_gap: expected a number in \(0, 1\), got 2"),
           ({"max_extra": 0}, r"^p: training.fill_in.max_extra: expected an int >= 1, got 0"),
           ({"families": []}, r"^p: training.fill_in.families: expected the families to fill"),
           ({"subdivide": "yes"}, r"^p: training.fill_in.subdivide: expected true or false, got 'yes'")]
    for raw, message in bad:
        with pytest.raises(ValueError, match=message):
            fill_in_options({"fill_in": raw}, analysis, "p")


def test_preset_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny\ntraining: {fill_in: {max_extra: -1}}\n")
    with pytest.raises(PresetError, match=r"training.fill_in.max_extra: expected an int >= 1, got -1"):
        load_preset(str(path))


def test_mnist5k_fills_in_and_its_fixed_grid_children_do_not() -> None:
    p = load_preset("mnist5k")
    assert fill_in_options(p.training, p.analysis, p.source) == {
        "max_gap": 0.02, "max_extra": 12, "resolution": 0.1, "families": ["IGR", "FGR", "FGR+RS"], "subdivide": True}
    assert "fill-in (after the grid; eval/fill_in.py): up to 12 more weight(s) per family and seed, of IGR, FGR, " \
           "FGR+RS where the family has models, while a gap between neighbouring clean accuracies exceeds 2 points; " \
           "a gap whose neighbours' mean weight is trained is subdivided" in pipeline.describe(p)
    for name in ("demo", "tiny"):  # a fixed grid by design (and minutes): fill_in: false overrides the parent's
        child = load_preset(name)
        assert fill_in_options(child.training, child.analysis, child.source) is None
        assert "fill-in" not in pipeline.describe(child)


def test_the_loop_trains_midpoints_until_the_gaps_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean accuracy falls 1 point per unit of weight from 96%: weights 2 and 6 leave gaps of 2 and 4 points."""
    p = load_preset("tiny")
    trained_calls: list[tuple[str, int]] = []

    def fake_train(spec: Any, inst: Any, seed: int, cache: Path, device: str, which: str) -> dict[str, Any]:
        assert which == "fill-in"
        trained_calls.append((inst.name, seed))
        return {"seed": seed, "model": inst.name, "defense": inst.defense, "weight": inst.weight,
                "path": f"{inst.name}@{seed}", "cached": False}

    def fake_clean(path: str, data: Any, device: str) -> float:
        name = path.split("@")[0]
        return 0.96 if name == "Standard" else 0.96 - 0.01 * float(name.split("=")[1].rstrip(")"))

    monkeypatch.setattr(pipeline, "_train_one", fake_train)
    monkeypatch.setattr(pipeline, "_clean_accuracy", fake_clean)
    grid = [{"seed": s, "model": n, "defense": d, "weight": w, "path": f"{n}@{s}"}
            for s in (0, 1) for n, d, w in [("Standard", "Standard", None), ("FGR(w=2)", "FGR", 2.0),
                                            ("FGR(w=6)", "FGR", 6.0)]]
    opts = {"max_gap": 0.02, "max_extra": 3, "resolution": 0.1, "families": ["FGR", "IGR"], "subdivide": False}
    added = pipeline._fill_in(p, opts, grid, data=None, cache=Path("unused"), device="cpu")  # type: ignore[arg-type]
    # per seed: the 4-point gap 2 -> 6 gets 4; then 2 -> 4 and 4 -> 6 are 2 points: done (IGR has no models)
    assert [(t["model"], t["seed"]) for t in added] == [("FGR(w=4)", 0), ("FGR(w=4)", 1)] == trained_calls
    assert all(t["fill_in"] for t in added)
    opts["max_gap"], trained_calls[:] = 0.005, []
    added = pipeline._fill_in(p, {**opts, "families": ["FGR"]}, grid, None, Path("unused"), "cpu")  # type: ignore[arg-type]
    first = [t["model"] for t in added if t["seed"] == 0]
    assert len(first) == 3 and first[0] == "FGR(w=4)" and set(first[1:]) <= {"FGR(w=1)", "FGR(w=3)", "FGR(w=5)"}


def test_the_report_lists_the_added_models() -> None:
    cov = [{"family": "FGR", "seed": 0, "instances": 3, "top": 0.96, "lowest": 0.90, "drop": 0.06, "max_gap": 0.02}]
    res = {"analysis": {"coverage": cov, "zero_weight": "Standard"},
           "preset": {"analysis": {"coverage": {"min_drop": 0.06, "max_gap": 0.02}}},
           "training": [{"model": "FGR(w=4)", "seed": 0, "fill_in": True}, {"model": "FGR(w=2)", "seed": 0}]}
    text = "\n".join(_coverage_section(res))
    assert "Added by the per-seed fill-in rule (training.fill_in, eval/fill_in.py: clean accuracy only): " \
           "FGR(w=4) seed 0." in text and "| FGR | 0 | 3 | 96.00 | 90.00 | 6.0 | 2.0 | yes |" in text
