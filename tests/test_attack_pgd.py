"""FlowFGSM and FlowPGD on the trained SmallCNN: strength, budgets, monotonicity, targeting."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import FlowFGSM, FlowPGD, flow_norm, warp
from torchattacks_deform.pgd import ascent_direction, random_flow


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


class TestHelpers:
    def test_ascent_direction(self) -> None:
        g = torch.tensor([[3.0, 0.0], [-4.0, 0.0]]).reshape(1, 2, 1, 2)
        assert torch.equal(ascent_direction(g, "Linf").flatten(), torch.tensor([1.0, 0.0, -1.0, 0.0]))
        torch.testing.assert_close(ascent_direction(g, "L2").flatten(), torch.tensor([0.6, 0.0, -0.8, 0.0]))
        assert torch.equal(ascent_direction(torch.zeros(1, 2, 2, 2), "L2"), torch.zeros(1, 2, 2, 2))

    def test_random_flow_in_ball(self) -> None:
        torch.manual_seed(0)
        like = torch.zeros(50, 2, 4, 4)
        v = random_flow(like, 0.5, "Linf")
        assert float(v.abs().max()) <= 0.5 and float(v.abs().max()) > 0.45
        v = random_flow(like, 2.0, "L2")
        norms = flow_norm(v, "L2")
        assert bool((norms <= 2.0 + 1e-6).all()) and float(norms.max()) > 1.5


class TestFlowFGSM:
    def test_step_is_eps_sign(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        flow = FlowFGSM(trained_model, eps=0.7).get_flow(x, y)
        e = torch.tensor(0.7).item()  # 0.7 in float32
        values = set(torch.unique(flow).tolist())
        assert values <= {-e, 0.0, e} and {-e, e} <= values
        flow2 = FlowFGSM(trained_model, eps=0.7, norm="L2").get_flow(x, y)
        torch.testing.assert_close(flow_norm(flow2, "L2"), torch.full((x.shape[0],), 0.7))

    def test_lowers_accuracy(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        assert accuracy(trained_model, x, y) == 1.0
        assert accuracy(trained_model, FlowFGSM(trained_model, eps=1.0)(x, y), y) <= 0.6


class TestFlowPGD:
    def test_defaults(self, trained_model: nn.Module) -> None:
        atk = FlowPGD(trained_model)
        assert (atk.eps, atk.alpha, atk.steps, atk.random_start, atk.norm) == (1.0, 0.25, 10, True, "Linf")
        with pytest.raises(ValueError, match="alpha"):
            FlowPGD(trained_model, alpha=-0.1)

    def test_drops_accuracy_at_two_pixels(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        torch.manual_seed(0)
        assert accuracy(trained_model, FlowPGD(trained_model, eps=2.0)(x, y), y) <= 0.10

    def test_accuracy_does_not_rise_with_eps(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        """No tolerance needed: the seeded random start scales with eps, and the curve is steep."""
        x, y = batch
        accs = []
        for eps in (0.25, 0.5, 1.0, 2.0, 3.0):
            torch.manual_seed(0)
            accs.append(accuracy(trained_model, FlowPGD(trained_model, eps=eps)(x, y), y))
        assert all(b <= a for a, b in zip(accs, accs[1:])), accs
        assert accs[0] > accs[-1]

    @pytest.mark.parametrize("norm, eps", [("Linf", 0.8), ("L2", 6.0)])
    def test_budget_respected(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor], norm: str, eps: float) -> None:
        x, y = batch
        torch.manual_seed(0)
        flow = FlowPGD(trained_model, eps=eps, alpha=eps / 2, steps=4, norm=norm).get_flow(x, y)
        norms = flow_norm(flow, norm)
        assert bool((norms <= eps + 1e-5).all())
        assert float(norms.max()) > 0.9 * eps  # the budget is used, not trivially met

    def test_l2_attack_is_strong(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        torch.manual_seed(0)
        adv = FlowPGD(trained_model, eps=20.0, norm="L2")(x, y)
        assert accuracy(trained_model, adv, y) <= 0.10

    def test_no_random_start_is_deterministic(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:8], batch[1][:8]
        atk = FlowPGD(trained_model, eps=1.0, steps=3, random_start=False)
        torch.manual_seed(0)
        a = atk(x, y)
        torch.manual_seed(1)
        assert torch.equal(a, atk(x, y))

    def test_targeted_reaches_targets(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        targets = (y + 1) % 10
        atk = FlowPGD(trained_model, eps=3.0)
        atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
        torch.manual_seed(0)
        adv = atk(x, y)
        with torch.no_grad():
            hit = float((trained_model(adv).argmax(1) == targets).float().mean())
        assert hit >= 0.80

    def test_get_flow_matches_warp(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        atk = FlowPGD(trained_model, eps=1.5, norm="L2", steps=3)
        torch.manual_seed(5)
        adv = atk(x, y)
        torch.manual_seed(5)
        assert torch.equal(warp(x, atk.get_flow(x, y)).clamp(0, 1), adv)

    def test_one_forward_and_backward_per_step(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        """Cost contract of the benchmark: ``steps`` forwards, ``steps`` backwards, no extras."""
        x, y = batch[0][:8], batch[1][:8]
        calls = {"forward": 0, "backward": 0}
        first = next(trained_model.modules())
        h1 = first.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
        h2 = first.register_full_backward_hook(lambda *a: calls.__setitem__("backward", calls["backward"] + 1))
        try:
            FlowPGD(trained_model, eps=1.0, steps=4)(x, y)
        finally:
            h1.remove()
            h2.remove()
        assert calls == {"forward": 4, "backward": 4}
