"""The benchmark package (benchmarks/) on a tiny config, its command line, and mixed precision of the penalty."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmarks.attacks import plain_stadv, steps_to_rate
from benchmarks.common import Recorder as _Recorder
from benchmarks.config import FORMAT, BenchConfig
from benchmarks.driver import run_bench
from benchmarks.report import TARGETS, evaluate_targets, format_markdown
from benchmarks.timing import interleave, peak_memory, ratio_stats
from fgr_defense.regularizers import FGR, IGR
from torchattacks_deform import StAdv

ROOT = Path(__file__).resolve().parents[2]


class TestStatistics:
    def test_ratio_stats_hand_values(self) -> None:
        s = ratio_stats([2.0, 6.0, 3.0], [1.0, 2.0, 1.0])  # per-round ratios 2, 3, 3
        assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 3.0, 3)
        assert (s["q1"], s["q3"]) == (2.5, 3.0)

    def test_ratio_stats_pairs_rounds(self) -> None:
        # A drifting machine: both get 10x slower in round 2; the paired ratio does not move.
        s = ratio_stats([1.2, 12.0], [1.0, 10.0])
        assert s["min"] == pytest.approx(1.2) and s["max"] == pytest.approx(1.2)

    def test_ratio_stats_errors(self) -> None:
        with pytest.raises(ValueError, match="candidate, reference"):
            ratio_stats([1.0], [1.0, 2.0])

    def test_interleave_rotates_and_reverses(self) -> None:
        calls: list[str] = []
        fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
        times = interleave(fns, repeats=4, warmup=1)
        assert calls[:3] == ["a", "b", "c"]  # warm-up round
        rounds = ["".join(calls[3 + 3 * r: 6 + 3 * r]) for r in range(4)]
        assert rounds == ["abc", "acb", "cab", "cba"]
        assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}

    def test_steps_to_rate(self) -> None:
        y = torch.tensor([0, 1, 2, 3])
        preds = [torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 2, 3]), torch.tensor([0, 0, 0, 3])]
        assert steps_to_rate(preds, y, 0.75) == (2, [0.0, 0.25, 0.75])
        assert steps_to_rate(preds, y, 1.0)[0] is None


class TestPeakMemory:
    def test_cpu_allocator_peak(self) -> None:
        def alloc() -> None:
            a = torch.empty(4 << 20, dtype=torch.uint8)
            b = torch.empty(2 << 20, dtype=torch.uint8)
            del a, b
            torch.empty(5 << 20, dtype=torch.uint8)

        peak = peak_memory(alloc, "cpu")
        assert peak is not None and 6 << 20 <= peak < (6 << 20) + (1 << 16)

    def test_frees_of_earlier_blocks_are_counted(self) -> None:
        kept: list[Tensor] = [torch.empty(3 << 20, dtype=torch.uint8)]

        def swap() -> None:  # frees 3 MB allocated before, then allocates 3 MB: no increase
            kept.pop()
            kept.append(torch.empty(3 << 20, dtype=torch.uint8))

        peak = peak_memory(swap, "cpu")
        assert peak is not None and peak < 1 << 16


class TestTargets:
    def test_met_and_missed(self) -> None:
        stats = {"median": 1.2, "q1": 1.1, "q3": 1.3, "min": 1.0, "max": 1.4, "n": 3}
        rows = [
            {"section": "attacks", "model": "smallcnn", "row": "FlowPGD", "ratio": stats},
            {"section": "attacks", "model": "vgg11", "row": "FlowPGD", "ratio": stats},
            {"section": "train", "model": "vgg11", "row": "FGR+RS", "ratio": stats,
             "ratio_to_igr": dict(stats, median=1.5), "memory_to_igr": 1.25},
        ]
        got = {(t["target"], t["model"]): (t["value"], t["met"]) for t in evaluate_targets(rows)}
        assert got[("FlowPGD / PGD per step, SmallCNN", "smallcnn")] == (1.2, True)
        assert got[("FlowPGD / PGD per step, VGG-11", "vgg11")] == (1.2, False)
        assert got[("FGR+RS / IGR", "vgg11")] == (1.5, False)
        assert got[("peak memory FGR+RS / IGR", "vgg11")] == (1.25, True)
        assert len(got) == 4 and len(TARGETS) == 9


class TestConfig:
    @pytest.mark.parametrize("kwargs, match", [
        ({"models": ("alexnet",)}, "models"), ({"sections": ("nope",)}, "sections"),
        ({"repeats": 0}, "repeats"), ({"autocast_dtype": "fp8"}, "autocast_dtype"), ({"warmup": -1}, "warmup"),
        ({"suite_eps": 0.0}, "suite_eps"), ({"suite_version": "custom"}, "suite_version"),
    ])
    def test_bad_values(self, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            BenchConfig(**kwargs)


def test_plain_stadv_follows_the_library(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """The reference loop optimizes StAdv's loss: per-step success curves agree."""
    x, y = batch[0][:32], batch[1][:32]
    rec_lib, rec_ref = _Recorder(trained_model), _Recorder(trained_model)
    StAdv(rec_lib, steps=15).get_flow(x, y)
    flow = plain_stadv(rec_ref, x, y, steps=15)
    _, lib = steps_to_rate(rec_lib.preds, y, 1.0)
    _, ref = steps_to_rate(rec_ref.preds, y, 1.0)
    assert len(lib) == len(ref) == 16 and ref[-1] > 0.5
    assert max(abs(a - b) for a, b in zip(lib, ref)) <= 2 / 32
    assert flow.shape == (32, 28, 28, 2)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One quick run of the whole benchmark (float32), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig.quick_config(out=str(out), threads=1, command="pytest")
    return run_bench(cfg), out


