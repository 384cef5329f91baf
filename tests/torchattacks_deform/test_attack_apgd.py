"""FlowAPGD and FlowAPGDT: APGD's rules restated from AutoAttack's code and paper, bookkeeping, strength."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import FlowAPGD, FlowAPGDT, FlowPGD, dlr_loss, dlr_targeted_loss, warp
from torchattacks_deform._base import FlowAttack
from torchattacks_deform.apgd import apgd_checkpoints, apgd_reduce_step


def autoattack_checkpoints(n_iter: int) -> list[int]:
    """AutoAttack's ``attack_single_run`` loop (autopgd_base.py), transcribed: when it checks."""
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), \
        max(int(0.03 * n_iter), 1)
    k, counter3, out = n_iter_2 + 0, 0, []
    for i in range(n_iter):
        counter3 += 1
        if counter3 == k:
            out.append(i + 1)
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 50, 99, 100, 101, 250, 1000])
def test_checkpoints_follow_autoattacks_loop(n: int) -> None:
    assert apgd_checkpoints(n) == autoattack_checkpoints(n)


def test_checkpoints_are_the_papers_w_j_at_100_steps() -> None:
    # Croce & Hein (2020), Sec. 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert apgd_checkpoints(100) == [math.ceil(round(q * 100, 9)) for q in p[1:]]


def test_reduce_step_restates_algorithm_1() -> None:
    """Condition 1 (rises <= rho * k since the last checkpoint) or condition 2 (kept step, no new best)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        k, b = int(torch.randint(1, 8, (1,), generator=gen)), 6
        history = torch.randn(k + 3, b, generator=gen).round(decimals=1)
        start = 2
        reduced_before = torch.rand(b, generator=gen) < 0.5
        best_before = history[: start + 1].amax(0)
        best_now = history.amax(0)
        got = apgd_reduce_step(history, start, 0.75, reduced_before, best_before, best_now)
        for e in range(b):
            rises = sum(float(history[t + 1, e]) > float(history[t, e]) for t in range(start, start + k))
            cond1 = rises <= 0.75 * k
            cond2 = (not bool(reduced_before[e])) and float(best_before[e]) >= float(best_now[e])
            assert bool(got[e]) == (cond1 or cond2)


def test_dlr_by_hand() -> None:
    z = torch.tensor([[5.0, 1.0, 3.0, 0.0], [2.0, 6.0, 1.0, -4.0]])
    y = torch.tensor([0, 0])
    # row 0: correct, -(5 - 3) / (5 - 1); row 1: wrong, -(2 - 6) / (6 - 1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5, 0.8]))
    # targeted toward class 2: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(dlr_targeted_loss(z, y, torch.tensor([2, 2])),
                               torch.tensor([-(5 - 3) / (5 - 0.5), -(2 - 1) / (6 - (1 - 4) / 2)]))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(z[:, :2], y)
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_targeted_loss(z[:, :3], y, y)


class Recorder:
    """Records every flow an attack warps with, and counts the images the model classifies."""

    def __init__(self, atk: FlowAttack) -> None:
        self.flows: list[Tensor] = []
        original = atk.warp

        def warp_and_record(images: Tensor, flow: Tensor) -> Tensor:
            self.flows.append(flow.detach().clone())
            return original(images, flow)

        atk.warp = warp_and_record  # type: ignore[method-assign]


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.inner(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_every_iterate_within_the_budget(trained_model: nn.Module, batch: tuple[Tensor, Tensor], norm: str) -> None:
    x, y = batch[0][:16], batch[1][:16]
    eps = 0.5 if norm == "Linf" else 5.0
    atk = FlowAPGD(trained_model, eps=eps, norm=norm, steps=20)
    rec = Recorder(atk)
    flow = atk.get_flow(x, y)
    assert len(rec.flows) >= 20
    for v in [*rec.flows, flow]:
        size = v.flatten(1).abs().amax(1) if norm == "Linf" else v.flatten(1).norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5)


def test_best_iterate_and_honest_queries(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    model = Counting(copy.deepcopy(trained_model))
    atk = FlowAPGD(model, eps=0.3, steps=25, loss="ce", restarts=2)
    rec = Recorder(atk)
    flow = atk.get_flow(x, y)
    # every model call of the attack is counted, per example
    assert int(atk.last_queries.sum()) == model.images
    with torch.no_grad():
        logits = trained_model(warp(x, flow))
    fooled = logits.argmax(1) != y
    assert 0 < int(fooled.sum()) < len(y)
    # an example never fooled gets its highest-loss iterate over all restarts: no recorded
    # iterate of it has a higher cross-entropy (each restart's iterates are recorded in order)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    best = torch.full_like(ce, -math.inf)
    for v in rec.flows:
        if v.shape[0] == len(y):  # the first restart sees every example
            with torch.no_grad():
                best = torch.maximum(best, torch.nn.functional.cross_entropy(trained_model(warp(x, v)), y,
                                                                             reduction="none"))
    assert bool((ce[~fooled] >= best[~fooled] - 1e-4).all())
    # a fooled example stopped being attacked: fewer queries than one that was never fooled
    assert int(atk.last_queries[fooled].min()) < int(atk.last_queries[~fooled].min())


def test_seeded_and_global_rng_untouched(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = FlowAPGD(trained_model, eps=0.5, steps=5, seed=3).get_flow(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    b = FlowAPGD(trained_model, eps=0.5, steps=5, seed=3).get_flow(x, y)
    c = FlowAPGD(trained_model, eps=0.5, steps=5, seed=4).get_flow(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_finds_what_pgd_with_a_bad_step_misses(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Fixed-step PGD with a step of 2 eps bounces between corners; APGD halves its step and finds more."""
    x, y = batch
    eps = 0.5
    apgd = FlowAPGD(trained_model, eps=eps, steps=50)(x, y)
    torch.manual_seed(0)
    pgd = FlowPGD(trained_model, eps=eps, alpha=2 * eps, steps=50)(x, y)
    with torch.no_grad():
        ok_apgd = trained_model(apgd).argmax(1) == y
        ok_pgd = trained_model(pgd).argmax(1) == y
    assert int((~ok_apgd & ok_pgd).sum()) >= 3  # examples only APGD fools
    assert int(ok_apgd.sum()) < int(ok_pgd.sum()) < len(y)  # and it is stronger overall; every example starts correct


