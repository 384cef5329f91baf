"""deform_robust.checks: each gradient-masking check is triggered by a model built to show that failure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deform_robust.checks import (
    GradientMaskingWarning,
    check_budget,
    check_es_beats_gradients,
    check_monotone_budget,
    check_probabilities,
    check_randomized,
    check_zero_gradients,
    model_checks,
)
from deform_robust.config import parse_config
from deform_robust.data import TestData
from deform_robust.runner import run_config
from eval.report import write_report


class Softmaxed(nn.Module):
    """A good classifier that returns probabilities instead of logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


class Quantized(nn.Module):
    """A good classifier behind a non-differentiable input quantization: zero gradients everywhere."""

    def __init__(self, net: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


class AlwaysDropout(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.dropout(x, 0.5, training=True))


class RampModel(nn.Module):
    """Class 0 unless the image mean sits in a band just above the ramp's mean 0.5.

    On a horizontal ramp image, a uniform +u flow raises the mean by u/28 (u <= 1). FlowFGSM
    at 0.5 px moves the mean by 1/56 into the band (misclassified); at 2 px it moves it by
    53/756, past the band (correct again): robust accuracy rises with the budget.
    """

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(math.pi / 2 * 56), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sin(self.k * (x.mean(dim=(1, 2, 3)) - 0.5))
        logits = torch.full((x.shape[0], 10), -10.0, device=x.device)
        return torch.cat([(0.5 - s)[:, None], s[:, None], logits[:, 2:]], dim=1)


def _ramp_batch(n: int = 6) -> tuple[Tensor, Tensor]:
    ramp = torch.linspace(0, 1, 28).expand(28, 28)
    return ramp.expand(n, 1, 28, 28).clone(), torch.zeros(n, dtype=torch.long)


def _run(tmp: Path, model: nn.Module, attacks: list[dict[str, Any]], data: tuple[Tensor, Tensor]) -> dict[str, Any]:
    cfg = parse_config({"data": {"dataset": "mnist5k", "batch_size": 64},
                        "models": [{"name": "suspect", "source": "object", "obj": model}],
                        "attacks": attacks, "checks": {"batch": 16}})
    res = run_config(cfg, tmp, data=TestData(data[0], data[1], "test", 10))
    assert res is not None
    write_report(res, tmp, [])
    return res


class TestModelChecks:
    def test_healthy_model_passes(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        assert model_checks(trained_model, batch[0][:16], batch[1][:16], "ok") == []

    def test_probabilities(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        found = check_probabilities(Softmaxed(trained_model), batch[0][:16], "soft")
        assert [f["check"] for f in found] == ["probabilities"]
        assert "soft" in found[0]["message"] and "logits" in found[0]["message"]

    def test_zero_gradients(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        found = check_zero_gradients(Quantized(trained_model), batch[0][:16], batch[1][:16], "q")
        assert [f["check"] for f in found] == ["zero_gradients"]
        assert found[0]["zero_input"] == 16 and found[0]["zero_flow"] == 16

    def test_randomized(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        assert [f["check"] for f in check_randomized(AlwaysDropout(trained_model), batch[0][:8], "r")] == ["randomized"]

    def test_checks_reach_results_and_warn(self, tmp_path: Path, trained_model: nn.Module,
                                           batch: tuple[Tensor, Tensor]) -> None:
        with pytest.warns(GradientMaskingWarning, match="probabilities"):
            res = _run(tmp_path, Softmaxed(trained_model), [{"family": "FlowFGSM", "budgets": [0.5]}],
                       (batch[0][:16], batch[1][:16]))
        assert "probabilities" in {f["check"] for f in res["checks"]}
        assert "[probabilities]" in (tmp_path / "report.md").read_text()


class TestResultChecks:
    def test_es_beats_gradients_on_quantized_model(self, tmp_path: Path, trained_model: nn.Module,
                                                   batch: tuple[Tensor, Tensor]) -> None:
        attacks = [
            {"family": "FlowFGSM", "budgets": [1.0]},
            {"family": "FlowPGD", "budgets": [1.0], "params": {"steps": 3, "random_start": False}},
            {"family": "FlowES", "budgets": [1.0], "params": {"population": 8, "steps": 5}},
        ]
        with pytest.warns(GradientMaskingWarning):
            res = _run(tmp_path, Quantized(trained_model), attacks, (batch[0][:24], batch[1][:24]))
        acc = {c["attack"]: c["robust_acc"] for c in res["cells"]}
        assert acc["FlowES"] < min(acc["FlowFGSM"], acc["FlowPGD"]), acc
        checks = {f["check"] for f in res["checks"]}
        assert {"es_beats_gradients", "zero_gradients"} <= checks

    def test_no_es_warning_on_healthy_model(self) -> None:
        cells = [{"model": "m", "attack": a, "budget": 1.0, "robust_acc": r, "uses_gradients": a != "FlowES"}
                 for a, r in [("FlowPGD", 0.2), ("FlowFGSM", 0.5), ("FlowES", 0.4)]]
        assert check_es_beats_gradients(cells) == []

    def test_es_is_compared_at_equal_budgets_only(self) -> None:
        """A gradient-free attack with a larger budget is no evidence of masking; at the same budget it is."""
        grad = [{"model": "m", "attack": "FlowPGD", "budget": b, "robust_acc": r, "uses_gradients": True}
                for b, r in [(0.5, 0.6), (1.0, 0.3)]]
        es_larger = [{"model": "m", "attack": "FlowES", "budget": 1.0, "robust_acc": 0.4, "uses_gradients": False}]
        assert check_es_beats_gradients(grad + es_larger) == []  # 0.4 at 1.0 px vs PGD 0.3 at 1.0 px
        es_same = [{"model": "m", "attack": "FlowES", "budget": 0.5, "robust_acc": 0.4, "uses_gradients": False}]
        found = check_es_beats_gradients(grad + es_same)  # 0.4 vs 0.6 at 0.5 px: fires
        assert [(f["check"], f["budget"]) for f in found] == [("es_beats_gradients", 0.5)]
        pixel = [{**grad[0], "space": "pixel", "attack": "PGD", "robust_acc": 0.1}]
        assert check_es_beats_gradients(grad + es_same + pixel)  # pixel-space cells are a separate group

    def test_non_monotone_budget_on_ramp_model(self, tmp_path: Path) -> None:
        with pytest.warns(GradientMaskingWarning, match="non_monotone_budget"):
            res = _run(tmp_path, RampModel(), [{"family": "FlowFGSM", "budgets": [0.5, 2.0]}], _ramp_batch())
        acc = [c["robust_acc"] for c in sorted(res["cells"], key=lambda c: c["budget"])]
        assert acc == [0.0, 1.0]
        found = [f for f in res["checks"] if f["check"] == "non_monotone_budget"]
        assert found and found[0]["budgets"] == [0.5, 2.0]

    def test_monotone_tolerance(self) -> None:
        cells = [{"model": "m", "attack": "A", "budget": b, "robust_acc": a} for b, a in [(1, 0.50), (2, 0.505)]]
        assert check_monotone_budget(cells, tolerance=0.01) == []
        assert len(check_monotone_budget(cells)) == 1

    def test_budget_exceeded(self) -> None:
        ok = {"model": "m", "attack": "A", "budget": 1.0, "budget_norm": "L2", "linf_max": 3.0, "l2_max": 1.0}
        assert check_budget(ok) == []
        assert check_budget({**ok, "l2_max": 1.1})[0]["check"] == "budget_exceeded"
