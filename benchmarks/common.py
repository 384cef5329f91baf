"""What the row groups share: models, images, precision wrappers, forward counters, rows.

Example:
    >>> import torch
    >>> counter = Counter(torch.nn.Flatten())
    >>> _ = counter(torch.zeros(3, 2)), counter(torch.zeros(5, 2))
    >>> counter.calls, counter.images
    (2, 8)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from .config import BenchConfig, ModelSpec
from .timing import median, ratio_stats

__all__ = [
    "Autocast",
    "Counter",
    "Recorder",
    "Row",
    "autocast_dtype",
    "build_model",
    "correct_images",
    "make_row",
    "precision_model",
    "set_precision",
    "spec_images",
    "trained_smallcnn",
    "trainer_precision",
]

logger = logging.getLogger(__name__)

#: One result row of ``bench.json``.
Row = dict[str, Any]


# ---------------------------------------------------------------------------- precision
def autocast_dtype(cfg: BenchConfig) -> Optional[torch.dtype]:
    """``cfg.autocast_dtype`` as a torch dtype: ``"bf16"`` -> ``torch.bfloat16``, None -> None."""
    return torch.bfloat16 if cfg.autocast_dtype == "bf16" else None


def _reduced(cfg: BenchConfig) -> bool:
    return cfg.autocast_dtype is not None or cfg.channels_last


def set_precision(attack: Any, cfg: BenchConfig) -> Any:
    """``attack.set_precision(autocast_dtype, channels_last=...)`` when the run asks for it; returns ``attack``."""
    if _reduced(cfg):
        attack.set_precision(autocast_dtype(cfg), channels_last=cfg.channels_last)
    return attack


def trainer_precision(cfg: BenchConfig) -> dict[str, Any]:
    """The :class:`~fgr_defense.trainer.Trainer` keywords of the run's precision (empty: float32)."""
    if not _reduced(cfg):
        return {}
    return {"autocast_dtype": autocast_dtype(cfg), "channels_last": cfg.channels_last}


class Autocast(nn.Module):
    """The model under ``torch.autocast`` (and channels-last inputs), logits in float32.

    Gives the references (torchattacks, the plain loops, the accuracy checks) the same
    precision as the flow attacks' ``set_precision``.
    """

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype], channels_last: bool) -> None:
        super().__init__()
        self.model, self.dtype, self.channels_last = model, dtype, channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x)  # type: ignore[no-any-return]
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()  # type: ignore[no-any-return]


def precision_model(model: nn.Module, cfg: BenchConfig) -> nn.Module:
    """``model`` wrapped in :class:`Autocast` when the run uses reduced precision, else ``model``."""
    return Autocast(model, autocast_dtype(cfg), cfg.channels_last) if _reduced(cfg) else model


# ---------------------------------------------------------------------------- instrumented models
class Recorder(nn.Module):
    """Counts forward calls and batch sizes and keeps every call's predictions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.preds: list[Tensor] = []
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        self.preds.append(out.detach().argmax(dim=1))
        self.batch_sizes.append(int(x.shape[0]))
        return out  # type: ignore[no-any-return]


class Counter(nn.Module):
    """Counts forward calls (``calls``) and the images they classified (``images``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += int(x.shape[0])
        return self.model(x)  # type: ignore[no-any-return]

    def reset(self) -> dict[str, int]:
        """The counts so far (``{"calls", "images"}``); both start again from 0."""
        counts = {"calls": self.calls, "images": self.images}
        self.calls = self.images = 0
        return counts


# ---------------------------------------------------------------------------- models and data
def build_model(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> nn.Module:
    """A freshly initialized ``spec.arch`` (seeded by ``cfg.seed``) on ``device``."""
    # torch and the models: imported when the benchmark runs, so that --help stays fast
    from fgr_defense.models import build_model as build

    torch.manual_seed(cfg.seed)
    model = build(spec.arch, spec.channels, 10, spec.size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def spec_images(spec: ModelSpec, n: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` MNIST-5k test images for 28x28 models, seeded uniform noise for 32x32 ones."""
    if spec.dataset.startswith("mnist"):
        # torch and the models: imported when the benchmark runs, so that --help stays fast
        from fgr_defense.data import load_mnist5k

        x, y = load_mnist5k(train=False)
        reps = -(-n // len(y))
        return x.repeat(reps, 1, 1, 1)[:n].to(device), y.repeat(reps)[:n].to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, spec.channels, spec.size, spec.size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


def trained_smallcnn(device: torch.device, cfg: BenchConfig) -> nn.Module:
    """A SmallCNN trained with the Standard defense (Adam, lr 1e-3, batch 128) on MNIST-5k."""
    # torch and the models: imported when the benchmark runs, so that --help stays fast
    from fgr_defense.data import load_mnist5k
    from fgr_defense.models import SmallCNN
    from fgr_defense.trainer import Trainer

    x, y = load_mnist5k(train=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True)
    torch.manual_seed(cfg.seed)
    model = SmallCNN()
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-3), device=device, progress=False,
                      seed=cfg.seed, distributed=False)
    history = trainer.fit(loader, cfg.train_epochs)
    logger.info("bench: standard SmallCNN trained for %d epoch(s), train acc %.3f", cfg.train_epochs,
                history[-1]["train_acc"])
    model = model.to(device).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def correct_images(model: nn.Module, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST-5k test images ``model`` classifies correctly, and their labels."""
    # torch and the models: imported when the benchmark runs, so that --help stays fast
    from fgr_defense.data import load_mnist5k

    x, y = load_mnist5k(train=False)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        ok = model(x).argmax(dim=1) == y
    return x[ok][:n], y[ok][:n]


# ---------------------------------------------------------------------------- rows
def make_row(section: str, model: str, name: str, reference: str, batch: int, times: Mapping[str, list[float]],
             cand: str, ref: str, per: float = 1.0, **extra: Any) -> Row:
    """A row: per-round ratio of ``times[cand]`` to ``times[ref]`` and both median times (ms, divided by ``per``)."""
    return {"section": section, "model": model, "row": name, "reference": reference, "batch": batch,
            "ratio": ratio_stats(times[cand], times[ref]),
            "candidate_ms": 1e3 * median(times[cand]) / per, "reference_ms": 1e3 * median(times[ref]) / per,
            **extra}
