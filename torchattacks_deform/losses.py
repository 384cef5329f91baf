"""The attack objectives on logits: the Carlini-Wagner margin and the per-example attack loss."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import check_bool, check_choice, check_labels, check_logits, check_number

__all__ = ["LOSSES", "attack_loss", "check_kappa", "dlr_loss", "dlr_targeted_loss", "margin_loss"]

#: The objectives :func:`attack_loss` (and FlowFGSM/FlowPGD's ``loss``) accept.
LOSSES = ("ce", "margin")


def check_kappa(kappa: Any) -> Optional[float]:
    """Return ``kappa`` as a float (or None) if it is a finite number ``>= 0`` or None.

    ``float("inf")`` is refused with a pointer to None, which means "never clamped".

    Example:
        >>> check_kappa(None) is None, check_kappa(2)
        (True, 2.0)
        >>> check_kappa(float("inf"))
        Traceback (most recent call last):
        ...
        ValueError: kappa: expected a finite number >= 0 or None, got inf (kappa=None: the margin is never clamped)
    """
    if isinstance(kappa, float) and math.isinf(kappa) and kappa > 0:
        raise ValueError("kappa: expected a finite number >= 0 or None, got inf "
                         "(kappa=None: the margin is never clamped)")
    value = check_number(kappa, "kappa", minimum=0, allow_none=True)
    return None if value is None else float(value)


def _check_logits_labels(logits: Any, labels: Any, name: str = "labels") -> None:
    check_logits(logits, None, "logits")
    check_labels(labels, logits.shape[0], name=name)


def margin_loss(logits: Tensor, labels: Tensor, targeted: bool = False, kappa: Optional[float] = 0.0) -> Tensor:
    r"""The Carlini-Wagner margin loss (their :math:`f_6`) per example; an attack minimizes it.

    .. math::
        \text{default: } \max(Z_y - \max_{j \ne y} Z_j, -\kappa), \qquad
        \text{targeted: } \max(\max_{j \ne t} Z_j - Z_t, -\kappa)

    It is negative exactly when the attack succeeds (ties aside); ``kappa`` is the confidence
    beyond which success is no longer rewarded (None: never clamped, as in PAT).

    Args:
        logits: ``(B, K)`` logits, ``K >= 2``.
        labels: ``(B,)`` true labels (default) or targets (targeted).
        targeted: which of the two forms.
        kappa: finite confidence ``>= 0``, or None for the unclamped margin.

    Raises:
        ValueError: ``kappa`` negative, NaN or inf (use None), logits not ``(B, K)``.

    Example:
        >>> z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
        >>> margin_loss(z, torch.tensor([0, 1]), kappa=10.0)
        tensor([ 2., -3.])
        >>> margin_loss(z, torch.tensor([0, 1]))
        tensor([2., 0.])
        >>> margin_loss(z, torch.tensor([0, 1]), kappa=None)
        tensor([ 2., -3.])
        >>> margin_loss(z, torch.tensor([2, 2]), targeted=True, kappa=10.0)
        tensor([ 3., -3.])
    """
    kappa = check_kappa(kappa)
    _check_logits_labels(logits, labels)
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    best_other = others.amax(dim=1)
    margin = best_other - picked if targeted else picked - best_other
    if kappa is None or kappa > torch.finfo(margin.dtype).max:  # beyond the dtype: never reached
        return margin
    return margin.clamp_min(-kappa if kappa else 0.0)  # 0.0, not -0.0


def attack_loss(logits: Tensor, labels: Tensor, loss: str = "ce", targeted: bool = False) -> Tensor:
    r"""Per-example objective that a flow attack **ascends**.

    - ``"ce"``: the cross-entropy of the true label (default); minus the cross-entropy of the
      target (targeted).
    - ``"margin"``: the unclamped Carlini-Wagner margin :math:`\max_{j \ne y} Z_j - Z_y`
      (default); :math:`Z_t - \max_{j \ne t} Z_j` (targeted). Positive exactly when the attack
      succeeds (ties aside), and unlike the cross-entropy it does not saturate on confident
      wrong predictions (Carlini & Wagner, 2017; AutoAttack's DLR is a scaled variant).

    Example:
        >>> z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
        >>> attack_loss(z, torch.tensor([0, 1]), "margin")
        tensor([-2.,  3.])
        >>> attack_loss(z, torch.tensor([2, 2]), "margin", targeted=True)
        tensor([-3.,  3.])
        >>> torch.allclose(attack_loss(z, torch.tensor([0, 1])), torch.nn.functional.cross_entropy(
        ...     z, torch.tensor([0, 1]), reduction="none"))
        True
    """
    check_choice(loss, "loss", LOSSES)
    check_bool(targeted, "targeted")
    if loss == "margin":
        return -margin_loss(logits, labels, targeted, kappa=None)
    _check_logits_labels(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none") * (-1.0 if targeted else 1.0)


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    r"""The Difference of Logits Ratio (Croce & Hein, 2020, eq. 6) per example; an attack ascends it.

    .. math::
        \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3} + 10^{-12}}

    with :math:`z_{\pi_1} \ge z_{\pi_2} \ge \dots` the sorted logits: positive exactly when
    the example is misclassified, and unchanged when the logits are shifted or rescaled.

    Raises:
        ValueError: fewer than 3 classes, or logits and labels that do not match.

    Example:
        >>> z = torch.tensor([[4.0, 2.0, 0.0, -1.0], [1.0, 3.0, 2.0, 0.0]])
        >>> dlr_loss(z, torch.tensor([0, 0]))  # -(4 - 2) / (4 - 0), -(1 - 3) / (3 - 1)
        tensor([-0.5000,  1.0000])
        >>> torch.allclose(dlr_loss(10 * z + 3, torch.tensor([0, 0])), dlr_loss(z, torch.tensor([0, 0])))
        True
    """
    _check_logits_labels(logits, labels)
    if logits.shape[1] < 3:
        raise ValueError(f"logits: the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.sort(dim=1, descending=True).values
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    best_other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return -(picked - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    r"""The targeted DLR loss of APGD-T (Croce & Hein, 2020, eq. 7) per example; ascended.

    .. math::
        -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12}}

    Raises:
        ValueError: fewer than 4 classes, or logits, labels and targets that do not match.

    Example:
        >>> z = torch.tensor([[4.0, 2.0, 0.0, -2.0]])
        >>> dlr_targeted_loss(z, torch.tensor([0]), torch.tensor([1]))  # -(4 - 2) / (4 - (0 - 2) / 2)
        tensor([-0.4000])
    """
    _check_logits_labels(logits, labels)
    _check_logits_labels(logits, targets, "targets")
    if logits.shape[1] < 4:
        raise ValueError(f"logits: the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    top = logits.sort(dim=1, descending=True).values
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(picked - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
