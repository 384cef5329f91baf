"""The one rule for saving and restoring a model's train/eval mode: per module, not per model.

``model.train(flag)`` sets every submodule to ``flag``: a model in train mode with one frozen
batch norm in eval mode would come back with that batch norm in train mode. The attacks,
:func:`~torchattacks_deform.evaluate_robustness` and the trainer save each module's own
``training`` flag with :func:`preserve_modes` and restore exactly those.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> _ = net.train(); _ = net[1].eval()      # a frozen batch norm
    >>> with preserve_modes(net):
    ...     _ = net.eval()
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["preserve_modes", "restore_modes", "save_modes"]

Modes = list[tuple[nn.Module, bool]]


def save_modes(model: nn.Module) -> Modes:
    """Each module of ``model`` (itself first, then its descendants) with its ``training`` flag."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: Modes) -> None:
    """Give every module its saved flag back (parents first, so each module ends with its own)."""
    for module, training in modes:
        module.train(training)
        module.training = training  # a train() override may not set the flag it was given


@contextlib.contextmanager
def preserve_modes(model: nn.Module) -> Iterator[Modes]:
    """Save the mode of every module of ``model``; restore each on exit, also when the body raises."""
    modes = save_modes(model)
    try:
        yield modes
    finally:
        restore_modes(modes)
