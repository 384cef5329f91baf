"""The one set of input validators of deform-robust (attacks, training, the harness, the CLIs).

Every function raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) with a message that starts with the argument's name, says what was expected
and shows what arrived: ``"steps: expected an int >= 0, got -5"``. Numbers are always
required to be finite: ``inf`` and ``nan`` are refused everywhere (a budget of ``inf`` is
not a budget, and non-finite values crash PyTorch's CPU ``grid_sample`` backward).

This module imports nothing heavy at import time except ``torch`` for the tensor checks.

Example:
    >>> check_number(0.5, "eps", minimum=0)
    0.5
    >>> check_number(float("inf"), "eps", minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: eps: expected a finite number >= 0, got inf
    >>> check_number("5", "steps", integer=True, minimum=1)
    Traceback (most recent call last):
    ...
    TypeError: steps: expected an int >= 1, got str '5'
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "MAX_BUDGET",
    "RANGE_TOL",
    "check_bool",
    "check_budget",
    "check_choice",
    "check_images",
    "check_logits",
    "check_labels",
    "check_member_budget",
    "check_number",
    "describe_number",
]

Number = Union[int, float]

#: Images coming back from torchattacks' inverse normalization can overshoot [0, 1] by float
#: rounding; accept that much (callers clamp).
RANGE_TOL = 1e-5

#: Largest budget accepted anywhere (flow budgets in pixels, pixel budgets in intensities):
#: 10,000 px is beyond any image; larger finite values (1e300) only overflow later in a run.
MAX_BUDGET = 1e4


def describe_number(*, minimum: Optional[Number] = None, maximum: Optional[Number] = None,
                    exclusive_minimum: bool = False, integer: bool = False) -> str:
    """The phrase used in messages: ``"a finite number > 0"``, ``"an int >= 1"``, ...

    Example:
        >>> describe_number(minimum=0, exclusive_minimum=True)
        'a finite number > 0'
        >>> describe_number(minimum=2, maximum=9, integer=True)
        'an int in [2, 9]'
    """
    what = "an int" if integer else "a finite number"
    if minimum is not None and maximum is not None:
        left = "(" if exclusive_minimum else "["
        return f"{what} in {left}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"{what} {'>' if exclusive_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f"{what} <= {maximum:g}"
    return what


def check_number(
    value: Any,
    name: str,
    *,
    minimum: Optional[Number] = None,
    maximum: Optional[Number] = None,
    exclusive_minimum: bool = False,
    integer: bool = False,
    allow_none: bool = False,
) -> Any:
    """Return ``value`` (as ``int`` or ``float``) if it is a finite number in range, else raise.

    Args:
        value: the candidate.
        name: the argument's name, first word of every message.
        minimum, maximum: inclusive bounds (``minimum`` exclusive with ``exclusive_minimum``).
        integer: require an ``int`` (``bool`` is never accepted; ``5.0`` is not an int).
        allow_none: return None for None instead of raising.

    Raises:
        TypeError: not a number (or not an int when ``integer``).
        ValueError: NaN, infinite, or out of range.

    Example:
        >>> check_number(3, "steps", integer=True, minimum=1)
        3
        >>> check_number(0, "lr", minimum=0, exclusive_minimum=True)
        Traceback (most recent call last):
        ...
        ValueError: lr: expected a finite number > 0, got 0
        >>> check_number(None, "bound", minimum=0, allow_none=True) is None
        True
    """
    expected = describe_number(minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum,
                               integer=integer)
    if value is None and allow_none:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        if not integer and isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value)  # a 0-d float tensor is accepted as a number
        else:
            got = f"{type(value).__name__} {value!r}" if not isinstance(value, Tensor) else \
                f"a tensor of shape {tuple(value.shape)}"
            raise TypeError(f"{name}: expected {expected}{' or None' if allow_none else ''}, got {got}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    too_small = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    too_large = maximum is not None and value > maximum
    if too_small or too_large:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value if integer else float(value) if isinstance(value, float) else value


def check_budget(value: Any, name: str, *, exclusive_minimum: bool = False, allow_none: bool = False) -> Any:
    """:func:`check_number` for a budget: finite, ``>= 0`` (``> 0`` with ``exclusive_minimum``)
    and at most :data:`MAX_BUDGET`.

    Example:
        >>> check_budget(0.5, "eps")
        0.5
        >>> check_budget(1e300, "eps")
        Traceback (most recent call last):
        ...
        ValueError: eps: expected a finite number in [0, 10000], got 1e+300
    """
    return check_number(value, name, minimum=0, maximum=MAX_BUDGET, exclusive_minimum=exclusive_minimum,
                        allow_none=allow_none)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``.

    Example:
        >>> check_bool(1, "random_start")
        Traceback (most recent call last):
        ...
        TypeError: random_start: expected True or False, got int 1
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them.

    Example:
        >>> check_choice("L1", "norm", ("Linf", "L2"))
        Traceback (most recent call last):
        ...
        ValueError: norm: expected one of ('Linf', 'L2'), got 'L1'
    """
    options = tuple(choices)
    try:
        ok = value in options
    except TypeError:  # unhashable or incomparable value
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def check_images(images: Any, name: str = "images", *, layout_only: bool = False) -> None:
    """Raise unless ``images`` is a non-empty, finite, floating-point ``(B, C, H, W)`` batch in [0, 1].

    The one image-batch rule of the three packages. ``layout_only=True`` checks the layout
    alone (a floating-point ``(B, C, H, W)`` tensor, ``C >= 1``, ``H, W >= 2``): the warp and
    the training transforms take any values (normalized images, a batch of zero images).

    Example:
        >>> check_images(torch.rand(2, 1, 4, 4))
        >>> check_images(torch.rand(2, 1, 4, 4) * 2)
        Traceback (most recent call last):
        ...
        ValueError: images: expected values in [0, 1], got range [...] (with set_normalization_used, ...)
        >>> check_images(torch.rand(4, 4) - 5, "x", layout_only=True)
        Traceback (most recent call last):
        ...
        ValueError: x: expected rank 4 (B, C, H, W), got shape (4, 4)
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor{'' if layout_only else ' in [0, 1]'}, got dtype "
                        f"{images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 0 or images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f"{name}: expected C >= 1, H >= 2 and W >= 2, got shape {tuple(images.shape)}")
    if layout_only:
        return
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(
            f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
            " (with set_normalization_used, pass normalized images to the attack's __call__)"
        )


def check_logits(logits: Any, batch_size: Optional[int] = None, name: str = "model output", *,
                 finite: bool = False) -> None:
    """Raise unless ``logits`` are a classifier's floating-point ``(batch_size, K)`` outputs, ``K >= 2``.

    The one logits rule of the three packages: the attacks check every model call with
    ``finite=True`` (a NaN would be counted as a misclassification), the losses and the
    training penalties check the shape (``batch_size`` None: any batch).

    Example:
        >>> check_logits(torch.zeros(4, 10), 4)
        >>> check_logits(torch.zeros(4, 10, 2, 2), 4)
        Traceback (most recent call last):
        ...
        ValueError: model output: expected logits of shape (4, K) with K >= 2 classes, got shape (4, 10, 2, 2)
        >>> check_logits(torch.tensor([[0.0, float("nan")]]), 1, finite=True)
        Traceback (most recent call last):
        ...
        ValueError: model output: expected finite logits of shape (1, K) with K >= 2 classes, got NaN or inf for 1 of 1 examples (check the model, the normalization of its inputs and set_precision)
    """
    rows = "B" if batch_size is None else batch_size
    expected = f"{'finite ' if finite else ''}logits of shape ({rows}, K) with K >= 2 classes"
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected {expected}, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] < 2 or (batch_size is not None and logits.shape[0] != batch_size):
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: expected {expected} (floating point), got dtype {logits.dtype}")
    if finite and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits.detach())).any(dim=1).sum())
        raise ValueError(f"{name}: expected {expected}, got NaN or inf for {bad} of {logits.shape[0]} examples "
                         "(check the model, the normalization of its inputs and set_precision)")


def check_labels(labels: Any, batch_size: int, num_classes: Optional[int] = None, name: str = "labels") -> None:
    """Raise unless ``labels`` are ``batch_size`` class indices (in ``[0, num_classes)`` when given).

    Negative labels (PyTorch's ``ignore_index`` -100 among them) are always refused: an
    ignored example would silently count as attacked or trained.

    Example:
        >>> check_labels(torch.tensor([1, 2]), 2, num_classes=3)
        >>> check_labels(torch.tensor([1, 2]), 3)
        Traceback (most recent call last):
        ...
        ValueError: labels: expected 3 labels (one per image), got shape (2,)
        >>> check_labels(torch.tensor([0, 10]), 2, num_classes=10)
        Traceback (most recent call last):
        ...
        ValueError: labels: expected class indices in [0, 9] (the model has 10 outputs), got values in [0, 10]
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name}: expected an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"{name}: expected {batch_size} labels (one per image), got shape {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {num_classes - 1}] (the model has {num_classes} "
            f"outputs), got values in [{lo}, {hi}]"
        )
    if lo < 0:
        raise ValueError(
            f"{name}: expected non-negative class indices, got {lo} (ignore_index labels such as -100 "
            "are not supported: drop those examples)"
        )


def check_member_budget(budget: Any, budget_norm: str, eps: float, norm: str, name: str,
                        budget_arg: str = "eps") -> None:
    """Raise ``ValueError`` unless a member attack's budget is ``eps`` in ``norm``.

    A suite (or an evaluation) reports its results at ``eps``: a member with a larger budget
    would return larger flows under that label, one with a smaller budget would understate
    the attack. ``budget`` None (an unbounded attack, e.g. StAdv without ``bound``) is refused.

    Example:
        >>> check_member_budget(0.5, "Linf", 0.5, "Linf", "attacks[0]")
        >>> check_member_budget(3.0, "Linf", 0.1, "Linf", "attacks[1]")
        Traceback (most recent call last):
        ...
        ValueError: attacks[1]: expected a budget of Linf eps=0.1 px like the suite, got eps=3.0 (Linf)
    """
    same = (budget is not None and not isinstance(budget, bool) and isinstance(budget, (int, float))
            and math.isclose(float(budget), float(eps), rel_tol=1e-9, abs_tol=1e-12) and budget_norm == norm)
    if not same:
        raise ValueError(f"{name}: expected a budget of {norm} eps={eps:g} px like the suite, got "
                         f"{budget_arg}={budget!r} ({budget_norm})")
