"""Two CPU processes with gloo (DDP) give the same checkpoint as one process with the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fgr_defense import FGR, Trainer, load_checkpoint
from fgr_defense.distributed import all_reduce_sum, launched_distributed

GLOBAL_BATCH = 16
N = 64
EPOCHS = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)  # no batch norm: per-process batches give the same gradients
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 14 * 14, 10))


def make_data() -> TensorDataset:
    from fgr_defense.data import load_mnist5k

    x, y = load_mnist5k(train=True)
    return TensorDataset(x[:N], y[:N])


def train(out: Path, batch_size: int, distributed: bool | None) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, opt, regularizer=FGR(20.0), device="cpu", progress=False, seed=0, out_dir=out,
                      distributed=distributed)
    trainer.fit(DataLoader(make_data(), batch_size=batch_size, shuffle=False), EPOCHS)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    try:
        assert launched_distributed()
        train(Path(out), GLOBAL_BATCH // world, None)
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert all_reduce_sum(torch.ones(())).item() == world
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    train(tmp_path / "single", GLOBAL_BATCH, False)
    ddp = load_checkpoint(tmp_path / "ddp" / "model.pt")
    single = load_checkpoint(tmp_path / "single" / "model.pt")
    assert ddp["trainer"]["world_size"] == 2 and single["trainer"]["world_size"] == 1
    assert ddp["trainer"]["global_step"] == single["trainer"]["global_step"] == EPOCHS * N // GLOBAL_BATCH
    init = make_model().state_dict()
    for key, value in single["state_dict"].items():
        assert not torch.allclose(value, init[key])  # training moved the weights
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # metrics are summed over processes: the logged losses are those of the global batch
    for a, b in zip(ddp["trainer"]["history"], single["trainer"]["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_reg_loss"] == pytest.approx(b["train_reg_loss"], rel=1e-4)