def test_quick_run_writes_results(quick_results: tuple[dict, Path]) -> None:
    """The whole benchmark end to end on the tiny config (SmallCNN, batch 8, two rounds)."""
    results, tmp_path = quick_results
    assert results["complete"] and results["format"] == FORMAT == "deform-robust-bench/2"
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["complete"] and len(on_disk["rows"]) == len(results["rows"])
    rows = {(r["section"], r["row"]): r for r in results["rows"]}
    assert set(rows) == {("attacks", "FlowPGD"), ("attacks", "FlowFGSM"), ("stadv", "StAdv"), ("es", "FlowES"),
                         ("suite", "FlowAutoAttack")} | {
        ("train", n) for n in ("Standard", "IGR", "FGR", "FGR+RS", "FGR+RS (authors)", "AT-PGD", "FGR+RS+AT-PGD")}
    for r in results["rows"]:
        assert r["ratio"]["n"] == 2 and 0 < r["ratio"]["min"] <= r["ratio"]["median"] <= r["ratio"]["max"]
    assert rows[("train", "Standard")]["ratio"]["median"] == 1.0
    # Double backprop costs more than a plain step, and AT-PGD's 7 attack steps more still.
    assert rows[("train", "IGR")]["ratio"]["median"] > 1.2
    assert rows[("train", "AT-PGD")]["ratio"]["median"] > rows[("train", "IGR")]["ratio"]["median"]
    assert all(rows[("train", n)]["peak_memory_mb"] > 0 for n in ("Standard", "IGR", "FGR+RS"))
    assert rows[("es", "FlowES")]["forwards"] <= 11  # one batched forward per step (+ the clean check)
    assert rows[("stadv", "StAdv")]["steps_lib"] is None or rows[("stadv", "StAdv")]["steps_lib"] <= 40
    assert {t["target"] for t in results["targets"]} == {t.name for t in TARGETS if t.model in (None, "smallcnn")}
    md = (tmp_path / "bench.md").read_text()
    assert md == format_markdown(results) and "## Targets" in md and "`pytest`" in md
    assert ("met" in md) or ("missed" in md)


