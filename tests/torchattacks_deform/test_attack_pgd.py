"""FlowFGSM and FlowPGD on the trained SmallCNN: strength, budgets, monotonicity, targeting."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchattacks_deform import FlowFGSM, FlowPGD, flow_norm, project_flow, warp
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


def reference_pgd_flow(model: nn.Module, images: Tensor, labels: Tensor, eps: float, alpha: float, steps: int,
                       norm: str, random_start: bool, targeted: bool = False) -> Tensor:
    """Today's (pre-restarts) FlowPGD loop, copied verbatim in spirit: CE, sum, one flow per call."""
    b, _, h, w = images.shape
    flow = images.new_zeros(b, 2, h, w)
    if random_start:
        flow = random_flow(flow, eps, norm)
    for _ in range(steps):
        f = flow.detach().requires_grad_(True)
        logits = model(warp(images, f))
        loss = F.cross_entropy(logits, labels, reduction="sum") * (-1.0 if targeted else 1.0)
        (grad,) = torch.autograd.grad(loss, f)
        flow = project_flow(flow + alpha * ascent_direction(grad, norm), eps, norm)
    return flow.detach()


class FixedRuns(FlowPGD):
    """FlowPGD whose restarts return given flows (sliced to the examples still attacked)."""

    def __init__(self, model: nn.Module, flows: list[Tensor], **kwargs: Any) -> None:
        super().__init__(model, restarts=len(flows), **kwargs)
        self.flows = tuple(flows)  # a tuple: torchattacks' __setattr__ compares list items with ==
        self.calls: list[tuple[int, bool]] = []

    def _run(self, images: Tensor, labels: Tensor, random_start: bool) -> Tensor:
        i = len(self.calls)
        self.calls.append((images.shape[0], random_start))
        keep = self.keep if images.shape[0] != self.flows[i].shape[0] else slice(None)
        return self.flows[i][keep]


class Brightness(nn.Module):
    """Logits ``[10 - m, m, 0]`` with ``m`` the image mean: class 0 always wins, CE grows with m."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([10 - m, m, torch.zeros_like(m)], dim=1)


class TestLossAndRestarts:
    @pytest.mark.parametrize("norm, random_start", [("Linf", True), ("L2", True), ("Linf", False)])
    def test_restarts_1_ce_bit_identical_to_todays_loop(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor],
                                                        norm: str, random_start: bool) -> None:
        x, y = batch[0][:16], batch[1][:16]
        eps = 0.8 if norm == "Linf" else 4.0
        torch.manual_seed(11)
        ours = FlowPGD(trained_model, eps=eps, steps=4, norm=norm, random_start=random_start).get_flow(x, y)
        torch.manual_seed(11)
        ref = reference_pgd_flow(trained_model, x, y, eps, eps / 4, 4, norm, random_start)
        assert torch.equal(ours, ref)

    def test_targeted_bit_identical_too(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:16], batch[1][:16]
        atk = FlowPGD(trained_model, eps=1.0, steps=3)
        atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
        torch.manual_seed(3)
        ours = atk.get_flow(x, y)
        torch.manual_seed(3)
        ref = reference_pgd_flow(trained_model, x, (y + 1) % 10, 1.0, 0.25, 3, "Linf", True, targeted=True)
        assert torch.equal(ours, ref)

    def test_margin_step_is_sign_of_margin_gradient(self) -> None:
        """Hand-derived: a linear model's margin gradient, through the warp's derivative at v = 0."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(25, 4)).double()
        x, y = torch.rand(3, 1, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2])
        v = torch.zeros(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
        z = model(warp(x, v))
        others = z.masked_fill(F.one_hot(y, 4).bool(), -math.inf).amax(1)
        (g,) = torch.autograd.grad((others - z.gather(1, y[:, None]).squeeze(1)).sum(), v)
        flow = FlowFGSM(model, eps=0.3, loss="margin").get_flow(x, y)
        assert torch.equal(flow, 0.3 * g.sign())
        assert not torch.equal(flow, FlowFGSM(model, eps=0.3).get_flow(x, y))  # CE and margin differ here

    def test_margin_objective_gradcheck(self) -> None:
        from torchattacks_deform import attack_loss

        torch.manual_seed(1)
        z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        y = torch.tensor([0, 1, 2, 3])
        for loss in ("ce", "margin"):
            for targeted in (False, True):
                assert torch.autograd.gradcheck(lambda t, lo=loss, tg=targeted: attack_loss(t, y, lo, tg), (z,))

    def test_first_success_kept_and_later_restarts_on_the_rest(self) -> None:
        model = Brightness()
        x = torch.full((3, 1, 4, 4), 0.5)
        x[:, :, :, 2:] = 1.0  # right half bright: reading to the right raises the mean (and the CE)
        y = torch.tensor([0, 1, 0])  # example 1 is misclassified at any flow: fooled by restart 1
        right, left = torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 4, 4)
        right[:, 0], left[:, 0] = 1.0, -1.0
        atk = FixedRuns(model, [left, right, torch.zeros(3, 2, 4, 4)], eps=1.0, random_start=False)
        atk.keep = torch.tensor([0, 2])
        flow = atk.get_flow(x, y)
        assert atk.calls == [(3, False), (2, True), (2, True)]  # restarts 2.. start at random, on the rest
        assert torch.equal(flow[1], left[1])  # first success kept
        assert torch.equal(flow[0], right[0]) and torch.equal(flow[2], right[2])  # highest CE among the 3

    def test_ties_keep_the_earlier_restart(self) -> None:
        model = Brightness()
        x = torch.rand(2, 1, 4, 1).expand(2, 1, 4, 4).contiguous()  # constant along rows... and columns vary
        x = x.transpose(2, 3).contiguous()  # columns vary, rows constant: a y-shift changes nothing
        up, down = torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4)
        up[:, 1], down[:, 1] = -1.0, 1.0
        atk = FixedRuns(model, [up, down], eps=1.0)
        atk.keep = torch.arange(2)
        assert torch.equal(atk.get_flow(x, torch.tensor([0, 0])), up)

    def test_cost_forwards_with_restarts(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:16], batch[1][:16]
        sizes: list[int] = []
        hook = trained_model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
        try:
            torch.manual_seed(0)
            atk = FlowPGD(trained_model, eps=0.3, steps=3, restarts=3)
            atk.get_flow(x, y)
        finally:
            hook.remove()
        # per restart: `steps` gradient forwards and one scoring forward, on the examples still robust
        n = [sizes[0], sizes[4], sizes[8]] if len(sizes) == 12 else None
        assert n is not None and n[0] == 16 and n[0] >= n[1] >= n[2] >= 1, sizes
        assert sizes == [k for k in n for _ in range(4)]
        assert atk.query_count == sum(sizes)
        assert FlowPGD.cost({"steps": 3, "restarts": 3}) == 9.0

    @pytest.mark.slow
    def test_stronger_settings_are_at_least_as_strong(self, trained_model: nn.Module,
                                                      mnist_test: tuple[Tensor, Tensor]) -> None:
        """The numbers of the report: 400 test images, eps 0.5 px, seed 0 (0.2975, 0.2900, 0.2775)."""
        x, y = mnist_test[0][:400], mnist_test[1][:400]
        accs = []
        for kwargs in (dict(steps=10), dict(steps=20, loss="margin", restarts=2),
                       dict(steps=20, loss="margin", restarts=3)):
            torch.manual_seed(0)
            accs.append(accuracy(trained_model, FlowPGD(trained_model, eps=0.5, **kwargs)(x, y), y))
        assert accs[0] >= accs[1] >= accs[2], accs
