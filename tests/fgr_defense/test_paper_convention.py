"""The paper's lambda, checked against the authors' reduction written out literally.

The reference below is the authors' ``regularizers/fgr.py`` reduction, re-derived from their
code and the paper (eqs. (11), (16)): a flow ``u`` of shape ``(B, H, W, 2)`` in normalized
``align_corners=True`` units added to the identity grid of ``F.affine_grid``, sampled with
``F.grid_sample(..., align_corners=True)``, the batch-MEAN cross-entropy, ``gd = grad(loss, u,
create_graph=True)`` and ``reg = gd.pow(2).sum(dim=(1, 2, 3)).mean()``; the total loss is
``CE + lam * reg``. Nothing here calls ``paper_lambda_to_weight``: our side is built only with
``FGR.from_paper`` / ``IGR.from_paper`` and must give the same penalty value and the same
parameter gradient (float64, a small model without batch norm).

Where the flow is evaluated matters. At a pixel position that is exactly an integer the
bilinear sampler has a kink and its derivative is one-sided; ``grid_sample`` takes the slope to
the right when the unnormalized coordinate is exactly the integer and the slope to the left when
rounding put it one ulp below. Our warp builds its grid as ``k * 2/(W-1) - 1``, ``affine_grid``
as a linspace, and for most ``W`` the two differ by an ulp at some pixels, so two correct
implementations can pick different slopes there. The random start of FGR+RS moves every sample
off the integers (the "paper" variant is evaluated at ``v0 + r``), so those tests use any size.
The "authors" variant evaluates the gradient at zero flow by definition; its test uses
``W = 9``: with ``W - 1`` a power of two every normalized coordinate is an exact binary fraction,
both grids land exactly on the integers, and both pick the right-hand slope (checked below as a
precondition).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgr_defense import FGR, IGR, Trainer

DTYPE = torch.float64


def small_model(channels: int, size: int, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # smooth (tanh), no batch norm: per-example gradients are exact
    return nn.Sequential(nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * size * size, classes)).to(DTYPE)


def batch(b: int, c: int, size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.8 * torch.rand(b, c, size, size, generator=g, dtype=DTYPE)  # no zeros at the edges
    return x, torch.randint(0, 4, (b,), generator=g)


def identity_grid(b: int, h: int, w: int) -> torch.Tensor:
    theta = torch.zeros(b, 2, 3, dtype=DTYPE)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    return F.affine_grid(theta, [b, 1, h, w], align_corners=True)  # (B, H, W, 2), x then y


def authors_terms(model: nn.Module, images: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                  padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch-mean CE at the flow u, reg = gd.pow(2).sum(dim=(1, 2, 3)).mean()) as in their code."""
    b, _, h, w = images.shape
    u = u.detach().requires_grad_(True)
    warped = F.grid_sample(images, identity_grid(b, h, w) + u, mode="bilinear", padding_mode=padding,
                           align_corners=True)
    loss = F.cross_entropy(model(warped), y)  # mean over the batch
    (gd,) = torch.autograd.grad(loss, u, create_graph=True)
    return loss, gd.pow(2).sum(dim=(1, 2, 3)).mean()


