"""Regularizers and transforms: independent references, exact reductions, lambda mapping, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgr_defense import (
    FGR,
    IGR,
    Additive,
    Affine,
    Flow,
    GradientRegularizer,
    MaskedAdditive,
    Multiplicative,
    paper_lambda_to_weight,
    paper_sigma_to_pixels,
)
from fgr_defense.regularizers import gradient_norm_sq, gradient_penalty
from fgr_defense.transforms import Transform, affine_flow
from torchattacks_deform.flow import warp


def tiny_model(dtype: torch.dtype = torch.float64, channels: int = 1, size: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * size * size, 4)
    ).to(dtype)


def tiny_batch(b: int = 5, c: int = 1, size: int = 6, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g, dtype=dtype), torch.randint(0, 4, (b,), generator=g)


def reference_fgr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, q: float = 2.0):
    """Eq. (16) computed directly: autograd through warp at v0 + r, per-example sum loss."""
    v = r.clone().requires_grad_(True)
    loss = F.cross_entropy(model(warp(x, v)), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, v, create_graph=True)
    if q == 2:
        per = g.pow(2).flatten(1).sum(1)
    else:
        per = g.abs().flatten(1).amax(1).pow(2)
    return per.mean()


def reference_igr(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xx), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xx, create_graph=True)
    return g.pow(2).flatten(1).sum(1).mean()


def param_grads(value: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, list(model.parameters())))


class TestAgainstReferences:
    @pytest.mark.parametrize("sigma", [0.0, 0.4])
    @pytest.mark.parametrize("channels", [1, 3])
    def test_fgr_matches_autograd_through_warp(self, sigma: float, channels: int) -> None:
        model = tiny_model(channels=channels)
        x, y = tiny_batch(c=channels)
        torch.manual_seed(123)
        out = FGR(2.5, sigma=sigma).compute(model, x, y)
        torch.manual_seed(123)
        r = sigma * torch.randn(x.shape[0], 2, 6, 6, dtype=x.dtype) if sigma > 0 else x.new_zeros(5, 2, 6, 6)
        ref = reference_fgr(model, x, y, r)
        assert ref.item() > 0
        torch.testing.assert_close(out.raw_penalty, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(out.penalty, 2.5 * ref, rtol=1e-10, atol=0)
        for a, b in zip(param_grads(out.penalty, model), param_grads(2.5 * ref, model)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        # task loss of eq. (16) is on the clean batch
        torch.testing.assert_close(out.task_loss, F.cross_entropy(model(x), y))

    def test_fgr_linf_norm(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        out = FGR(1.0, q=math.inf).compute(model, x, y)
        torch.testing.assert_close(out.raw_penalty, reference_fgr(model, x, y, torch.zeros(5, 2, 6, 6,
                                                                                         dtype=x.dtype), q=math.inf))

    def test_igr_matches_reference(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        out = IGR(3.0).compute(model, x, y)
        ref = reference_igr(model, x, y)
        torch.testing.assert_close(out.penalty, 3.0 * ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.task_loss, F.cross_entropy(model(x), y))

    def test_fgr_differs_from_igr(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        assert not torch.allclose(FGR(1.0)(model, x, y), IGR(1.0)(model, x, y))

    def test_per_example_normalization_is_batch_size_independent(self) -> None:
        model = tiny_model()
        x, y = tiny_batch(b=6)
        full = FGR(1.0)(model, x, y)
        halves = (FGR(1.0)(model, x[:3], y[:3]) + FGR(1.0)(model, x[3:], y[3:])) / 2
        torch.testing.assert_close(full, halves)


class TestUnifiedForm:
    @pytest.mark.parametrize("sigma", [0.0, 0.3])
    def test_additive_is_igr_exactly(self, sigma: float) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        torch.manual_seed(5)
        a = GradientRegularizer(Additive(), 2.0, sigma=sigma)(model, x, y)
        torch.manual_seed(5)
        b = IGR(2.0, sigma=sigma)(model, x, y)
        assert torch.equal(a, b)

    @pytest.mark.parametrize("variant", ["paper", "authors"])
    @pytest.mark.parametrize("sigma", [0.0, 0.3])
    def test_flow_is_fgr_exactly(self, sigma: float, variant: str) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        torch.manual_seed(5)
        a = GradientRegularizer(Flow(), 2.0, sigma=sigma, variant=variant).compute(model, x, y)
        torch.manual_seed(5)
        b = FGR(2.0, sigma=sigma, variant=variant).compute(model, x, y)
        assert torch.equal(a.penalty, b.penalty) and torch.equal(a.task_loss, b.task_loss)
        for ga, gb in zip(param_grads(a.penalty, model), param_grads(b.penalty, model)):
            assert torch.equal(ga, gb)

    @pytest.mark.parametrize("transform", [
        Additive(), Multiplicative(), MaskedAdditive.patch(6, 6, 1, 2, 3), Flow(), Affine(), Flow("zeros"),
    ], ids=repr)
    def test_identity_is_exact(self, transform: Transform) -> None:
        x, _ = tiny_batch(c=3)
        n0 = transform.identity(x)
        assert torch.equal(transform.apply(x, n0), x)

    @pytest.mark.parametrize("transform", [
        Additive(), Multiplicative(), MaskedAdditive(torch.rand(1, 1, 6, 6, dtype=torch.float64)), Flow(), Affine(),
    ], ids=repr)
    def test_vjp_matches_autograd(self, transform: Transform) -> None:
        x, _ = tiny_batch(c=2)
        n0 = transform.identity(x)
        n = n0 + 0.05 * torch.randn(n0.shape, dtype=n0.dtype, generator=torch.Generator().manual_seed(0))
        g = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
        fast = transform.vjp(x, n, g)
        ref = Transform.vjp(transform, x, n, g)  # the generic autograd path
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
    def test_flow_linearize_is_warp_and_its_pullback(self, padding_mode: str) -> None:
        x, _ = tiny_batch(c=3)
        v = 0.7 * torch.randn(5, 2, 6, 6, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
        g = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
        t = Flow(padding_mode)
        out, pullback = t.linearize(x, v)
        assert torch.equal(out, warp(x, v, padding_mode=padding_mode))  # one warp pass serves both
        torch.testing.assert_close(pullback(g), Transform.vjp(t, x, v, g), rtol=1e-10, atol=1e-12)

    def test_unified_matches_direct_gradient_for_each_transform(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        for transform in (Multiplicative(), Affine(), MaskedAdditive.patch(6, 6, 0, 0, 4)):
            n = transform.identity(x).requires_grad_(True)
            loss = F.cross_entropy(model(transform.apply(x, n)), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, n, create_graph=True)
            ref = g.pow(2).flatten(1).sum(1).mean()
            got = GradientRegularizer(transform, 1.0)(model, x, y)
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=0, msg=repr(transform))

    def test_affine_flow_matches_affine_grid(self) -> None:
        theta = torch.tensor([[[0.9, 0.1, 0.05], [-0.2, 1.1, -0.1]]], dtype=torch.float64)
        x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
        ours = warp(x, affine_flow(theta, 7, 9))
        grid = F.affine_grid(theta, [1, 2, 7, 9], align_corners=True)
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        torch.testing.assert_close(ours, ref)

    def test_affine_flow_is_differentiable_in_theta(self) -> None:
        theta = Affine().identity(torch.rand(2, 1, 5, 5, dtype=torch.float64)).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: affine_flow(t, 5, 6), (theta,))


class TestAuthorsVariantAndLambda:
    """The authors' reduction itself is checked in tests/fgr_defense/test_paper_convention.py."""

    def test_authors_equals_paper_without_random_start(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        a = FGR(1.0, variant="authors").compute(model, x, y)
        p = FGR(1.0, variant="paper").compute(model, x, y)
        assert torch.equal(a.penalty, p.penalty) and torch.equal(a.task_loss, p.task_loss)

    def test_authors_task_loss_is_on_warped_batch(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        torch.manual_seed(3)
        out = FGR(1.0, sigma=0.5, variant="authors").compute(model, x, y)
        torch.manual_seed(3)
        r = 0.5 * torch.randn(5, 2, 6, 6, dtype=x.dtype)
        z = warp(x, r, padding_mode="zeros").clamp(0, 1)  # the authors' random start reads zeros outside
        torch.testing.assert_close(out.output, model(z))
        assert not torch.allclose(out.output, model(x))
        assert not torch.allclose(out.output, model(warp(x, r, padding_mode="border").clamp(0, 1)))

    def test_conversions_hand_values(self) -> None:
        # lam * ((W - 1) / 2) ** 2 / B ** 2 (flows), lam / B ** 2 (IGR): tests/fgr_defense/test_paper_convention.py
        assert paper_lambda_to_weight(100, 256, 28) == pytest.approx(100 * 13.5**2 / 256**2)
        assert paper_lambda_to_weight(1000, 256, (32, 32)) == pytest.approx(1000 * 15.5**2 / 256**2)
        assert paper_lambda_to_weight(5000, 128, kind="input") == pytest.approx(5000 / 128**2)
        assert paper_sigma_to_pixels(0.01, 32) == pytest.approx(0.155)
        with pytest.raises(ValueError, match="square"):
            paper_lambda_to_weight(100, 256, (28, 32))
        with pytest.raises(ValueError, match="image_size"):
            paper_lambda_to_weight(100, 256)
        with pytest.raises(ValueError, match="batch_size"):
            paper_lambda_to_weight(100, 0, 28)
        with pytest.raises(ValueError, match="lam: expected a finite number in \\[0, 1e\\+07\\], got inf"):
            paper_lambda_to_weight(float("inf"), 256, 28)
        with pytest.raises(ValueError, match="sigma_normalized"):
            paper_sigma_to_pixels(float("nan"), 28)


class TestGradcheck:
    @pytest.mark.parametrize("make", [
        lambda: IGR(1.0),
        lambda: FGR(1.0),
        lambda: FGR(1.0, sigma=0.3, generator=torch.Generator().manual_seed(0)),
        lambda: FGR(1.0, sigma=0.3, variant="authors", generator=torch.Generator().manual_seed(0)),
        lambda: GradientRegularizer(Affine(), 1.0, sigma=0.05, generator=torch.Generator().manual_seed(0)),
    ], ids=["IGR", "FGR", "FGR+RS", "FGR+RS-authors", "Affine+RS"])
    def test_penalty_gradient_wrt_parameters(self, make) -> None:
        model = tiny_model(size=5)
        x, y = tiny_batch(b=2, size=5)
        names = [n for n, _ in model.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

        class Functional(nn.Module):
            def __init__(self, ps: tuple[torch.Tensor, ...]) -> None:
                super().__init__()
                self.ps = ps

            def forward(self, inp: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(model, dict(zip(names, self.ps)), (inp,))

        def penalty(*ps: torch.Tensor) -> torch.Tensor:
            reg = make()  # fresh generator: the same random start on every evaluation
            out = reg.compute(Functional(ps), x, y)
            return out.task_loss + out.penalty

        assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6, rtol=1e-4)


class TestInputsAndErrors:
    def test_inputs_not_modified(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        x0, y0 = x.clone(), y.clone()
        FGR(1.0, sigma=0.3)(model, x, y)
        FGR(1.0, sigma=0.3, variant="authors")(model, x, y)
        IGR(1.0)(model, x, y)
        assert torch.equal(x, x0) and torch.equal(y, y0) and not x.requires_grad

    @pytest.mark.parametrize("kwargs,match", [
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"weight": 1.0, "sigma": -0.1}, "sigma"),
        ({"weight": 1.0, "q": 0.5}, "q"),
        ({"weight": 1.0, "variant": "mine"}, "variant"),
    ])
    def test_bad_arguments(self, kwargs, match) -> None:  # non-finite values: tests/fgr_defense/test_reliability_training.py
        with pytest.raises(ValueError, match=match):
            FGR(**kwargs)

    def test_weight_type(self) -> None:
        with pytest.raises(TypeError, match="weight"):
            IGR("1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="transform"):
            GradientRegularizer("flow", 1.0)  # type: ignore[arg-type]

    def test_non_classifier_output(self) -> None:
        model = nn.Conv2d(1, 2, 3, padding=1).double()
        x, y = tiny_batch()
        with pytest.raises(ValueError, match=r"model output: expected logits of shape \(\d+, K\) with K >= 2 classes"):
            FGR(1.0)(model, x, y)

    def test_bad_batches(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        with pytest.raises(ValueError, match="x: expected rank 4 \\(B, C, H, W\\)"):
            FGR(1.0)(model, x.flatten(1), y)
        with pytest.raises(ValueError, match="y: expected 5 targets"):
            FGR(1.0)(model, x, y[:3])

    def test_zero_weight_skips_the_gradient(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        out = FGR(0.0)(model, x, y)
        assert out.item() == 0.0

    def test_gradient_norm_sq_general_q(self) -> None:
        g = torch.tensor([[3.0, -4.0]])
        torch.testing.assert_close(gradient_norm_sq(g, 3.0), torch.tensor([(27.0 + 64.0) ** (2 / 3)]))

    def test_functional_penalty_is_unweighted(self) -> None:
        model = tiny_model()
        x, y = tiny_batch()
        out = gradient_penalty(model, x, y, Flow())
        torch.testing.assert_close(out.penalty, FGR(1.0)(model, x, y))
