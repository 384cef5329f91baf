"""Training schedules by name (``"paper"``, ``"fast"``, ``"authors"``) and custom ones.

Convention:
    ``"paper"``: SGD momentum 0.9, weight decay 5e-4, batch 256, lr 0.1, x0.1 every 10 epochs
    for 30 epochs on MNIST; at epochs 40 and 60 of 80 on CIFAR (the paper's "Setup").
    ``"authors"``: their public code's CIFAR settings (``utils/settings.py``): SGD momentum
    0.9, weight decay 5e-4, batch 128, lr 0.01, x0.1 at epochs 40 and 60 of 80; CIFAR only.
    ``"fast"``: Adam, lr 1e-3, batch 64, 8 epochs (MNIST-5k + SmallCNN on a CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from torchattacks_deform.validation import check_choice, check_number

from .constants import DATASETS, MAX_LR, SCHEDULES

__all__ = ["OPTIMIZERS", "Schedule", "get_schedule"]


#: Optimizers a :class:`Schedule` can build.
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Schedule:
    """Optimizer and learning-rate schedule: a named one (:func:`get_schedule`) or a custom one.

    Attributes:
        name: a label (``"paper"``, ``"fast"``, ``"authors"``, ``"custom"``, ...).
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: initial learning rate (finite, > 0 and <= :data:`~fgr_defense.constants.MAX_LR`).
        batch_size: global batch size (>= 1).
        epochs: number of epochs (>= 1).
        momentum: SGD momentum (finite, >= 0; ignored by Adam).
        weight_decay: L2 weight decay (finite, >= 0).
        milestones: epochs after which the learning rate is multiplied by ``gamma``
            (strictly increasing ints >= 1).
        gamma: the factor (finite, > 0).

    Raises:
        TypeError, ValueError: a field out of range (the message names it).

    Example:
        >>> s = get_schedule("paper", "cifar10")
        >>> s.epochs, s.milestones, s.batch_size
        (80, (40, 60), 256)
        >>> Schedule("custom", "sgd", lr=0.05, batch_size=128, epochs=10, milestones=[5]).milestones
        (5,)
    """

    name: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"schedule.name: expected a non-empty str, got {self.name!r}")
        check_choice(self.optimizer, "schedule.optimizer", OPTIMIZERS)
        check_number(self.lr, "schedule.lr", minimum=0, exclusive_minimum=True, maximum=MAX_LR)
        check_number(self.batch_size, "schedule.batch_size", integer=True, minimum=1)
        check_number(self.epochs, "schedule.epochs", integer=True, minimum=1)
        check_number(self.momentum, "schedule.momentum", minimum=0)
        check_number(self.weight_decay, "schedule.weight_decay", minimum=0)
        check_number(self.gamma, "schedule.gamma", minimum=0, exclusive_minimum=True)
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Iterable):
            raise TypeError(f"schedule.milestones: expected a sequence of ints, got {self.milestones!r}")
        milestones = tuple(self.milestones)
        for m in milestones:
            check_number(m, "schedule.milestones", integer=True, minimum=1)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"schedule.milestones: expected strictly increasing epochs, got {list(milestones)}")
        object.__setattr__(self, "milestones", milestones)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """The inverse of :meth:`to_dict` (unknown keys are refused, by name).

        Example:
            >>> s = get_schedule("fast", "mnist5k")
            >>> Schedule.from_dict(s.to_dict()) == s
            True
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"schedule: expected a dict of Schedule fields, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"schedule: unknown keys {unknown}; expected some of {sorted(known)}")
        missing = [k for k in ("optimizer", "lr", "batch_size", "epochs") if k not in data]
        if missing:
            raise ValueError(f"schedule: missing keys {missing} (a custom schedule needs optimizer, lr, "
                             "batch_size and epochs)")
        return cls(**{"name": "custom", **dict(data)})

    def build(self, params: Iterable[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, MultiStepLR scheduler)`` over ``params``."""
        opt: torch.optim.Optimizer
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        elif self.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {self.optimizer!r}")
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.milestones), gamma=self.gamma)
        return opt, sched

    def replace(self, **changes: Any) -> Schedule:
        """A copy with some fields changed (validated again)."""
        return type(self)(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (``milestones`` as a list)."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def get_schedule(name: str, dataset: str) -> Schedule:
    """The training schedule ``name`` (``"paper"``, ``"fast"`` or ``"authors"``) for ``dataset``.

    Raises:
        ValueError: unknown schedule or dataset; ``"authors"`` for a dataset their code has no
            settings for (MNIST).

    Example:
        >>> get_schedule("paper", "mnist")
        Schedule(name='paper', optimizer='sgd', lr=0.1, batch_size=256, epochs=30, momentum=0.9, weight_decay=0.0005, milestones=(10, 20), gamma=0.1)
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {dataset!r}")
    if name == "paper":
        if dataset.startswith("cifar"):
            return Schedule("paper", "sgd", 0.1, 256, 80, 0.9, 5e-4, (40, 60), 0.1)
        return Schedule("paper", "sgd", 0.1, 256, 30, 0.9, 5e-4, (10, 20), 0.1)
    if name == "fast":
        return Schedule("fast", "adam", 1e-3, 64, 8, 0.0, 0.0, (6,), 0.1)
    if name == "authors":
        if dataset.startswith("cifar"):
            return Schedule("authors", "sgd", 0.01, 128, 80, 0.9, 5e-4, (40, 60), 0.1)
        raise ValueError(f"schedule: the authors' public code has settings for cifar10/cifar100 only, not "
                         f"{dataset!r}; use 'paper' or a custom Schedule")
    raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {name!r}")
