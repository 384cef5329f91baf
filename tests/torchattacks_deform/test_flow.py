"""Tests of the flow convention: warp (eq. (4)), norms, projection, smoothness, unit conversion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from torchattacks_deform.flow import (
    Warp,
    check_flow,
    flow_norm,
    flow_smoothness_loss,
    flow_to_normalized,
    flow_to_pixels,
    normalized_to_pixels,
    pixels_to_normalized,
    project_flow,
    warp,
)


def reference_warp(images: Tensor, flow: Tensor) -> Tensor:
    """Eq. (4) written out: x'_i = sum_{q in NB(m'_i, n'_i)} x_q (1 - |m'_i - m_q|)(1 - |n'_i - n_q|).

    Loops over every output pixel; only for sample positions inside the image.
    """
    b, c, h, w = images.shape
    out = torch.zeros_like(images)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                row = i + float(flow[n, 1, i, j])
                col = j + float(flow[n, 0, i, j])
                assert 0 <= row <= h - 1 and 0 <= col <= w - 1
                r0, c0 = math.floor(row), math.floor(col)
                for rq in (r0, r0 + 1):
                    for cq in (c0, c0 + 1):
                        weight = max(0.0, 1 - abs(row - rq)) * max(0.0, 1 - abs(col - cq))
                        if weight > 0:
                            out[n, :, i, j] += weight * images[n, :, rq, cq]
    return out


def interior_flow(b: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A random flow whose sample positions are uniform inside the image."""
    rows = torch.rand(b, h, w, dtype=dtype) * (h - 1)
    cols = torch.rand(b, h, w, dtype=dtype) * (w - 1)
    ii = torch.arange(h, dtype=dtype).reshape(1, h, 1)
    jj = torch.arange(w, dtype=dtype).reshape(1, 1, w)
    return torch.stack([cols - jj, rows - ii], dim=1)


def fractional_flow(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """A flow with every component 0.3..0.7 px away from an integer (off the kinks), both signs."""
    magnitude = 0.3 + 0.4 * torch.rand(shape, dtype=dtype)
    return magnitude * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(dtype)


class TestWarp:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_reference_eq4(self, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        images = torch.rand(2, 3, 5, 6, dtype=dtype)
        flow = interior_flow(2, 5, 6, dtype)
        torch.testing.assert_close(warp(images, flow), reference_warp(images, flow), atol=1e-5, rtol=0)

    def test_one_pixel_shift_x(self) -> None:
        x = torch.rand(2, 3, 4, 5)
        flow = torch.zeros(2, 2, 4, 5)
        flow[:, 0] = 1.0  # read the right-hand neighbour
        out = warp(x, flow)
        assert torch.equal(out[..., :-1], x[..., 1:])
        assert torch.equal(out[..., -1], x[..., -1])  # border padding repeats the edge
        flow[:, 0] = -1.0
        out = warp(x, flow)
        assert torch.equal(out[..., 1:], x[..., :-1])
        assert torch.equal(out[..., 0], x[..., 0])

    def test_one_pixel_shift_y(self) -> None:
        x = torch.rand(2, 3, 4, 5)
        flow = torch.zeros(2, 2, 4, 5)
        flow[:, 1] = 1.0  # read the pixel below
        out = warp(x, flow)
        assert torch.equal(out[:, :, :-1], x[:, :, 1:])
        assert torch.equal(out[:, :, -1], x[:, :, -1])
        flow[:, 1] = -1.0
        out = warp(x, flow)
        assert torch.equal(out[:, :, 1:], x[:, :, :-1])

    def test_zeros_padding_reads_black_outside(self) -> None:
        x = torch.rand(1, 1, 3, 3) + 0.5
        flow = torch.zeros(1, 2, 3, 3)
        flow[:, 0] = 1.0
        out = warp(x, flow, padding_mode="zeros")
        assert torch.equal(out[..., :-1], x[..., 1:])
        assert torch.equal(out[..., -1], torch.zeros(1, 1, 3))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("size", [(2, 2), (5, 7), (28, 28), (32, 32), (17, 64)])
    def test_zero_flow_is_exact_identity(self, dtype: torch.dtype, size: tuple[int, int]) -> None:
        x = torch.rand(3, 2, *size, dtype=dtype)
        assert torch.equal(warp(x, torch.zeros(3, 2, *size, dtype=dtype)), x)
        assert torch.equal(Warp()(x, torch.zeros(3, 2, *size, dtype=dtype)), x)

    def test_gradcheck_images_and_flow(self) -> None:
        torch.manual_seed(1)
        x = torch.rand(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
        v = fractional_flow((2, 2, 4, 5)).requires_grad_(True)
        assert torch.autograd.gradcheck(warp, (x, v))
        for mode in ("zeros", "reflection"):
            assert torch.autograd.gradcheck(lambda a, b, m=mode: warp(a, b, padding_mode=m), (x, v))

    def test_double_backward_wrt_grad_output(self) -> None:
        """What FGR relies on: the flow gradient is differentiable in the incoming gradient."""
        torch.manual_seed(2)
        x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
        v = fractional_flow((1, 2, 4, 4))
        go = torch.rand(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

        def flow_grad(grad_out: Tensor) -> Tensor:
            vv = v.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(warp(x, vv), vv, grad_out, create_graph=True)
            return g

        assert torch.autograd.gradcheck(flow_grad, (go,))
        # And through a parameter in front of the warp (the FGR graph in miniature).
        w = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
        vv = v.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((warp(x, vv) * w).pow(2).sum(), vv, create_graph=True)
        (dw,) = torch.autograd.grad(g.pow(2).sum(), w)
        assert torch.isfinite(dw) and dw != 0

    def test_double_backward_wrt_flow_raises_or_is_correct(self) -> None:
        """Documents the limit: old PyTorch raises, recent PyTorch must be right (gradgradcheck)."""
        torch.manual_seed(3)
        x = torch.rand(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        v = fractional_flow((1, 2, 4, 4)).requires_grad_(True)
        (g,) = torch.autograd.grad(warp(x, v).pow(2).sum(), v, create_graph=True)
        try:
            torch.autograd.grad(g.sum(), v)
        except RuntimeError as err:
            assert "grid_sampler_2d_backward" in str(err)
        else:
            assert torch.autograd.gradgradcheck(warp, (x, v))

    def test_exceptions(self) -> None:
        x = torch.rand(2, 3, 4, 4)
        with pytest.raises(ValueError, match="flow"):
            warp(x, torch.zeros(2, 3, 4, 4))
        with pytest.raises(ValueError, match="flow"):
            warp(x, torch.zeros(2, 2, 4, 5))
        with pytest.raises(ValueError, match="flow"):
            warp(x, torch.zeros(1, 2, 4, 4))
        with pytest.raises(ValueError, match="images"):
            warp(torch.rand(3, 4, 4), torch.zeros(1, 2, 4, 4))
        with pytest.raises(TypeError, match="flow"):
            warp(x, torch.zeros(2, 2, 4, 4, dtype=torch.float64))
        with pytest.raises(TypeError, match="flow"):
            warp(x, torch.zeros(2, 2, 4, 4, dtype=torch.long))
        with pytest.raises(TypeError, match="images"):
            warp(x.numpy(), torch.zeros(2, 2, 4, 4))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="padding_mode"):
            warp(x, torch.zeros(2, 2, 4, 4), padding_mode="wrap")
        with pytest.raises(ValueError, match="mode"):
            warp(x, torch.zeros(2, 2, 4, 4), mode="bicubic")
        with pytest.raises(ValueError, match="flow"):
            check_flow(torch.zeros(2, 2, 4))
        with pytest.raises(ValueError, match=r"^flow: expected shape \(B, 2, H, W\) with H, W >= 1"):
            check_flow(torch.zeros(2, 2, 0, 3))
        with pytest.raises(ValueError, match=r"^images: expected C >= 1"):
            warp(torch.zeros(2, 0, 4, 4), torch.zeros(2, 2, 4, 4))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
    def test_non_finite_or_huge_flows_and_images_are_refused(self, dtype: torch.dtype) -> None:
        """grid_sample's CPU backward crashes on them (border padding); warp raises instead."""
        x = torch.rand(1, 1, 3, 3, dtype=dtype)
        limit = float(torch.finfo(dtype).max) / 8
        for value in (math.nan, math.inf, -math.inf):
            v = torch.zeros(1, 2, 3, 3, dtype=dtype)
            v[0, 1, 2, 2] = value
            with pytest.raises(ValueError, match=r"^flow: expected finite values, got NaN or inf in 1 of 18"):
                warp(x, v)
            with pytest.raises(ValueError, match=r"^images: expected finite values, got NaN or inf in 9 of 9"):
                warp(x * value, torch.zeros(1, 2, 3, 3, dtype=dtype))
        with pytest.raises(ValueError, match=r"^flow: expected displacements of at most"):
            warp(x, torch.full((1, 2, 3, 3), limit * 2, dtype=dtype))
        at_limit = torch.full((1, 2, 3, 3), limit, dtype=dtype, requires_grad=True)
        (g,) = torch.autograd.grad(warp(x, at_limit, padding_mode="reflection").sum(), at_limit)
        assert bool(torch.isfinite(g).all())  # the largest accepted flow is safe in every mode

    def test_empty_batch(self) -> None:
        out = warp(torch.zeros(0, 3, 4, 4), torch.zeros(0, 2, 4, 4))
        assert out.shape == (0, 3, 4, 4)
        assert flow_norm(torch.zeros(0, 2, 4, 4)).shape == (0,)


class TestFlowNorm:
    def test_hand_values(self) -> None:
        v = torch.zeros(2, 2, 3, 4)
        v[0, 0, 1, 2] = -3.0
        v[0, 1, 0, 0] = 4.0
        v[1] = 0.5
        assert torch.equal(flow_norm(v, "Linf"), torch.tensor([4.0, 0.5]))
        torch.testing.assert_close(flow_norm(v, "L2"), torch.tensor([5.0, 0.5 * math.sqrt(24)]))

    def test_exceptions(self) -> None:
        with pytest.raises(ValueError, match="norm"):
            flow_norm(torch.zeros(1, 2, 3, 3), "L1")
        with pytest.raises(ValueError, match="flow"):
            flow_norm(torch.zeros(1, 3, 3, 3))


class TestProjectFlow:
    def test_linf_clips_components(self) -> None:
        v = torch.tensor([-3.0, -0.5, 0.2, 2.0]).reshape(1, 2, 1, 2)
        assert torch.equal(project_flow(v, 1.0, "Linf").flatten(), torch.tensor([-1.0, -0.5, 0.2, 1.0]))

    def test_l2_rescales_only_outside(self) -> None:
        v = torch.zeros(2, 2, 2, 2)
        v[0, 0, 0, 0], v[0, 1, 1, 1] = 3.0, 4.0  # norm 5
        v[1, 0, 0, 0] = 0.5  # norm 0.5, inside
        p = project_flow(v, 2.0, "L2")
        torch.testing.assert_close(p[0], v[0] * 0.4)
        assert torch.equal(p[1], v[1])
        torch.testing.assert_close(flow_norm(p, "L2"), torch.tensor([2.0, 0.5]))

    def test_per_example_eps_and_idempotence(self) -> None:
        torch.manual_seed(0)
        v = torch.randn(3, 2, 4, 4) * 3
        eps = torch.tensor([0.5, 1.0, 2.0])
        for norm in ("Linf", "L2"):
            p = project_flow(v, eps, norm)
            assert bool((flow_norm(p, norm) <= eps + 1e-6).all())
            torch.testing.assert_close(project_flow(p, eps, norm), p)

    def test_input_not_modified_and_errors(self) -> None:
        v = torch.full((1, 2, 2, 2), 3.0)
        before = v.clone()
        project_flow(v, 1.0)
        assert torch.equal(v, before)
        with pytest.raises(ValueError, match="eps"):
            project_flow(v, -1.0)
        with pytest.raises(ValueError, match="norm"):
            project_flow(v, 1.0, "L0")
        for eps in (math.inf, math.nan):
            with pytest.raises(ValueError, match="^eps: expected a finite number >= 0"):
                project_flow(v, eps)
        with pytest.raises(ValueError, match=r"^eps: expected a number, a 0-d tensor or a \(1,\) tensor"):
            project_flow(v, torch.ones(2))
        with pytest.raises(TypeError, match="^eps: expected a real tensor"):
            project_flow(v, torch.ones(1, dtype=torch.bool))
        # a budget beyond the dtype's range bounds nothing, in both norms
        assert torch.equal(project_flow(v, 1e39), v) and torch.equal(project_flow(v, 1e39, "L2"), v)


class TestSmoothness:
    def test_ramp_hand_value(self) -> None:
        """v_x = column index: each of the H(W-1) horizontal pairs differs by 1, counted twice."""
        h, w = 3, 5
        v = torch.zeros(1, 2, h, w)
        v[0, 0] = torch.arange(w, dtype=torch.float32)
        assert flow_smoothness_loss(v, eps=0.0).item() == 2 * h * (w - 1)
        # with eps: vertical pairs (zero difference) contribute sqrt(eps) each
        expected = 2 * (h * (w - 1) * math.sqrt(1 + 0.25) + w * (h - 1) * math.sqrt(0.25))
        assert flow_smoothness_loss(v, eps=0.25).item() == pytest.approx(expected)

    def test_both_channels_enter(self) -> None:
        v = torch.zeros(1, 2, 2, 2)
        v[0, 0, 0, 0], v[0, 1, 0, 0] = 3.0, 4.0  # displacement difference of length 5 to 2 neighbours
        assert flow_smoothness_loss(v, eps=0.0).item() == pytest.approx(2 * 2 * 5.0)

    def test_constant_flow_is_smooth(self) -> None:
        v = torch.full((2, 2, 4, 4), 0.7)
        assert torch.equal(flow_smoothness_loss(v, eps=0.0), torch.zeros(2))

    def test_replicate_padding_is_a_constant_shift(self) -> None:
        torch.manual_seed(0)
        h, w, eps = 4, 6, 1e-3
        v = torch.randn(2, 2, h, w, dtype=torch.float64, requires_grad=True)
        a = flow_smoothness_loss(v, eps=eps)
        b = flow_smoothness_loss(v, eps=eps, padding="replicate")
        torch.testing.assert_close(b - a, torch.full((2,), 2 * (h + w) * math.sqrt(eps), dtype=torch.float64))
        ga = torch.autograd.grad(a.sum(), v)[0]
        gb = torch.autograd.grad(b.sum(), v)[0]
        torch.testing.assert_close(ga, gb)

    def test_replicate_matches_four_neighbour_definition(self) -> None:
        """Every pixel, four neighbours, a missing neighbour is the pixel itself (PAT/mister_ed)."""
        torch.manual_seed(1)
        v = torch.randn(1, 2, 3, 4, dtype=torch.float64)
        padded = F.pad(v, (1, 1, 1, 1), mode="replicate")
        total = torch.zeros((), dtype=torch.float64)
        for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            nb = padded[:, :, 1 + di : 1 + di + 3, 1 + dj : 1 + dj + 4]
            total = total + ((v - nb).pow(2).sum(1) + 1e-10).sqrt().sum()
        torch.testing.assert_close(flow_smoothness_loss(v, eps=1e-10, padding="replicate")[0], total)

    def test_gradcheck(self) -> None:
        v = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda f: flow_smoothness_loss(f, eps=1e-3), (v,))

    def test_exceptions(self) -> None:
        with pytest.raises(ValueError, match="eps"):
            flow_smoothness_loss(torch.zeros(1, 2, 3, 3), eps=-1.0)
        with pytest.raises(ValueError, match="padding"):
            flow_smoothness_loss(torch.zeros(1, 2, 3, 3), padding="reflect")
        with pytest.raises(ValueError, match="flow"):
            flow_smoothness_loss(torch.zeros(1, 1, 3, 3))


class TestUnits:
    def test_hand_values(self) -> None:
        assert pixels_to_normalized(1.0, 32, align_corners=False) == 2 / 32
        assert pixels_to_normalized(1.0, 32, align_corners=True) == pytest.approx(2 / 31)
        assert normalized_to_pixels(0.05, 32, align_corners=False) == pytest.approx(0.8)
        assert normalized_to_pixels(0.05, 28, align_corners=False) == pytest.approx(0.7)
        assert normalized_to_pixels(0.01, 32, align_corners=True) == pytest.approx(0.155)

    def test_round_trip_and_channels(self) -> None:
        v = torch.ones(1, 2, 5, 9)  # H=5, W=9
        n = flow_to_normalized(v, align_corners=True)
        assert n[0, 0, 0, 0].item() == pytest.approx(2 / 8)  # x scales with W
        assert n[0, 1, 0, 0].item() == pytest.approx(2 / 4)  # y scales with H
        n = flow_to_normalized(v, align_corners=False)
        assert n[0, 0, 0, 0].item() == pytest.approx(2 / 9)
        torch.testing.assert_close(flow_to_pixels(n, align_corners=False), v)

    def test_one_pixel_in_normalized_units_matches_grid_sample(self) -> None:
        """A 1 px flow converted to normalized units shifts grid_sample by one pixel too."""
        x = torch.rand(1, 1, 4, 6)
        v = torch.zeros(1, 2, 4, 6)
        v[:, 0] = 1.0
        base = F.affine_grid(torch.eye(2, 3).unsqueeze(0), [1, 1, 4, 6], align_corners=True)
        grid = base + flow_to_normalized(v, align_corners=True).permute(0, 2, 3, 1)
        out = F.grid_sample(x, grid, align_corners=True, padding_mode="border")
        torch.testing.assert_close(out, warp(x, v))

    def test_exceptions(self) -> None:
        with pytest.raises(ValueError, match="size"):
            pixels_to_normalized(1.0, 1)
        with pytest.raises(ValueError, match="size"):
            normalized_to_pixels(1.0, 3.5)  # type: ignore[arg-type]
