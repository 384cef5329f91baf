"""FlowAutoAttack: the cascade's semantics, its cost bound, inherited settings and its errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import FlowAutoAttack, FlowES, FlowFGSM, FlowPGD, StAdv, warp
from torchattacks_deform.autoattack import version_members
from torchattacks_deform.evaluate import _build


class Counting(nn.Module):
    """Counts forward calls and images; optionally un-normalizes (``inner(z * std + mean)``)."""

    def __init__(self, inner: nn.Module, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.inner, self.mean, self.std = inner, mean, std
        self.calls, self.images = 0, 0
        self.lo, self.hi = float("inf"), float("-inf")

    def forward(self, z: Tensor) -> Tensor:
        self.calls += 1
        self.images += z.shape[0]
        self.lo, self.hi = min(self.lo, float(z.detach().min())), max(self.hi, float(z.detach().max()))
        return self.inner(z * self.std + self.mean)  # type: ignore[no-any-return]


def members(model: nn.Module) -> list:
    return [FlowFGSM(model, eps=0.5), FlowPGD(model, eps=0.5, steps=3, random_start=False),
            StAdv(model, steps=5, bound=0.5), FlowES(model, eps=0.5, population=4, steps=3)]


@pytest.fixture()
def model(trained_model: nn.Module) -> nn.Module:
    return copy.deepcopy(trained_model)


@pytest.fixture()
def mixed(trained_model: nn.Module, mnist_test: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """24 test images, some of them misclassified by the model (labels shifted on 4 of them)."""
    x, y = mnist_test[0][:24].clone(), mnist_test[1][:24].clone()
    y[:4] = (y[:4] + 1) % 10
    return x, y


class TestFlowAutoAttack:
    def test_smoke_shapes_and_report(self, model: nn.Module, mixed: tuple[Tensor, Tensor]) -> None:
        x, y = mixed
        atk = FlowAutoAttack(model, eps=0.5, version="fast")
        assert atk.names == ["FlowAPGD-CE", "FlowAPGD-T", "StAdv", "FlowSquare"] and len(atk.attacks) == 4
        torch.manual_seed(0)
        adv = atk(x, y)
        assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        s, cc = atk.last_success, atk.last_clean_correct
        assert s is not None and cc is not None and s.shape == (24,) and s.dtype == torch.long and cc.dtype == torch.bool
        assert [set(e) for e in atk.last_report] == [{"name", "attacked", "fooled", "time_s", "queries"}] * 4
        assert bool((s[~cc] == -1).all()) and int((s >= 0).sum()) > 0

    def test_cascade_semantics(self, model: nn.Module, mixed: tuple[Tensor, Tensor]) -> None:
        x, y = mixed
        atk = FlowAutoAttack(model, eps=0.5, version="custom", attacks=members(model))
        torch.manual_seed(0)
        flow = atk.get_flow(x, y)
        s, cc, rep = atk.last_success, atk.last_clean_correct, atk.last_report
        assert s is not None and cc is not None
        with torch.no_grad():
            assert torch.equal(cc, model(x).argmax(1) == y)
            pred = model(warp(x, flow).clamp(0, 1)).argmax(1)
        # only clean-correct examples are attacked; each member on the examples still correct
        assert rep[0]["attacked"] == int(cc.sum())
        for prev, cur in zip(rep, rep[1:]):
            assert cur["attacked"] == prev["attacked"] - prev["fooled"]
        assert [r["fooled"] for r in rep] == [int((s == i).sum()) for i in range(4)]
        # fooled examples carry the first successful member's flow; the others are unchanged
        assert bool((pred[s >= 0] != y[s >= 0]).all())
        assert torch.equal(flow[s < 0], torch.zeros_like(flow[s < 0]))
        assert bool((pred[(s < 0) & cc] == y[(s < 0) & cc]).all())
        first = FlowFGSM(model, eps=0.5).get_flow(x[cc], y[cc])  # member 0 ran on exactly these
        assert torch.equal(flow[s == 0], first[s[cc] == 0])
        es = atk.attacks[3]
        if rep[3]["attacked"]:
            assert es.last_queries is not None and rep[3]["queries"] == int(es.last_queries.sum())

    def test_costs_no_more_than_the_members_separately(self, trained_model: nn.Module,
                                                       mixed: tuple[Tensor, Tensor]) -> None:
        x, y = mixed
        suite_model = Counting(trained_model)
        torch.manual_seed(0)
        FlowAutoAttack(suite_model, eps=0.5, version="custom", attacks=members(suite_model)).get_flow(x, y)
        sep_model = Counting(trained_model)
        torch.manual_seed(0)
        with torch.no_grad():
            cc = sep_model(x).argmax(1) == y  # the same clean check
        for atk in members(sep_model):
            flow = atk.get_flow(x[cc], y[cc])
            with torch.no_grad():
                sep_model(atk.apply_flow(x[cc], flow))  # and the same verification forward
        assert suite_model.calls <= sep_model.calls and suite_model.images <= sep_model.images
        assert suite_model.images < sep_model.images  # strictly cheaper once the first member fools some

    def test_normalization_applied_exactly_once(self, trained_model: nn.Module,
                                                mixed: tuple[Tensor, Tensor]) -> None:
        x, y = mixed
        plain = FlowAutoAttack(trained_model, eps=0.5, version="fast")
        torch.manual_seed(1)
        flow_plain = plain.get_flow(x, y)
        # std 0.5 is exact in float32, so the attacks see bit-identical images (StAdv's Adam steps
        # amplify 1e-8 rounding differences, see the StAdv docstring)
        net = Counting(trained_model, mean=0.0, std=0.5)  # the model takes x / 0.5
        normed = FlowAutoAttack(net, eps=0.5, version="fast")
        normed.set_normalization_used([0.0], [0.5])
        z = x / 0.5
        torch.manual_seed(1)
        flow_normed = normed.get_flow(z, y)
        torch.testing.assert_close(flow_normed, flow_plain, atol=1e-5, rtol=0)
        # every input the model saw was normalized exactly once: in [0, 2] (twice: up to 4), above 1 somewhere
        assert net.lo >= 0 and 1.5 < net.hi <= 2
        torch.manual_seed(1)
        adv = normed(z, y)
        torch.manual_seed(1)
        torch.testing.assert_close(adv * 0.5, plain(x, y), atol=1e-5, rtol=0)
        assert normed._normalization_applied is True
        assert all(a._normalization_applied is True for a in normed.attacks)

    def test_three_channel_normalization_and_precision_inherited(self) -> None:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 5))
        x, y = torch.rand(6, 3, 4, 4), torch.randint(0, 5, (6,))
        mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
        own = FlowPGD(net, eps=0.5, steps=2)
        atk = FlowAutoAttack(net, eps=0.5, version="custom", attacks=[own])
        atk.set_normalization_used(mean, std)
        atk.set_precision(torch.bfloat16)
        assert own.autocast_dtype == torch.bfloat16 and own.normalization_used is not None
        own.set_precision(None)  # a member's own setting differs; the suite's wins during its calls
        seen: list[torch.dtype] = []
        hook = net[0].register_forward_pre_hook(lambda m, i: seen.append(torch.get_autocast_dtype("cpu")
                                                                         if torch.is_autocast_enabled("cpu")
                                                                         else i[0].dtype))
        try:
            z = (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
            out = atk(z, y)
        finally:
            hook.remove()
        assert out.shape == z.shape and set(seen) == {torch.bfloat16}
        assert own.autocast_dtype is None  # given back

    def test_mode_and_grads_untouched(self, model: nn.Module, mixed: tuple[Tensor, Tensor]) -> None:
        x, y = mixed
        for training in (True, False):
            model.train(training)
            FlowAutoAttack(model, eps=0.5, version="fast")(x[:8], y[:8])
            assert model.training is training
        assert all(p.grad is None for p in model.parameters())

    def test_versions(self, model: nn.Module) -> None:
        std = FlowAutoAttack(model, eps=0.5)
        assert std.version == "standard" and std.names == ["FlowAPGD-CE", "FlowAPGD-T", "StAdv", "FlowSquare"]
        a, t, stadv, square = std.attacks
        # 100 steps per example as 10 runs of 10 (results/attacks/restarts.md)
        assert (type(a).__name__, a.loss, a.steps, a.restarts, a.eps) == ("FlowAPGD", "ce", 10, 10, 0.5)
        assert (type(t).__name__, t.n_target_classes, t.restarts, t.steps, t.eps) == ("FlowAPGDT", 3, 3, 11, 0.5)
        assert stadv.bound == 0.5 and stadv.steps == 100 and (type(square).__name__, square.queries, square.eps) == (
            "FlowSquare", 1000, 0.5)  # results/attacks/masking.md
        legacy = FlowAutoAttack(model, eps=0.5, version="legacy")
        assert legacy.names == ["FlowPGD-CE", "FlowPGD-margin", "StAdv", "FlowES"]
        es = legacy.attacks[3]
        assert (es.population, es.steps, es.eps) == (20, 100, 0.5) and legacy.attacks[2].steps == 100
        pgd_ce, pgd_m = legacy.attacks[0], legacy.attacks[1]
        assert (pgd_ce.loss, pgd_ce.steps, pgd_ce.alpha, pgd_ce.restarts) == ("ce", 50, 0.5 / 8, 1)
        assert (pgd_m.loss, pgd_m.restarts, pgd_m.steps, pgd_m.eps) == ("margin", 3, 50, 0.5)
        fast = FlowAutoAttack(model, eps=0.5, version="fast")
        assert [(m.steps, getattr(m, "restarts", None)) for m in fast.attacks[:2]] == [(10, 2), (10, 1)]
        assert fast.attacks[1].n_target_classes == 1 and fast.attacks[3].queries == 100
        l2 = FlowAutoAttack(model, eps=2.0, norm="L2", version="fast")
        assert l2.names == ["FlowAPGD-CE", "FlowAPGD-T"] and all(a.norm == "L2" for a in l2.attacks)
        assert [n for n, _, _ in version_members("fast", 1.0)] == std.names
        with pytest.raises(ValueError, match=r"^version: expected one of \('standard', 'fast', 'legacy', 'custom'\)"):
            FlowAutoAttack(model, version="apgd")

    def test_seed_reaches_the_flowapgd_members_and_flowsquare(self, model: nn.Module) -> None:
        seeded = [0, 1, 3]  # FlowAPGD-CE, FlowAPGD-T and FlowSquare (StAdv has no randomness)
        for version in ("standard", "fast"):
            pick = lambda members: [members[i] for i in seeded]  # noqa: E731
            assert [m.seed for m in pick(FlowAutoAttack(model, version=version).attacks)] == [0, 0, 0]  # AutoAttack's
            assert [m.seed for m in pick(FlowAutoAttack(model, version=version, seed=7).attacks)] == [7, 7, 7]
            assert [kw["seed"] for _, _, kw in pick(version_members(version, 0.5, seed=None))] == [None] * 3
            assert [m.seed for m in pick(_build(model, version, 0.5, "Linf", True, 3)[1])] == [3, 3, 3]
            assert [m.seed for m in pick(_build(model, version, 0.5, "Linf", True, None)[1])] == [0, 0, 0]
        with pytest.raises(ValueError, match=r"^seed: expected"):
            FlowAutoAttack(model, seed=-1)

    def test_errors(self, model: nn.Module) -> None:
        other = copy.deepcopy(model)
        with pytest.raises(TypeError, match=r"^attacks: expected a non-empty list"):
            FlowAutoAttack(model, version="custom")
        with pytest.raises(ValueError, match=r"^attacks: only used with version='custom'"):
            FlowAutoAttack(model, attacks=[FlowFGSM(model)])
        with pytest.raises(ValueError, match=r"^attacks\[1\]: expected an attack on the suite's model"):
            FlowAutoAttack(model, version="custom", attacks=[FlowFGSM(model, eps=0.5), FlowFGSM(other, eps=0.5)])
        with pytest.raises(TypeError, match=r"^attacks\[0\]: expected a FlowAttack"):
            FlowAutoAttack(model, version="custom", attacks=[lambda x, y: x])
        targeted = FlowFGSM(model, eps=0.5)
        targeted.set_mode_targeted_by_label(quiet=True)
        with pytest.raises(ValueError, match=r"^attacks\[0\]: expected an attack in default"):
            FlowAutoAttack(model, version="custom", attacks=[targeted])
        with pytest.raises(ValueError, match=r"^attacks\[0\]: expected padding_mode 'border'"):
            FlowAutoAttack(model, version="custom", attacks=[FlowFGSM(model, eps=0.5, padding_mode="zeros")])
        with pytest.raises(ValueError, match="Targeted mode is not supported"):
            FlowAutoAttack(model, version="fast").set_mode_targeted_by_label(quiet=True)
        with pytest.raises(ValueError, match=r"^eps: expected a finite number in \[0, 10000\]"):
            FlowAutoAttack(model, eps=float("nan"))
