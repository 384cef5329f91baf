"""The flow-attack comparison's report: the issue's checks computed from the rows, the selection rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.flow_attacks import (
    SPLITS,
    T_SPLITS,
    apgd_ce_name,
    apgd_t_name,
    attack_configs,
    main,
    select_configs,
    suite_configs,
)
from benchmarks.flow_attacks_report import (
    attacks_plot,
    checks,
    noise_floor,
    render,
)
from benchmarks.flow_attacks_selection import render_selection, selection_totals, suite_counts

CE = "FlowAPGD-CE 10x10"


def _row(model: str, eps: float, attack: str, robust: int, queries: int = 100, time_s: float = 1.0) -> dict[str, Any]:
    return dict(model=model, eps=eps, attack=attack, n=10, clean=9, robust=robust, robust_acc=robust / 10,
                time_s=time_s, queries=queries)


def _result(ce: int, pgd: tuple[int, int], standard: int, legacy: int, queries: tuple[int, int]) -> dict[str, Any]:
    rows = []
    for m in ("a", "b"):
        rows += [_row(m, 0.5, CE, ce), _row(m, 0.5, "FlowAPGD-CE 1x100", ce + 1), _row(m, 0.5, "FlowAPGD-T", 5),
                 _row(m, 0.5, "FlowPGD-CE eps/8", pgd[0]), _row(m, 0.5, "FlowPGD-CE eps/2", pgd[1]),
                 _row(m, 0.5, "FlowPGD-CE eps/8 10x10", 0), _row(m, 0.5, "FlowPGD-margin", 4),
                 _row(m, 0.5, "FlowAutoAttack legacy", legacy, queries[0], 2.0),
                 _row(m, 0.5, "FlowAutoAttack standard", standard, queries[1], 1.0)]
    return {"rows": rows, "standard_apgd_ce": CE, "command": "c", "git_revision": "r", "n": 10,
            "budgets": [0.5], "machine": "m", "device": "cpu", "torch": "t", "wall_s": 1.0}


def test_checks_use_the_best_step_and_one_example_of_slack() -> None:
    # FlowAPGD-CE 3 vs FlowPGD-CE min(4, 3) = 3: as strong; suite 3 vs legacy 2: within one example
    c = checks(_result(ce=3, pgd=(4, 3), standard=3, legacy=2, queries=(200, 150)))
    assert c == {"ce": [True, True], "aa": [True, True], "aa_queries": [True, True], "aa_time": [True, True]}
    # one example weaker than the best step fails; two examples above the legacy suite fail; more queries fail
    c = checks(_result(ce=4, pgd=(5, 3), standard=4, legacy=2, queries=(100, 101)))
    assert c["ce"] == [False, False] and c["aa"] == [False, False] and c["aa_queries"] == [False, False]


def test_render_states_the_verdicts(tmp_path: Path) -> None:
    text = render(_result(ce=4, pgd=(5, 3), standard=3, legacy=3, queries=(100, 90)))
    assert "0 of 2 model x budget pairs (0%; required: 90%) -> **not met**" in text
    # against the split FlowPGD-CE rows (robust 0) it is not met either: no flip to report
    assert "flips with its reference" not in text
    flipped = render(_result(ce=3, pgd=(4, 3), standard=3, legacy=3, queries=(100, 90)))
    assert "-> **met**" in flipped and "**The first check's verdict flips with its reference**" in flipped
    assert "it would read not met (0 of 2)" in flipped
    assert "at or below `legacy` within one example: 2 of 2 -> **met**" in text
    # the best-of-8 row takes the split runs too (robust 0 here)
    assert "| a | 40.0 | 50.0 | 50.0 | 50.0 | 30.0 | 0.0 | 40.0 | 30.0 | 30.0 | 30.0 | 0.0 |" in text
    # cost: fewer queries (90 vs 100) and less time (1 s vs 2 s) on every pair and in total: no flip
    assert ("in total over the 2 pairs: 180 vs 200 (ratio 0.900; by budget: 0.5 px 0.900); wall time beside it "
            "2 s vs 4 s (ratio 0.500) -> **met**") in text
    assert "flips with its reading" not in text
    assert "resumed after" not in text and "1 s (resumed after an interruption" in render(
        {**_result(4, (5, 3), 3, 3, (100, 90)), "resumed": True})
    assert attacks_plot(_result(3, (4, 3), 3, 2, (1, 1)), tmp_path / "a.png") == str(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_selection_takes_the_lowest_total_and_fewer_runs_on_ties() -> None:
    rows = [_row(m, e, apgd_ce_name(r, s), robust) for m in ("a", "b") for e in (0.5, 0.75)
            for (r, s), robust in zip(SPLITS, (9, 7, 6, 6, 8))]
    res = {"rows": rows, "standard_apgd_ce": CE, "command": "c", "git_revision": "r", "n": 10, "images": [200, 320],
           "machine": "m", "wall_s": 1.0}
    assert selection_totals(res)["FlowAPGD-CE 4x25"] == 24
    assert "Chosen: **FlowAPGD-CE 4x25**" in render_selection(res)


def test_configs_are_at_equal_queries() -> None:
    names = [c.name for c in attack_configs(0.5)]
    assert names[:3] == [CE, "FlowAPGD-CE 1x100", "FlowAPGD-T 3x3x11"] and len(names) == len(set(names))
    assert names[-2:] == ["FlowAutoAttack legacy", "FlowAutoAttack standard"]
    assert [c.name for c in select_configs(0.5)] == [*(apgd_ce_name(r, s) for r, s in SPLITS),
                                                     *(apgd_t_name(*t) for t in T_SPLITS), "StAdv"]


def test_the_flowapgd_t_split_is_judged_inside_the_suite() -> None:
    """An example counts as robust only if the chosen FlowAPGD-CE, the FlowAPGD-T split and StAdv all miss it."""
    masks = {"FlowAPGD-CE 1x100": [1, 1, 1, 0], "FlowAPGD-T 3x33": [1, 1, 0, 1], "FlowAPGD-T 9x11": [0, 1, 1, 1],
             "StAdv": [1, 0, 1, 1]}
    rows = [{**_row("a", 0.5, a, sum(m)), "robust_mask": m} for a, m in masks.items()]
    res = {"rows": rows, "standard_apgd_ce": CE, "standard_apgd_t": "FlowAPGD-T 3x33", "command": "c",
           "git_revision": "r", "n": 4, "images": [200, 320], "machine": "m", "wall_s": 1.0}
    assert suite_counts(res, "FlowAPGD-CE 1x100") == {("a", 0.5, "FlowAPGD-T 3x33"): 1, ("a", 0.5, "FlowAPGD-T 9x11"): 1}
    text = render_selection(res)
    assert "Chosen: **FlowAPGD-CE 1x100**" in text and "Chosen: **FlowAPGD-T 3x33**" in text  # a tie: the first


def test_the_noise_floor_counts_each_suite_against_itself() -> None:
    # seed 0: legacy 2, standard 3 on both models; seed 1: model a legacy 5 / standard 4, model b legacy 2 / standard 2
    result = _result(ce=3, pgd=(4, 3), standard=3, legacy=2, queries=(100, 90))
    noise = {"command": "c", "git_revision": "r", "wall_s": 1.0, "n": 10,
             "rows": [_row("a", 0.5, "FlowAutoAttack legacy", 5) | {"seed": 1},
                      _row("a", 0.5, "FlowAutoAttack standard", 4) | {"seed": 1},
                      _row("b", 0.5, "FlowAutoAttack legacy", 2) | {"seed": 1},
                      _row("b", 0.5, "FlowAutoAttack standard", 2) | {"seed": 1}]}
    f = noise_floor(result, noise)
    assert f["seeds"] == [0, 1] and f["counts"][("a", 0.5)] == {"FlowAutoAttack legacy": [2, 5],
                                                                  "FlowAutoAttack standard": [3, 4]}
    p = f["self"]
    # legacy a: 5 <= 2 + 1 fails, b: 2 <= 3 passes; the other way 2 <= 6 and 2 <= 3 pass
    assert p["FlowAutoAttack legacy: another seed vs seed 0"] == (1, 2)
    assert p["FlowAutoAttack legacy: seed 0 vs another seed"] == (2, 2)
    # standard a: 4 <= 4 passes, b: 2 <= 4; the other way 3 <= 5, 3 <= 3
    assert p["FlowAutoAttack standard: another seed vs seed 0"] == (2, 2)
    assert f["at_seed"] == {0: 2, 1: 2}
    # means: a 3.5 vs 3.5, b 2.5 vs 2.0: both within one example
    assert f["on_mean"] == 2
    text = render(result, noise)
    assert "## The second check's noise floor" in text and "| a | 0.5 | 2, 5 | 3, 4 |" in text
    assert "- FlowAutoAttack legacy: another seed vs seed 0: 1 of 2" in text
    assert "flips with the attack seed" not in text  # standard within one example of legacy at both seeds
    assert "A suite fails the check's test against itself at another seed on up to 1 of 2 pairs" in text
    flipped = {**noise, "rows": [r | {"robust": 9} if r["attack"].endswith("standard") else r for r in noise["rows"]]}
    assert "**The second check's verdict flips with the attack seed** (met at seed(s) 0, not met at 1)" in render(
        result, flipped)
    assert "noise floor" not in render(result)
    # legacy at seed 1 - seed 0: +3 (a), 0 (b): mean +1.50, mean absolute 1.50, largest 3
    assert "| legacy at another seed - at seed 0 | 0.5 | +1.50 | 1.50 | 3 |" in text
    with pytest.raises(ValueError, match=r"^noise.json: expected the n \(10\) and the 2 model x budget pairs"):
        noise_floor(result, {**noise, "rows": noise["rows"][:2]})
    with pytest.raises(ValueError, match=r"^noise.json: expected attack seeds other than the comparison's 0"):
        noise_floor(result, {**noise, "rows": [r | {"seed": 0} for r in noise["rows"]]})
    # the seeds are compared on the same weights: other models (another machine's training) are refused
    assert noise_floor({**result, "models": {"a": "1", "b": "2"}}, {**noise, "models": {"a": "1", "b": "2"}})
    with pytest.raises(ValueError, match=r"^noise.json: expected the models of results.json, got other weights for b"):
        noise_floor({**result, "models": {"a": "1", "b": "2"}}, {**noise, "models": {"a": "1", "b": "3"}})


def test_noise_floor_needs_the_comparison_and_its_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [c.name for c in suite_configs(0.5)] == ["FlowAutoAttack legacy", "FlowAutoAttack standard"]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert [c.build(model).seed for c in suite_configs(0.5, 3)] == [0, 3]  # legacy: no FlowAPGD member
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--noise-floor"])
    assert "--noise-floor: expected the comparison's" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"n": 120}))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--noise-floor", "--n", "60"])
    assert "--n: expected the comparison's 120 images for --noise-floor, got 60" in capsys.readouterr().err


def test_render_says_when_the_cost_verdict_flips_with_its_reading() -> None:
    result = _result(ce=3, pgd=(4, 3), standard=3, legacy=3, queries=(100, 90))
    for r in result["rows"]:  # standard: 200 queries and 5 s on model a, 10 queries on b; legacy 100 on each
        if r["attack"] == "FlowAutoAttack standard":
            r["queries"], r["time_s"] = (200, 5.0) if r["model"] == "a" else (10, 1.0)
    text = render(result)
    assert "at no more model queries: 1 of 2 -> **not met**" in text
    assert "210 vs 200 (ratio 1.050; by budget: 0.5 px 1.050); wall time beside it 6 s vs 4 s (ratio 1.500) -> **not met**" in text
    assert "flips with its reading" not in text  # both readings: not met
    for r in result["rows"]:
        if r["attack"] == "FlowAutoAttack standard" and r["model"] == "b":
            r["queries"] = 0
    text = render(result)
    # queries decide the second reading as they decide the first; the time (6 s vs 4 s) is beside it
    assert "200 vs 200 (ratio 1.000; by budget: 0.5 px 1.000); wall time beside it 6 s vs 4 s (ratio 1.500) -> **met**" in text
    assert ("**The cost part of the second check flips with its reading**: per pair it reads not met, in total "
            "over the pairs met. It is no verdict.") in text


def test_the_cost_reading_is_given_at_every_seed_and_nothing_attacked_renders() -> None:
    result = _result(ce=3, pgd=(4, 3), standard=3, legacy=2, queries=(100, 90))
    noise = {"command": "c", "git_revision": "r", "wall_s": 1.0, "n": 10,
             "rows": [_row(m, 0.5, f"FlowAutoAttack {v}", 2, q) | {"seed": 1}
                      for m in ("a", "b") for v, q in (("legacy", 100), ("standard", 120))]}
    text = render(result, noise)
    assert "- seed 0: 180 vs 200" in text and "- seed 1: 240 vs 200 (ratio 1.200" in text
    assert ("**The cost check's second reading flips with the attack seed** (met at seed(s) 0, not met at 1): it is "
            "no verdict.") in text
    # a model with nothing classified correctly: zero time and queries for both suites
    for r in result["rows"]:
        r["time_s"], r["queries"] = 0.0, 0
    text = render(result)
    assert "wall time per model x budget: nan" in text and "(ratio n/a; by budget: 0.5 px n/a)" in text


def test_a_crashed_run_resumes_its_finished_pairs_and_leaves_no_debris(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.flow_attacks as fa
    from deform_robust.data import load_test_data
    from torchattacks_deform import FlowFGSM

    data = load_test_data("mnist5k", n=8)
    models = []
    for k in range(2):  # templates of the 8 test images: every image is classified, most correctly
        linear = torch.nn.Linear(784, 10, bias=False)
        with torch.no_grad():
            linear.weight.zero_().index_add_(0, data.labels, data.images.flatten(1) * (1 + k))
        models.append((f"m{k}", torch.nn.Sequential(torch.nn.Flatten(), linear)))
    monkeypatch.setattr(fa, "_models", lambda out, device: models)
    calls: list[tuple[int, float]] = []
    crash_at = [3]

    def fgsm(m: Any, eps: float) -> Any:
        calls.append((id(m), eps))
        if len(calls) == crash_at[0]:
            raise RuntimeError("killed")
        return FlowFGSM(m, eps=eps)

    monkeypatch.setattr(fa, "attack_configs", lambda eps: [fa.AttackConfig("FlowFGSM", lambda m: fgsm(m, eps))])
    with pytest.raises(RuntimeError, match="killed"):
        fa.run(tmp_path, n=8, budgets=(0.25, 0.5), progress=False)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / ".lock").exists()
    saved = json.loads((tmp_path / ".results.partial.json").read_text())
    assert sorted(saved["done"]) == ["m0 @ 0.25", "m0 @ 0.5"]
    crash_at[0] = 0
    result = fa.run(tmp_path, n=8, budgets=(0.25, 0.5), progress=False)
    assert len(calls) == 3 + 2  # the crashed pair again, then the last one: the first two were reused
    assert set(result["models"]) == {"m0", "m1"} and "torch threads" in result["machine"]
    assert result["resumed"] and [(r["model"], r["eps"]) for r in result["rows"]] == [
        ("m0", 0.25), ("m0", 0.5), ("m1", 0.25), ("m1", 0.5)]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == result["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no partial, lock or temporaries
    # a partial file made under another key (here: other attacks) is discarded with a warning
    (tmp_path / ".results.partial.json").write_text(json.dumps(saved))
    monkeypatch.setattr(fa, "attack_configs", lambda eps: [fa.AttackConfig("FlowFGSM 2", lambda m: fgsm(m, eps))])
    with pytest.warns(UserWarning, match=r"made under another attacks; starting over"):
        result = fa.run(tmp_path, n=8, budgets=(0.25, 0.5), progress=False)
    assert not result["resumed"] and len(calls) == 5 + 4
    # a partial file of another layout, or a temporary left by a writer killed mid-write: warned / removed
    (tmp_path / ".results.partial.json").write_text(json.dumps({"key": "old", "done": [], "elapsed_s": 1}))
    (tmp_path / ".results.json.abcd1234.tmp").write_text("{")
    with pytest.warns(UserWarning, match=r"unreadable partial results; starting over"):
        fa.run(tmp_path, n=8, budgets=(0.25, 0.5), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"] and len(calls) == 9 + 4
    # --noise-floor compares its seeds with results.json's seed 0 only on the same weights
    (tmp_path / "results.json").write_text(json.dumps({**result, "models": {"m0": "other", "m1": "weights"}}))
    with pytest.raises(ValueError, match=r"results.json: its models have other weights than these"):
        fa.run(tmp_path, n=8, budgets=(0.25, 0.5), progress=False, noise=True)
    assert not (tmp_path / ".lock").exists() and not (tmp_path / ".noise.partial.json").exists()
    # a model that classifies no image correctly: nothing to attack, nothing robust
    absent = next(c for c in range(10) if c not in data.labels.tolist())
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():  # always predicts a class that none of the 8 images has
        wrong[1].weight.zero_()
        wrong[1].bias.copy_((torch.arange(10) == absent).float())
    monkeypatch.setattr(fa, "_models", lambda out, device: [("wrong", wrong)])
    result = fa.run(tmp_path, n=8, budgets=(0.5,), progress=False)
    assert [(r["clean"], r["robust"], r["queries"]) for r in result["rows"]] == [(0, 0, 0)] and len(calls) == 13


def test_the_cost_decomposition_counts_pairs_by_the_difference_in_robust_examples() -> None:
    from benchmarks.flow_attacks_cost import cost_decomposition

    def pair(m: str, eps: float, d: int, extra: int) -> list[dict[str, Any]]:  # legacy 10 robust, 30,000 queries
        return [_row(m, eps, "FlowAutoAttack legacy", 10, 30_000), _row(m, eps, "FlowAutoAttack standard", 10 + d,
                                                                       30_000 + extra)]

    rows = pair("a", 0.5, +1, 1) + pair("b", 0.5, 0, -1) + pair("c", 0.5, -1, -5) + pair("a", 0.25, 0, 7)
    dec = cost_decomposition(rows, {"standard": 500, "legacy": 1000})
    assert dec["costlier"] == {0: 1, 1: 1} and dec["cheaper"] == {-1: 1, 0: 1} and dec["excess_at_0"] == 7
    # 0.5 px: standard 11 + 10 + 9 = 30 robust x 500 of 89,995 queries; legacy 30 x 1,000 of 90,000
    assert dec["check_share"][0.5] == (15_000 / 89_995, 30_000 / 90_000)
    result = _result(ce=3, pgd=(4, 3), standard=3, legacy=2, queries=(100, 101))  # costlier at d = +1
    text = render(result)
    assert "## What decides the cost clause per pair" in text and "| 0 | 2 at d = +1 | none |" in text
    assert "the same gradient-free check, FlowES, which spends all its 2,001 model queries" in text  # before "checks"
    stored = render({**result, "checks": {"standard": ["FlowSquare", 1000], "legacy": ["FlowES", 2001]}})
    assert "(FlowSquare: 1,000 in standard, FlowES: 2,001 in legacy)" in stored
    assert "-> StAdv -> FlowSquare (1,000 queries); `legacy`" in stored
    assert "each pair where the standard version cost more is one where it left at least as many" in text
    # a costlier pair with fewer robust examples: the sentence is not said
    result["rows"][-1]["robust"] = 1
    assert "one where it left at least as many" not in render(result)