def test_quick_run_suite_row(quick_results: tuple[dict, Path]) -> None:
    """The suite row: suite / sum-of-parts ratio, counted forwards, worst cases of both."""
    results, _ = quick_results
    (row,) = [r for r in results["rows"] if r["section"] == "suite"]
    for key in ("ratio", "candidate_ms", "reference_ms", "version", "eps", "members", "member_ms",
                "forwards_suite", "forwards_parts", "forward_images_suite", "forward_images_parts",
                "forward_images_members", "robust_acc_suite", "robust_acc_parts", "robust_acc_members",
                "robust_disagree", "cascade"):
        assert key in row, key
    assert row["version"] == "fast" and row["batch"] == 8
    assert row["members"] == ["FlowAPGD-CE", "FlowAPGD-T", "StAdv", "FlowSquare"]
    ratio = row["ratio"]["median"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    # The cascade attacks only the examples still robust: it classifies no more images than its parts.
    assert 0 < row["forward_images_suite"] <= row["forward_images_parts"]
    assert row["forward_images_parts"] == sum(row["forward_images_members"].values())
    for key in ("robust_acc_suite", "robust_acc_parts"):
        assert 0.0 <= row[key] <= 1.0
    assert row["robust_acc_parts"] == min(row["robust_acc_parts"], *row["robust_acc_members"].values())
    assert [c["name"] for c in row["cascade"]] == row["members"] and row["cascade"][0]["attacked"] == 8
    assert any(t["target"] == "suite / sum of its parts" for t in results["targets"])


def test_quick_run_reduced_precision(tmp_path: Path) -> None:
    """`--autocast-dtype bf16 --channels-last` reach the trainer and the attacks, and are recorded."""
    cfg = BenchConfig.quick_config(out=str(tmp_path), threads=1, command="pytest", autocast_dtype="bf16",
                                   channels_last=True)
    results = run_bench(cfg)
    assert results["complete"]
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["config"]["autocast_dtype"] == "bf16" and on_disk["config"]["channels_last"] is True
    assert {r["section"] for r in on_disk["rows"]} == {"attacks", "stadv", "es", "suite", "train"}
    assert "torch.autocast(bf16)" in (tmp_path / "bench.md").read_text()


def test_cli_entry_points_parse() -> None:
    from benchmarks.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--quick", "--models", "smallcnn", "--sections", "attacks"])
    cfg = config_from_args(args, "cmd")
    assert cfg.quick and cfg.models == ("smallcnn",) and cfg.sections == ("attacks",)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "--quick" in out.stdout
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "--autocast-dtype" in out.stdout and "examples:" in out.stdout


def test_cli_precision_options() -> None:
    from benchmarks.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--autocast-dtype", "bf16", "--channels-last", "--suite-images", "4"])
    cfg = config_from_args(args, "cmd")
    assert (cfg.autocast_dtype, cfg.channels_last, cfg.suite_images, cfg.quick) == ("bf16", True, 4, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--amp", "bf16"])  # the old spelling is gone


def test_cli_parser_does_not_import_torch() -> None:
    code = ("import sys; import benchmarks.cli as cli; cli.build_parser().parse_args(['--quick']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


class TestMixedPrecisionPenalty:
    """The penalty under CPU bf16 autocast matches float32 within 5% (relative).

    bf16 keeps 8 bits of mantissa (relative rounding 2**-8 = 0.4%); through the SmallCNN's
    double backprop the penalty moves by about 1% (measured 0.5-0.9%), its gradient w.r.t.
    the parameters by about 1.5%. The tolerances leave room for other seeds: 5% and 10%.
    """

    @staticmethod
    def _bf16_supported() -> bool:
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = nn.Linear(2, 2)(torch.ones(1, 2))
            return out.dtype == torch.bfloat16
        except (RuntimeError, TypeError):
            return False

    @pytest.mark.parametrize("name", ["IGR", "FGR", "FGR+RS", "FGR+RS (authors)"])
    def test_penalty_matches_float32(self, name: str, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        if not self._bf16_supported():
            pytest.skip("CPU bf16 autocast is not supported by this PyTorch build")
        reg = {"IGR": IGR(1.0), "FGR": FGR(1.0), "FGR+RS": FGR(1.0, sigma=0.135),
               "FGR+RS (authors)": FGR(1.0, sigma=0.135, variant="authors")}[name]
        x, y = batch
        params = [p for p in trained_model.parameters()]
        torch.manual_seed(0)
        ref = reg.compute(trained_model, x, y)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = reg.compute(trained_model, x, y)
        assert low.raw_penalty.dtype == torch.float32 and bool(torch.isfinite(low.raw_penalty))
        torch.testing.assert_close(low.raw_penalty, ref.raw_penalty, rtol=5e-2, atol=0)
        torch.testing.assert_close(low.task_loss, ref.task_loss, rtol=5e-2, atol=0)
        g_ref = torch.cat([g.flatten() for g in torch.autograd.grad(ref.raw_penalty, params)])
        g_low = torch.cat([g.flatten() for g in torch.autograd.grad(low.raw_penalty, params)])
        assert float((g_low - g_ref).norm() / g_ref.norm()) < 0.1