def test_apgd_t_targets_the_next_classes(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    model = Counting(copy.deepcopy(trained_model))
    atk = FlowAPGDT(model, eps=0.5, steps=20, n_target_classes=3)
    adv = atk(x, y)
    assert int(atk.last_queries.sum()) == model.images
    assert int(atk.last_queries.max()) <= 1 + 3 * (1 + 20)
    with torch.no_grad():
        robust = (trained_model(adv).argmax(1) == y).float().mean().item()
    assert robust < 0.9  # it attacks: an attack returning its input leaves 1.0 here
    three = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    with pytest.warns(UserWarning, match="needs at least 4; running untargeted FlowAPGD with the DLR loss"):
        adv3 = FlowAPGDT(three, eps=0.5, steps=2)(x[:2], torch.tensor([0, 1]))
    assert adv3.shape == x[:2].shape


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, r"^steps: expected an int >= 1"),
    ({"restarts": 0}, r"^restarts: expected an int >= 1"),
    ({"rho": 1.5}, r"^rho: expected a finite number in \[0, 1\]"),
    ({"loss": "hinge"}, r"^loss: expected one of \('ce', 'dlr', 'margin'\)"),
    ({"norm": "L1"}, r"^norm: expected one of"),
    ({"eps": -1.0}, r"^eps: expected"),
])
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=message):
        FlowAPGD(model, **kwargs)  # type: ignore[arg-type]


def test_margin_loss_is_the_unclamped_cw_margin(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    atk = FlowAPGD(trained_model, eps=0.5, steps=3, loss="margin")
    logits = trained_model(x)
    got = atk._objective(y, "margin")(logits, torch.arange(8))
    others = logits.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("-inf")).amax(1)
    torch.testing.assert_close(got, others - logits.gather(1, y[:, None]).squeeze(1))
    adv = atk(x, y)
    with torch.no_grad():
        assert int((trained_model(adv).argmax(1) != y).sum()) > 0
