"""Data-parallel training helpers: ``torchrun --nproc_per_node N`` makes ``Trainer.fit`` use DDP.

Convention:
    - A process group is used when one is already initialized, or when the environment of
      ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``)
      is present; the backend is ``nccl`` with CUDA, ``gloo`` otherwise.
    - A loader's ``batch_size`` is **per process**: the global batch is
      ``batch_size * world_size`` (the CLI divides its ``--batch-size`` accordingly).
    - Rank 0 writes checkpoints and logs; every rank reads them when resuming.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "distributed_loader",
    "init_distributed",
    "launched_distributed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under ``torchrun`` with more than one process (or an initialized process group).

    Example:
        >>> import os
        >>> launched_distributed() == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
        True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None) -> DistContext | None:
    """Join (or create, from torchrun's environment) the default process group.

    Returns None when not launched for more than one process.

    Args:
        backend: ``"nccl"``/``"gloo"``; default ``nccl`` when CUDA is available, else ``gloo``.
    """
    if not dist.is_available() or not launched_distributed():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend)
        logger.info("initialized process group: backend=%s rank=%d world_size=%d",
                    backend, dist.get_rank(), dist.get_world_size())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def distributed_loader(loader: DataLoader, ctx: DistContext, seed: int = 0) -> DataLoader:
    """The same loader with a :class:`DistributedSampler` (shuffled iff the original was).

    A loader that already has a ``DistributedSampler`` is returned unchanged. The batch size
    stays per process.
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("train_loader: expected a DataLoader with batch_size (automatic batching) "
                         "for distributed training, got batch_size=None")
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed,
        drop_last=loader.drop_last,
    )
    logger.info("rank %d: DistributedSampler over %d examples (shuffle=%s), %d per process",
                ctx.rank, len(loader.dataset), shuffle, sampler.num_samples)  # type: ignore[arg-type]
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn, persistent_workers=loader.persistent_workers,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op copy without a process group)."""
    out = tensor.clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for all processes (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
