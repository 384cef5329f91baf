"""Importable helpers for tests that go through configs (``tests.helpers:...`` callables)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_attack(model: nn.Module, eps: float = 0.1, steps: int = 1) -> Callable[[Tensor, Tensor], Tensor]:
    """A user's own pixel-space attack: ``steps`` signed-gradient steps of size ``eps / steps`` (L-inf ``eps``)."""

    def attack(images: Tensor, labels: Tensor) -> Tensor:
        x = images.detach().clone()
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(model(x), labels)
            (grad,) = torch.autograd.grad(loss, x)
            x = (x.detach() + eps / steps * grad.sign()).clamp(images - eps, images + eps).clamp(0, 1)
        return x.detach()

    return attack
