"""The training row group: :meth:`~fgr_defense.trainer.Trainer.train_step` of the paper's defenses."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from .common import Row, build_model, make_row, spec_images, trainer_precision
from .config import TRAIN_ROWS, BenchConfig, ModelSpec
from .timing import interleave, peak_memory, ratio_stats

__all__ = ["DEFENSES", "bench_train"]

#: ``build_defense`` keywords of each training row.
DEFENSES: dict[str, dict[str, Any]] = {
    "Standard": {"name": "Standard"}, "IGR": {"name": "IGR"}, "FGR": {"name": "FGR"},
    "FGR+RS": {"name": "FGR+RS"}, "FGR+RS (authors)": {"name": "FGR+RS", "variant": "authors"},
    "AT-PGD": {"name": "AT-PGD"}, "FGR+RS+AT-PGD": {"name": "FGR+RS+AT-PGD"},
}


def bench_train(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> list[Row]:
    """Trainer steps of the paper's defenses as ratios to a Standard step, and their peak memory.

    The trainers get the run's precision as ``Trainer(autocast_dtype=..., channels_last=...)``.
    """
    # torch and the trainer: imported when the benchmark runs, so that --help stays fast
    from fgr_defense.defenses import build_defense
    from fgr_defense.trainer import Trainer

    model = build_model(spec, device, cfg).train()
    x, y = spec_images(spec, spec.train_batch, device, cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    trainers: dict[str, Trainer] = {}
    for row, kw in DEFENSES.items():
        defense = build_defense(model=model, dataset=spec.dataset, **kw)
        trainers[row] = Trainer(model, opt, device=device, progress=False, seed=cfg.seed, distributed=False,
                                **trainer_precision(cfg), **defense.trainer_kwargs())
    torch.manual_seed(cfg.seed)
    times = interleave({n: partial(t.train_step, x, y) for n, t in trainers.items()},
                       spec.repeats, cfg.warmup, device)
    memory = {n: peak_memory(partial(t.train_step, x, y), device) for n, t in trainers.items()}
    rows = []
    for name in TRAIN_ROWS:
        mem, igr, std = memory[name], memory["IGR"], memory["Standard"]
        extra: dict[str, Any] = {"peak_memory_mb": None if mem is None else mem / 2**20}
        if name.startswith("FGR"):
            extra["ratio_to_igr"] = ratio_stats(times[name], times["IGR"])
        if mem is not None and igr:
            extra["memory_to_igr"] = mem / igr
        if name != "Standard" and mem is not None and std:
            extra["memory_to_standard"] = mem / std
        rows.append(make_row("train", spec.arch, name, "Standard step", spec.train_batch, times, name, "Standard",
                             unit="per training step", **extra))
    return rows
