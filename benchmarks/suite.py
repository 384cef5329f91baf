"""The suite row group: :class:`~torchattacks_deform.FlowAutoAttack` vs the sum of its parts.

The suite runs its member attacks as a cascade, each on the examples still classified
correctly; run separately, every member attacks all the examples. So the suite must cost no
more than its parts (up to one clean check and one verifying forward per member), and find the
same worst case up to the randomness of the random starts. :func:`bench_suite` measures both
on the standard-trained SmallCNN and its correctly classified MNIST-5k test images:

- the members are **the suite's own attack objects** (``suite.attacks``, named ``suite.names``),
  each called on its own on all the images: same settings, nothing re-derived;
- every call runs on a :class:`~benchmarks.common.Counter` around the model, which counts the
  forward calls and the images they classified;
- one untimed probe round (it doubles as the first warm-up round) records the counts and the
  robust accuracy: of the suite, of each member, and the per-example worst case of the members;
- the timed rounds interleave the suite and the members (:func:`~benchmarks.timing.interleave`),
  each call seeded alike; the ratio of a round is suite time / sum of the members' times.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .common import Counter, Row, correct_images, make_row, precision_model, set_precision
from .config import BenchConfig
from .timing import interleave, median

__all__ = ["bench_suite"]

_SUITE = "suite"


def _member_key(name: str) -> str:
    return f"member:{name}"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise logger ``name`` to WARNING (the suite logs every member of every call at INFO)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def bench_suite(model: nn.Module, device: torch.device, cfg: BenchConfig, repeats: int) -> list[Row]:
    """FlowAutoAttack (``cfg.suite_version``, ``cfg.suite_eps``) vs the sum of its members run separately.

    Returns:
        One row (section ``"suite"``): ``ratio`` (suite / sum of the parts, per round),
        ``member_ms``, the counted forwards (``forwards_*``: calls, ``forward_images_*``:
        images classified) of the suite and of the parts, ``robust_acc_suite``,
        ``robust_acc_parts`` (per-example worst case over the members), ``robust_acc_members``,
        ``robust_disagree`` (images on which the two worst cases differ) and ``cascade``
        (the suite's per-member ``attacked``/``fooled`` counts of the probe round).
    """
    # torch and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowAutoAttack

    x, y = correct_images(model, cfg.suite_images, device)
    counter = Counter(model)
    suite = set_precision(FlowAutoAttack(counter, eps=cfg.suite_eps, version=cfg.suite_version), cfg)
    members = dict(zip(suite.names, suite.attacks))  # the suite's own members, on the same counted model
    judge = precision_model(model, cfg)  # classifies as the attacks' get_logits do

    def still_correct(adv: Tensor) -> Tensor:
        with torch.no_grad():
            return judge(adv).argmax(dim=1) == y  # type: ignore[no-any-return]

    def seeded(attack: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            torch.manual_seed(cfg.seed)
            return attack(x, y)
        return call

    fns = {_SUITE: seeded(suite)}
    fns.update({_member_key(name): seeded(atk) for name, atk in members.items()})
    counter.reset()
    counts, robust = {}, {}
    with _quiet(type(suite).__module__):
        for key, fn in fns.items():  # the probe round: counts and robust accuracy
            robust[key] = still_correct(fn())
            counts[key] = counter.reset()
        cascade = [{k: e[k] for k in ("name", "attacked", "fooled", "queries")} for e in suite.last_report]
        times = interleave(fns, repeats, max(cfg.warmup - 1, 0), device)
    keys = [_member_key(name) for name in members]
    parts = [sum(times[k][r] for k in keys) for r in range(repeats)]
    worst = torch.stack([robust[k] for k in keys]).all(dim=0)

    def acc(mask: Tensor) -> float:
        return float(mask.float().mean())

    return [make_row(
        "suite", "smallcnn (trained)", "FlowAutoAttack", "sum of its members, each on all images", int(x.shape[0]),
        {"suite": times[_SUITE], "parts": parts}, "suite", "parts", unit="whole attack",
        version=cfg.suite_version, eps=cfg.suite_eps, norm=suite.norm, members=list(members),
        member_ms={name: 1e3 * median(times[_member_key(name)]) for name in members},
        forwards_suite=counts[_SUITE]["calls"], forwards_parts=sum(counts[k]["calls"] for k in keys),
        forward_images_suite=counts[_SUITE]["images"], forward_images_parts=sum(counts[k]["images"] for k in keys),
        forward_images_members={name: counts[_member_key(name)]["images"] for name in members},
        robust_acc_suite=acc(robust[_SUITE]), robust_acc_parts=acc(worst),
        robust_acc_members={name: acc(robust[_member_key(name)]) for name in members},
        robust_disagree=int((robust[_SUITE] != worst).sum()), cascade=cascade,
    )]
