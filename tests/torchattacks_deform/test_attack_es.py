"""FlowES: gradient-free (proved), batched, early-stopping, query accounting, strength."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import FlowES
from torchattacks_deform.es import _centered_ranks


class NoGradModel(nn.Module):
    """Raises if called with autograd enabled; counts calls and images."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("model called with autograd enabled")
        self.calls.append(x.shape[0])
        return self.inner(x)


def _forbidden(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("autograd was called")


def test_centered_ranks() -> None:
    r = _centered_ranks(torch.tensor([[3.0, -1.0, 10.0, 0.0]]))
    torch.testing.assert_close(r, torch.tensor([[1 / 6, -0.5, 0.5, -1 / 6]]))


def test_fools_without_gradients(
    trained_model: nn.Module, batch: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = batch
    net = copy.deepcopy(trained_model)  # parameters without .grad
    model = NoGradModel(net)
    monkeypatch.setattr(torch.autograd, "grad", _forbidden)
    monkeypatch.setattr(torch.autograd, "backward", _forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", _forbidden)
    atk = FlowES(model, eps=2.0, steps=20)
    torch.manual_seed(0)
    adv = atk(x, y)
    monkeypatch.undo()
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        fooled = (trained_model(adv).argmax(1) != y).float().mean()
    assert float(fooled) >= 0.5


def test_batched_forwards_and_queries(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:16], batch[1][:16]
    model = NoGradModel(trained_model)
    steps, pop = 6, 8
    atk = FlowES(model, eps=1.0, population=pop, steps=steps)
    torch.manual_seed(0)
    flow = atk.get_flow(x, y)
    # one clean forward, then at most one forward per step holding every active candidate
    assert len(model.calls) <= 1 + steps
    assert model.calls[0] == 16 and model.calls[1] == 16 * pop
    q = atk.last_queries
    assert q is not None and q.shape == (16,) and q.dtype == torch.long
    assert int(q.sum()) == sum(model.calls)  # every classified image is accounted for
    assert bool(((q - 1) % pop == 0).all()) and int(q.max()) <= 1 + pop * steps
    with torch.no_grad():
        fooled = trained_model(atk.apply_flow(x, flow)).argmax(1) != y
    # examples that were still running at the end used the full budget; early stops used less
    assert bool((q[~fooled] == 1 + pop * steps).all())
    assert bool((q[fooled] <= 1 + pop * steps).all())

    small = NoGradModel(trained_model)
    atk_small = FlowES(small, eps=1.0, population=pop, steps=steps, max_batch=40)
    torch.manual_seed(0)
    torch.testing.assert_close(atk_small.get_flow(x, y), flow)  # chunking changes nothing
    assert max(small.calls) <= 40 and len(small.calls) > len(model.calls)


def test_early_stop_for_already_fooled(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    wrong = (y + 1) % 10
    atk = FlowES(trained_model, eps=1.0, population=4, steps=5)
    flow = atk.get_flow(x, wrong)
    assert torch.equal(flow, torch.zeros_like(flow))
    assert atk.last_queries is not None and torch.equal(atk.last_queries, torch.ones(8, dtype=torch.long))


def test_targeted(trained_model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:32], batch[1][:32]
    atk = FlowES(trained_model, eps=2.0, steps=20)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
    torch.manual_seed(0)
    adv = atk(x, y)
    with torch.no_grad():
        hit = float((trained_model(adv).argmax(1) == (y + 1) % 10).float().mean())
    assert hit >= 0.3


def test_bad_args(trained_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="population"):
        FlowES(trained_model, population=5)
    with pytest.raises(ValueError, match="population"):
        FlowES(trained_model, population=0)
    with pytest.raises(ValueError, match="sigma"):
        FlowES(trained_model, sigma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FlowES(trained_model, alpha=-1.0)
    with pytest.raises(ValueError, match="max_batch"):
        FlowES(trained_model, max_batch=0)
    assert FlowES(trained_model).last_queries is None
