r"""FlowAPGDT: targeted Auto-PGD on the flow with the targeted DLR loss (AutoAttack's APGD-T)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from .apgd import FlowAPGD
from .losses import dlr_targeted_loss
from .validation import check_number

__all__ = ["FlowAPGDT"]


class FlowAPGDT(FlowAPGD):
    r"""APGD-T on the flow: :class:`FlowAPGD` toward each of the most likely wrong classes in turn.

    For ``k = 1, ..., n_target_classes``, the examples not yet misclassified are attacked by
    one :class:`FlowAPGD` run per restart that ascends the targeted DLR loss
    :math:`-(z_y - z_t) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2)`
    (:func:`~torchattacks_deform.losses.dlr_targeted_loss`) toward :math:`t`, the class with
    the :math:`(k+1)`-th largest clean logit. As in AutoAttack, the attack succeeds when the
    example is misclassified (as any class), and it is untargeted to the user: torchattacks'
    targeted modes are not supported.

    Convention:
        As :class:`FlowAPGD`: ``eps`` in **pixels**; ``"Linf"`` or ``"L2"`` on the whole flow.

    Attributes:
        last_queries: ``(B,)`` int64: images classified per example in the last call (one
            clean forward to rank the classes, then one per iterate while still robust).

    Args:
        model: classifier returning logits (4 classes or more for the targeted loss).
        eps: flow budget in pixels. Default: 1.0.
        norm: ``"Linf"`` (default) or ``"L2"``.
        steps: iterations per run. Default: 100.
        n_target_classes: how many of the most likely wrong classes to target (at most
            ``K - 1``). Default: 9 (AutoAttack's).
        restarts: runs per target class. Default: 1.
        rho: as :class:`FlowAPGD`. Default: 0.75.
        seed: seed of the random starts (None: the global RNG). Default: 0.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Raises:
        ValueError: as :class:`FlowAPGD`, ``n_target_classes < 1``.

    Warns:
        UserWarning: a model with fewer than 4 classes, which the targeted DLR loss needs: the
            attack then runs as an untargeted :class:`FlowAPGD` (DLR with 3 classes, CE with 2).

    Example:
        >>> from torchattacks_deform import FlowAPGDT
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
        >>> images, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
        >>> atk = FlowAPGDT(model, eps=1.0, steps=4, n_target_classes=2)
        >>> bool(atk.get_flow(images, labels).abs().max() <= 1.0), atk.last_queries.max().item() <= 1 + 2 * 5
        (True, True)
        >>> FlowAPGDT.cost({"steps": 100, "n_target_classes": 9})
        900.0
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        norm: str = "Linf",
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        seed: Optional[int] = 0,
        padding_mode: str = "border",
    ) -> None:
        check_number(n_target_classes, "n_target_classes", integer=True, minimum=1)
        super().__init__(model, eps=eps, norm=norm, steps=steps, loss="dlr", restarts=restarts, rho=rho,
                         seed=seed, padding_mode=padding_mode)
        self.attack = "FlowAPGDT"
        self.n_target_classes = n_target_classes

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``n_target_classes * restarts * steps`` forward+backward passes per example."""
        return float(cls._param(params, "n_target_classes")) * float(cls._param(params, "restarts")) * \
            float(cls._param(params, "steps"))

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b = images.shape[0]
        queries = torch.ones(b, dtype=torch.long, device=images.device)  # the clean forward
        with torch.no_grad():
            clean = self.get_logits(images)
        k = clean.shape[1]
        if k < 4:  # the targeted DLR loss needs 4 logits: AutoAttack's APGD-T does not apply
            loss = "dlr" if k == 3 else "ce"
            warnings.warn(f"FlowAPGDT: the model has {k} classes and the targeted DLR loss needs at least 4; "
                          f"running untargeted FlowAPGD with the {loss.upper()} loss instead", stacklevel=2)
            found, _ = self._attack(images, labels, lambda sub: self._objective(labels[sub], loss), self.restarts,
                                    queries)
            self.last_queries = queries
            return found
        order = clean.argsort(dim=1, descending=True)
        flow = images.new_zeros(b, 2, *images.shape[2:])
        done = clean.argmax(dim=1) != labels
        for rank in range(1, min(self.n_target_classes, k - 1) + 1):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            targets = order[:, rank]

            def objective_for(sub: Tensor, idx: Tensor = idx, targets: Tensor = targets
                              ) -> Callable[[Tensor, Tensor], Tensor]:
                y, t = labels[idx][sub], targets[idx][sub]
                return lambda logits, j: dlr_targeted_loss(logits, y[j], t[j])

            sub_queries = torch.zeros(idx.numel(), dtype=torch.long, device=images.device)
            found, fooled = self._attack(images[idx], labels[idx], objective_for, self.restarts, sub_queries)
            queries[idx] += sub_queries
            better = fooled | (rank == 1)
            flow[idx] = torch.where(better.reshape(-1, 1, 1, 1), found, flow[idx])
            done[idx] = fooled
        self.last_queries = queries
        return flow
