"""FlowSquare: the Square Attack's schedule (literal), gradient-free, budget, queries, early stop, strength."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import FlowES, FlowSquare
from torchattacks_deform.square import square_fraction

from .test_attack_es import NoGradModel, _forbidden


def _p_selection_as_in_autoattack(p_init: float, it: int, n_queries: int) -> float:
    """AutoAttack's ``SquareAttack.p_selection`` (``rescale_schedule=True``), restated literally."""
    it = int(it / n_queries * 10000)
    if 10 < it <= 50:
        p = p_init / 2
    elif 50 < it <= 200:
        p = p_init / 4
    elif 200 < it <= 500:
        p = p_init / 8
    elif 500 < it <= 1000:
        p = p_init / 16
    elif 1000 < it <= 2000:
        p = p_init / 32
    elif 2000 < it <= 4000:
        p = p_init / 64
    elif 4000 < it <= 6000:
        p = p_init / 128
    elif 6000 < it <= 8000:
        p = p_init / 256
    elif 8000 < it:
        p = p_init / 512
    else:
        p = p_init
    return p


@pytest.mark.parametrize("iterations", [1, 7, 998, 5000])
def test_schedule_is_the_square_attacks(iterations: int) -> None:
    for it in range(iterations):
        assert square_fraction(0.8, it, iterations) == _p_selection_as_in_autoattack(0.8, it, iterations)


def test_fools_without_gradients_within_the_budget(
    trained_model: nn.Module, batch: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = batch[0][:32], batch[1][:32]
    net = copy.deepcopy(trained_model)
    model = NoGradModel(net)
    monkeypatch.setattr(torch.autograd, "grad", _forbidden)
    monkeypatch.setattr(torch.autograd, "backward", _forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", _forbidden)
    atk = FlowSquare(model, eps=1.5, queries=300)
    flow = atk.get_flow(x, y)
    monkeypatch.undo()
    assert all(p.grad is None for p in net.parameters())
    assert float(flow.abs().max()) <= 1.5 + 1e-6  # every component at most eps (vertices: exactly +-eps or 0)
    assert set(flow.abs().unique().tolist()) <= {0.0, 1.5}
    with torch.no_grad():
        fooled = trained_model(atk.apply_flow(x, flow)).argmax(1) != y
    assert float(fooled.float().mean()) >= 0.5
    q = atk.last_queries
    assert q is not None and q.dtype == torch.long and int(q.max()) <= 300
    assert int(q.sum()) == sum(model.calls)  # every classified image is accounted for
    assert bool((q[~fooled] == 300).all()) and bool((q[fooled] < 300).any())  # early stops used less


def test_stronger_than_flowes_at_equal_queries(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:48], batch[1][:48]

    def fooled(atk: FlowES | FlowSquare) -> int:
        torch.manual_seed(0)
        with torch.no_grad():
            return int((trained_model(atk(x, y)).argmax(1) != y).sum())

    square = fooled(FlowSquare(trained_model, eps=0.75, queries=201))
    es = fooled(FlowES(trained_model, eps=0.75, population=20, steps=10))
    assert square > es, (square, es)


def test_seeded_and_early_stop_for_already_fooled(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    atk = FlowSquare(trained_model, eps=1.0, queries=30, seed=3)
    torch.testing.assert_close(atk.get_flow(x, y), atk.get_flow(x, y))  # its own generator: the same flow again
    wrong = (y + 1) % 10
    flow = atk.get_flow(x, wrong)
    assert torch.equal(flow, torch.zeros_like(flow))
    assert atk.last_queries is not None and torch.equal(atk.last_queries, torch.ones(8, dtype=torch.long))


def test_targeted(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    atk = FlowSquare(trained_model, eps=2.0, queries=300)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
    adv = atk(x, y)
    with torch.no_grad():
        hit = float((trained_model(adv).argmax(1) == (y + 1) % 10).float().mean())
    assert hit >= 0.3


def test_non_square_and_tiny_images() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    for h, w in [(2, 3), (3, 2), (2, 2)]:
        atk = FlowSquare(nn.Sequential(nn.Flatten(), nn.Linear(h * w, 3)), eps=1.0, queries=10)
        x, y = torch.rand(4, 1, h, w), torch.tensor([0, 1, 2, 0])
        assert atk.get_flow(x, y).shape == (4, 2, h, w)
    assert FlowSquare(model).last_queries is None
