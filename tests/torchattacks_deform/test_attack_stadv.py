"""StAdv on the trained SmallCNN: success, smoothness, best-iterate keeping, PAT's threat model."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchattacks_deform import FlowPGD, StAdv, flow_norm, flow_smoothness_loss, margin_loss


def fooled(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images).argmax(1) != labels


def pat_stadv_norm(delta_normalized: Tensor) -> Tensor:
    """mister_ed's ``stAdv_norm`` re-derived: 4 neighbours, replicate padding, eps 1e-10.

    ``delta_normalized`` is the grid offset ``(B, H, W, 2)`` in normalized units, as PAT keeps it.
    """
    d = delta_normalized.permute(0, 3, 1, 2)
    h, w = d.shape[2], d.shape[3]
    padded = F.pad(d, (1, 1, 1, 1), mode="replicate")
    out = torch.zeros(d.shape[0], dtype=d.dtype)
    for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = padded[:, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
        out = out + ((d - nb).pow(2).sum(1) + 1e-10).sqrt().sum((1, 2))
    return out


class TestStAdv:
    def test_default_succeeds_on_most(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        adv = StAdv(trained_model)(x, y)
        assert float(fooled(trained_model, adv, y).float().mean()) >= 0.90

    def test_smoother_than_pgd(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        """Smoothness loss per pixel of flow (L2) is far lower for StAdv than for FlowPGD."""
        x, y = batch
        stadv = StAdv(trained_model).get_flow(x, y)
        torch.manual_seed(0)
        pgd = FlowPGD(trained_model, eps=1.0).get_flow(x, y)

        def ratio(v: Tensor) -> float:
            return float((flow_smoothness_loss(v) / flow_norm(v, "L2").clamp_min(1e-6)).mean())

        assert ratio(stadv) < 0.5 * ratio(pgd)

    def test_best_iterate_is_kept(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        """Same trajectory, more steps: every example fooled after 10 steps stays fooled."""
        x, y = batch[0][:32], batch[1][:32]
        short = fooled(trained_model, StAdv(trained_model, steps=10)(x, y), y)
        long = fooled(trained_model, StAdv(trained_model, steps=30)(x, y), y)
        assert short.any()
        assert bool((long | ~short).all())

    def test_already_misclassified_gets_zero_flow(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:8], batch[1][:8]
        wrong = (y + 1) % 10  # the model does not predict these labels: already "fooled"
        flow = StAdv(trained_model, steps=5).get_flow(x, wrong)
        assert torch.equal(flow, torch.zeros_like(flow))

    def test_targeted_reaches_targets(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        atk = StAdv(trained_model)
        atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
        adv = atk(x, y)
        with torch.no_grad():
            hit = float((trained_model(adv).argmax(1) == (y + 1) % 10).float().mean())
        assert hit >= 0.80

    def test_bound_and_position_clip(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:16], batch[1][:16]
        flow = StAdv(trained_model, steps=20, lr=0.3, bound=0.6, clip_positions=True).get_flow(x, y)
        assert float(flow_norm(flow).max()) <= 0.6 + 1e-5
        assert float(flow_norm(flow).max()) > 0.5
        h, w = x.shape[2:]
        cols = torch.arange(w).reshape(1, 1, w) + flow[:, 0]
        rows = torch.arange(h).reshape(1, h, 1) + flow[:, 1]
        assert float(cols.min()) >= -0.5 - 1e-6 and float(cols.max()) <= w - 0.5 + 1e-6
        assert float(rows.min()) >= -0.5 - 1e-6 and float(rows.max()) <= h - 0.5 + 1e-6

    def test_margin_loss_hand_values(self) -> None:
        z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
        assert torch.equal(margin_loss(z, torch.tensor([0, 1]), kappa=None), torch.tensor([2.0, -3.0]))
        assert torch.equal(margin_loss(z, torch.tensor([0, 1]), kappa=1.0), torch.tensor([2.0, -1.0]))
        assert torch.equal(margin_loss(z, torch.tensor([1, 0]), targeted=True, kappa=None), torch.tensor([2.0, 5.0]))
        with pytest.raises(ValueError, match="kappa.*None"):  # API change: inf is refused, None is "unclamped"
            margin_loss(z, torch.tensor([0, 1]), kappa=math.inf)

    def test_bad_args(self, trained_model: nn.Module) -> None:
        for arg in ("tau", "lr", "kappa", "bound", "smooth_eps"):
            kwargs: dict[str, Any] = {arg: -1.0}
            with pytest.raises(ValueError, match=arg):
                StAdv(trained_model, **kwargs)
        with pytest.raises(ValueError, match="smoothness_padding"):
            StAdv(trained_model, smoothness_padding="zeros")
        with pytest.raises(ValueError, match="bound"):
            StAdv.pat(trained_model, 32, bound=0.0)
        with pytest.raises(ValueError, match="size"):
            StAdv.pat(trained_model, 1)


class TestPATThreatModel:
    def test_settings_at_32px(self, trained_model: nn.Module) -> None:
        atk = StAdv.pat(trained_model, image_size=32)
        assert atk.bound == 0.8  # 0.05 normalized, align_corners=False: 0.05 * 32 / 2
        assert atk.lr == 0.16  # Adam lr 0.01 normalized
        assert atk.steps == 100 and atk.kappa is None  # unclamped margin (was float("inf") before)
        assert atk.tau == pytest.approx(0.0025 / 0.05 / 16)
        assert atk.smoothness_padding == "replicate" and atk.clip_positions
        assert atk.padding_mode == "zeros"
        mrb = StAdv.multirobustbench(trained_model, image_size=32)
        assert mrb.steps == 20 and mrb.lr == pytest.approx(0.05 / 18 * 16) and mrb.bound == 0.8

    def test_loss_equals_pat_loss_in_normalized_units(self, trained_model: nn.Module) -> None:
        """Our pixel-unit objective equals PAT's normalized-unit one (margin + 0.0025/bound * stAdv_norm)."""
        torch.manual_seed(0)
        atk = StAdv.pat(trained_model, image_size=32)
        v = torch.randn(3, 2, 32, 32, dtype=torch.float64) * 0.5  # pixels
        ours = atk.tau * flow_smoothness_loss(v, eps=atk.smooth_eps, padding=atk.smoothness_padding)
        delta_n = (v * 2 / 32).permute(0, 2, 3, 1)  # PAT's grid offset, (x, y) last
        theirs = 0.0025 / 0.05 * pat_stadv_norm(delta_n)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)

    def test_pat_runs_on_mnist(self, trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch[0][:32], batch[1][:32]
        atk = StAdv.pat(trained_model, image_size=28)
        flow = atk.get_flow(x, y)
        assert float(flow_norm(flow).max()) <= 0.7 + 1e-5
        assert float(fooled(trained_model, atk.apply_flow(x, flow), y).float().mean()) >= 0.5
