"""Shared fixtures: a small CNN trained once per test session on the embedded MNIST-5k."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fgr_defense.data import load_mnist5k
from fgr_defense.models import SmallCNN


def train_smallcnn(epochs: int = 2, seed: int = 0, width: int = 16) -> nn.Module:
    """Plain cross-entropy training of a SmallCNN on the MNIST-5k training split (CPU, seconds)."""
    torch.manual_seed(seed)
    x, y = load_mnist5k(train=True)
    model = SmallCNN(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="session")
def trained_model() -> nn.Module:
    """A SmallCNN with roughly 95% test accuracy on MNIST-5k. Do not modify it in a test."""
    return train_smallcnn()


@pytest.fixture(scope="session")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST-5k test split ``(images, labels)``; do not modify in place."""
    return load_mnist5k(train=False)


@pytest.fixture()
def batch(trained_model: nn.Module, mnist_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """64 test images the trained model classifies correctly."""
    x, y = mnist_test
    with torch.no_grad():
        ok = trained_model(x[:256]).argmax(1) == y[:256]
    return x[:256][ok][:64].clone(), y[:256][ok][:64].clone()