def random_flow_px(b: int, size: int, sigma_px: float, seed: int) -> torch.Tensor:
    """Our random start: ``sigma * randn(B, 2, H, W)`` in pixels from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return sigma_px * torch.randn((b, 2, size, size), generator=g, dtype=DTYPE)


def to_normalized(v_px: torch.Tensor, size: int) -> torch.Tensor:
    """u = v * 2 / (W - 1): pixels (B, 2, H, W) -> align_corners=True normalized (B, H, W, 2)."""
    return v_px.permute(0, 2, 3, 1) * 2.0 / (size - 1)


def param_grads(value: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, list(model.parameters()), retain_graph=True))


def assert_same(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("lam,b,size,channels", [(100.0, 6, 12, 3), (400.0, 5, 28, 1)])
def test_fgr_rs_paper_variant_matches_the_authors_reduction(lam: float, b: int, size: int, channels: int) -> None:
    sigma_n, seed = 0.01 * 4, 11  # a larger random start than the paper's, to move well off the grid
    model = small_model(channels, size)
    x, y = batch(b, channels, size)
    reg = FGR.from_paper(lam, batch_size=b, image_size=size, sigma_normalized=sigma_n,
                         generator=torch.Generator().manual_seed(seed))
    sigma_px = sigma_n * (size - 1) / 2  # the definition u = v * 2 / (W - 1), solved for v
    assert reg.sigma == pytest.approx(sigma_px, rel=1e-12)
    out = reg.compute(model, x, y)

    r_norm = to_normalized(random_flow_px(b, size, sigma_px, seed), size)
    _, reg_ref = authors_terms(model, x, y, r_norm, padding="border")  # eq. (16): gradient at v0 + r
    task_ref = F.cross_entropy(model(x), y)  # eq. (16): task loss on the clean batch
    assert lam * reg_ref.item() > 0.01 * task_ref.item()  # the penalty is not negligible
    torch.testing.assert_close(out.penalty, lam * reg_ref, rtol=1e-9, atol=0)
    torch.testing.assert_close(out.task_loss, task_ref, rtol=1e-12, atol=0)
    assert_same(param_grads(out.task_loss + out.penalty, model), param_grads(task_ref + lam * reg_ref, model))


def test_trainer_step_matches_the_authors_reduction() -> None:
    """One SGD step (lr 1) of our Trainer moves the parameters by minus the reference gradient."""
    lam, b, size, sigma_n, seed = 300.0, 6, 10, 0.02, 5
    model, ref_model = small_model(1, size), small_model(1, size)
    x, y = batch(b, 1, size, seed=2)
    sigma_px = sigma_n * (size - 1) / 2
    r_norm = to_normalized(random_flow_px(b, size, sigma_px, seed), size)
    _, reg_ref = authors_terms(ref_model, x, y, r_norm, padding="border")
    task_ref = F.cross_entropy(ref_model(x), y)
    grads = param_grads(task_ref + lam * reg_ref, ref_model)

    reg = FGR.from_paper(lam, batch_size=b, image_size=size, sigma_normalized=sigma_n,
                         generator=torch.Generator().manual_seed(seed))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), regularizer=reg, device="cpu",
                      progress=False, seed=0)
    out = trainer.train_step(x, y)
    torch.testing.assert_close(out["reg_loss"], lam * reg_ref.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(out["task_loss"], task_ref.detach(), rtol=1e-12, atol=0)
    assert_same([p0 - p.detach() for p, p0 in zip(model.parameters(), before)], grads)


def test_fgr_rs_authors_variant_matches_their_code() -> None:
    lam, b, size, sigma_n, seed = 500.0, 6, 9, 0.05, 3  # W - 1 = 8: see the module docstring
    model = small_model(3, size)
    x, y = batch(b, 3, size)
    grid = identity_grid(b, size, size)
    pixels = (grid + 1) * (size - 1) / 2
    assert torch.equal(pixels, pixels.round())  # precondition: exact pixel positions at zero flow

    r_norm = to_normalized(random_flow_px(b, size, sigma_n * (size - 1) / 2, seed), size)
    # their random start: F.grid_sample's default padding (zeros), clamp to [0, 1], detach
    z = F.grid_sample(x, grid + r_norm, mode="bilinear", padding_mode="zeros", align_corners=True)
    z = z.clamp(0, 1).detach()
    z_border = F.grid_sample(x, grid + r_norm, padding_mode="border", align_corners=True).clamp(0, 1)
    assert not torch.allclose(z, z_border)  # the padding of the random start is visible here
    # task loss and penalty at zero flow on z; their sampler clamps indices (border-like)
    task_ref, reg_ref = authors_terms(model, z, y, torch.zeros_like(grid), padding="border")

    reg = FGR.from_paper(lam, batch_size=b, image_size=size, sigma_normalized=sigma_n, variant="authors",
                         generator=torch.Generator().manual_seed(seed))
    out = reg.compute(model, x, y)
    assert lam * reg_ref.item() > 0.01 * task_ref.item()
    torch.testing.assert_close(out.task_loss, task_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.penalty, lam * reg_ref, rtol=1e-9, atol=0)
    assert_same(param_grads(out.task_loss + out.penalty, model), param_grads(task_ref + lam * reg_ref, model))


@pytest.mark.parametrize("lam,b", [(1000.0, 4), (7000.0, 7)])
def test_igr_by_analogy(lam: float, b: int) -> None:
    """No IGR code is published; by analogy: gradient of the batch-mean CE w.r.t. x, same reduction."""
    model = small_model(1, 8)
    x, y = batch(b, 1, 8)
    xx = x.clone().requires_grad_(True)
    task_ref = F.cross_entropy(model(xx), y)
    (gd,) = torch.autograd.grad(task_ref, xx, create_graph=True)
    reg_ref = gd.pow(2).sum(dim=(1, 2, 3)).mean()
    out = IGR.from_paper(lam, batch_size=b).compute(model, x, y)
    assert lam * reg_ref.item() > 1e-3 * task_ref.item()
    torch.testing.assert_close(out.penalty, lam * reg_ref, rtol=1e-10, atol=0)
    assert_same(param_grads(out.task_loss + out.penalty, model), param_grads(task_ref + lam * reg_ref, model))


def test_the_numbers_of_the_brief() -> None:
    """Hand values of ``lam * ((W - 1) / 2) ** 2 / B ** 2`` quoted in the docs (CIFAR, W = 32)."""
    assert round(FGR.from_paper(100, batch_size=256, image_size=32).weight, 2) == 0.37
    assert round(FGR.from_paper(300, batch_size=256, image_size=32).weight, 2) == 1.10
    assert round(FGR.from_paper(300, batch_size=128, image_size=32).weight, 2) == 4.40
    assert IGR.from_paper(1000, batch_size=256).weight == pytest.approx(1000 / 256**2)
