"""The one evaluation step: one attack on one batch of clean-correct examples.

:func:`attack_batch` is what :func:`~torchattacks_deform.evaluate_robustness` (per attack and
batch), :class:`~torchattacks_deform.FlowAutoAttack` (per member, on the examples still robust)
and the harness's grid runner (:mod:`deform_robust.runner`, per attack cell and batch) all run:
the adversarial images (and the flow, for a flow attack), which examples the model now gets
wrong, the attack's own query count and the time. AutoAttack's ``run_standard_evaluation``
plays this part there.

Convention:
    An attack with ``get_flow`` and ``apply_flow`` (every :class:`~torchattacks_deform.FlowAttack`)
    is a flow attack: ``displacement`` is its flow ``(b, 2, H, W)`` in pixels, and ``queries``
    the growth of its ``query_count`` (the images its model calls classified). Any other
    torchattacks-style attack (``attack(images, labels) -> images``) is a pixel-space attack:
    ``displacement`` is ``adversarial - images`` and ``queries`` is None. ``fooled`` is decided
    by ``classify(adversarial)`` (the model's logits, checked finite), not counted as a query.
    ``seed`` (optional) seeds the global generators for the attack's call only, on the CPU and
    the images' CUDA device; the caller's random state is left as it was.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from .validation import check_logits

__all__ = ["BatchOutcome", "attack_batch", "is_flow_attack", "seeded"]


@dataclass
class BatchOutcome:
    """What :func:`attack_batch` returns (tensors on the images' device).

    Attributes:
        adversarial: ``(b, C, H, W)`` adversarial images.
        flow: the flow ``(b, 2, H, W)`` in pixels of a flow attack, None for a pixel-space attack.
        displacement: ``flow`` (flow attacks) or ``adversarial - images`` (pixel-space attacks).
        fooled: ``(b,)`` bool: the model's prediction on ``adversarial`` is not the label.
        queries: images the attack's model calls classified (flow attacks), else None.
        time_s: seconds of the attack and the check.
    """

    adversarial: Tensor
    flow: Optional[Tensor]
    displacement: Tensor
    fooled: Tensor
    queries: Optional[int]
    time_s: float


def is_flow_attack(attack: Any) -> bool:
    """True for an attack that finds flows (``get_flow`` and ``apply_flow``), such as every FlowAttack."""
    return hasattr(attack, "get_flow") and hasattr(attack, "apply_flow")


def attack_batch(classify: Callable[[Tensor], Tensor], attack: Any, images: Tensor, labels: Tensor,
                 seed: Optional[int] = None) -> BatchOutcome:
    """Run ``attack`` on ``images`` (the examples to attack) and check the result with ``classify``.

    Args:
        classify: the model's forward (or an attack's ``get_logits``): images -> logits.
        attack: a flow attack or a pixel-space torchattacks-style attack.
        images: ``(b, C, H, W)`` images in ``[0, 1]``.
        labels: ``(b,)`` labels.
        seed: seed of the attack's randomness for this call (None: the global generators).

    Returns:
        :class:`BatchOutcome`.

    Raises:
        ValueError: a pixel-space attack returned something else than images of the input's
            shape, or ``classify`` returned logits that are not finite ``(b, K)``.

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowPGD
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
        >>> out = attack_batch(model, FlowPGD(model, eps=1.0, steps=3), x, y, seed=0)
        >>> out.flow.shape, out.fooled.dtype, out.queries > 0, float(out.flow.abs().max()) <= 1.0
        (torch.Size([4, 2, 4, 4]), torch.bool, True, True)
    """
    start = time.perf_counter()
    flow: Optional[Tensor] = None
    queries: Optional[int] = None
    with seeded(seed, images.device):
        if is_flow_attack(attack):
            before = int(getattr(attack, "query_count", 0))
            flow = displacement = attack.get_flow(images, labels).to(images.dtype)
            adversarial = attack.apply_flow(images, flow)
            queries = int(getattr(attack, "query_count", 0)) - before
        else:
            adversarial = attack(images, labels)
            if not isinstance(adversarial, Tensor) or adversarial.shape != images.shape:
                got = tuple(adversarial.shape) if isinstance(adversarial, Tensor) else type(adversarial).__name__
                raise ValueError(f"attack: expected adversarial images of shape {tuple(images.shape)}, got {got}")
            adversarial = adversarial.detach().to(images.device, images.dtype)
            displacement = adversarial - images
    with torch.no_grad():
        logits = classify(adversarial)
    check_logits(logits, images.shape[0], finite=True)
    fooled = logits.argmax(dim=1) != labels
    return BatchOutcome(adversarial, flow, displacement, fooled, queries, time.perf_counter() - start)


@contextlib.contextmanager
def seeded(seed: Optional[int], device: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s, on CUDA) with ``seed``; restore them on exit.

    The one seeding rule of the evaluations. None: no seeding, the caller's generators are used
    and advanced as usual.

    Example:
        >>> with seeded(0, torch.device("cpu")):
        ...     a = torch.rand(1)
        >>> with seeded(0, torch.device("cpu")):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    if seed is None:
        yield
        return
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.random.default_generator.manual_seed(seed)
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
