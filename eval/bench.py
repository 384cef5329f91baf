r"""``python -m eval bench``: what the flow attacks and the regularized training steps cost.

Every figure is a **ratio to a reference measured side by side** on the same model, batch
and device, because absolute times on a shared machine are noise. The benchmark runs the
reference and the candidates of a row group in *rounds*: each round calls every function once,
in an order that rotates from round to round and reverses on odd rounds, so slow drift of the
machine's load hits reference and candidate alike. A ratio is computed **per round**
(candidate time / reference time of the same round) and reported as the median over rounds
with its spread (quartiles and min/max).

Rows (``SmallCNN`` on 28x28 MNIST-5k images, ``VGG-11`` and ``ResNet-18`` on 32x32 random
images; the timings do not depend on the pixel values):

- **FlowPGD vs torchattacks.PGD**, per step: both attacks with the same number of steps, whole
  attack divided by the steps (fixed costs included; FlowPGD pays one extra warp at the end).
- **FlowFGSM vs torchattacks.FGSM**.
- **StAdv** on a standard-trained SmallCNN: steps and time to fool 95% of the correctly
  classified images, against a plain Adam loop over ``grid_sample`` with the same loss
  (:func:`plain_stadv`, written here without the library). The steps are found by a probe
  run that records every iterate's prediction; the timed runs use exactly those steps.
- **FlowES**: model queries per successful sample, images classified per second, and the same
  throughput ratio against a plain batched ``warp + forward`` of as many images.
- **Trainer steps** (:class:`~fgr_defense.trainer.Trainer.train_step` with the presets of
  :func:`~fgr_defense.presets.build_defense`): Standard, IGR, FGR, FGR+RS, FGR+RS in the
  authors' variant, AT-PGD (7 steps), FGR+RS+AT-PGD, as ratios to the Standard step (and the
  FGR family to IGR), with the peak memory of one step.

Convention:
    - **Peak memory** is the largest increase of allocated tensor memory during one training
      step over what was allocated when it began. On CUDA: ``torch.cuda.max_memory_allocated``
      after ``reset_peak_memory_stats``. On CPU (``tracemalloc`` does not see torch's
      allocations, and the RSS high-water mark also counts pages glibc keeps from earlier
      steps): the allocation and free records of torch's CPU allocator, collected by
      ``torch.profiler`` with ``profile_memory=True`` (:func:`peak_memory`), replayed in time
      order. Allocations made by oneDNN outside torch's allocator are not counted.
    - Training steps run SGD (momentum 0.9, weight decay 5e-4) with **lr = 0**, so that many
      steps on one fixed batch cannot diverge; the optimizer's arithmetic runs all the same.
    - The regularizers use the presets' default lambdas; the weights do not change the cost.
    - ``results/bench/bench.json`` (format :data:`FORMAT`) and ``bench.md`` are rewritten
      atomically after every row group; a crash keeps the groups already measured
      (``"complete": false``). There is no resume: ratios must come from one run.

Example:
    >>> ratio_stats([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])["median"]
    2.0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .report import md_table

__all__ = [
    "FORMAT",
    "SECTIONS",
    "BenchConfig",
    "ModelSpec",
    "add_arguments",
    "command_line",
    "config_from_args",
    "format_markdown",
    "interleave",
    "peak_memory",
    "plain_stadv",
    "ratio_stats",
    "run_bench",
    "steps_to_rate",
]

logger = logging.getLogger(__name__)

FORMAT = "deform-robust-bench/1"
_ROOT = Path(__file__).resolve().parent.parent  # the repository root
SECTIONS = ("attacks", "stadv", "es", "train")
TRAIN_ROWS = ("Standard", "IGR", "FGR", "FGR+RS", "FGR+RS (authors)", "AT-PGD", "FGR+RS+AT-PGD")
#: Attack success rate the StAdv rows are timed to reach.
STADV_RATE = 0.95


@dataclass(frozen=True)
class ModelSpec:
    """One model of the benchmark and the batch sizes / repetitions used for it.

    Attributes:
        arch: :func:`fgr_defense.models.build_model` name.
        channels, size: input channels and height = width.
        dataset: preset dataset (``build_defense``'s budgets and lambdas; MNIST-5k images).
        attack_batch: images per attack call.
        train_batch: images per training step.
        pgd_steps: steps of the PGD rows.
        repeats: timed rounds.
    """

    arch: str
    channels: int
    size: int
    dataset: str
    attack_batch: int
    train_batch: int
    pgd_steps: int
    repeats: int


#: Settings per device kind; the CPU ones take about 4 minutes on 2 cores (9 rounds per model: medians robust to load).
SPECS: dict[str, dict[str, ModelSpec]] = {
    "cpu": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 64, 64, 10, 9),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 16, 16, 5, 9),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 8, 8, 5, 9),
    },
    "cuda": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 256, 256, 10, 15),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 256, 128, 10, 15),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 256, 128, 10, 15),
    },
    "quick": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 8, 8, 2, 2),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 2, 2, 1, 2),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 2, 2, 1, 2),
    },
}


@dataclass
class BenchConfig:
    """Settings of one benchmark run.

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        quick: tiny batches and steps (smoke test; the numbers mean little).
        models: which of ``smallcnn``, ``vgg11``, ``resnet18``.
        sections: which of :data:`SECTIONS`.
        repeats: timed rounds (default: per model, see :data:`SPECS`).
        warmup: untimed rounds before the timed ones.
        threads: ``torch.set_num_threads`` for the run (None: leave torch's default).
        seed: seed of the data, the models and the random attacks.
        amp: ``"bf16"`` runs the models under ``torch.autocast`` (attacks and training).
        channels_last: channels-last inputs and models.
        stadv_images, stadv_max_steps: StAdv rows' batch and step limit of the probe.
        es_images: FlowES rows' batch (population 20, 25 steps; quick: 8 and 10).
        train_epochs: epochs of the standard SmallCNN the StAdv/ES rows attack.
        out: folder of ``bench.json`` and ``bench.md`` (None: write nothing).
        command: the command line recorded in the outputs.
    """

    device: str = "auto"
    quick: bool = False
    models: tuple[str, ...] = ("smallcnn", "vgg11", "resnet18")
    sections: tuple[str, ...] = SECTIONS
    repeats: Optional[int] = None
    warmup: int = 1
    threads: Optional[int] = None
    seed: int = 0
    amp: Optional[str] = None
    channels_last: bool = False
    stadv_images: int = 64
    stadv_max_steps: int = 200
    es_images: int = 32
    train_epochs: int = 2
    out: Optional[str] = "results/bench"
    command: str = "python -m eval bench"

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in SPECS["cpu"]]
        if unknown or not self.models:
            raise ValueError(f"models: expected a non-empty subset of {sorted(SPECS['cpu'])}, got {list(self.models)}")
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise ValueError(f"sections: expected a non-empty subset of {list(SECTIONS)}, got {list(self.sections)}")
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        for name in ("stadv_images", "stadv_max_steps", "es_images", "train_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected a non-negative int, got {self.warmup!r}")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp: expected None or 'bf16', got {self.amp!r}")

    @classmethod
    def quick_config(cls, **kwargs: Any) -> BenchConfig:
        """The smoke-test configuration: SmallCNN only, tiny batches, two rounds."""
        base: dict[str, Any] = {"quick": True, "models": ("smallcnn",), "stadv_images": 16,
                                "stadv_max_steps": 40, "es_images": 8, "train_epochs": 1, "warmup": 1}
        base.update(kwargs)
        return cls(**base)


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Time several functions side by side: ``repeats`` rounds, each calling every function once.

    The order rotates by one position every round and is reversed on odd rounds, so that a
    function does not always run right after the same other one, and slow drift of the
    machine cancels in the per-round ratios (:func:`ratio_stats`). ``warmup`` untimed rounds
    come first. On CUDA every call is bracketed by ``torch.cuda.synchronize``.

    Returns:
        ``{name: [seconds of round 0, round 1, ...]}``.

    Example:
        >>> times = interleave({"a": lambda: None, "b": lambda: sum(range(100))}, repeats=3)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 3)
    """
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def ratio_stats(candidate: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of the per-round ratios ``candidate[r] / reference[r]``.

    Example:
        >>> s = ratio_stats([2.0, 3.0, 4.0, 9.0], [1.0, 1.0, 1.0, 1.0])
        >>> s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]
        (3.5, 2.75, 5.25, 2.0, 9.0, 4)
    """
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"candidate, reference: expected equally many (>= 1) timings, "
                         f"got {len(candidate)} and {len(reference)}")
    ratios = sorted(c / r for c, r in zip(candidate, reference))
    return {"median": _quantile(ratios, 0.5), "q1": _quantile(ratios, 0.25), "q3": _quantile(ratios, 0.75),
            "min": ratios[0], "max": ratios[-1], "n": len(ratios)}


def _median(values: Sequence[float]) -> float:
    return _quantile(sorted(values), 0.5)


# ---------------------------------------------------------------------------- memory
_MARKER_BYTES = 999_983  # a prime number of bytes: no other allocation has this size


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while the profiler starts and stops.

    Kineto (the profiler's C++ backend) writes ``USDT: profiler_start/stop`` lines and, on
    machines without a GPU, a ``gpuGetDeviceCount failed`` error straight to fd 2 for every
    session: noise for the benchmark's 21 sessions. Python exceptions are unaffected.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_allocator_peak(fn: Callable[[], object]) -> int:
    """Peak of torch's CPU allocator during ``fn()``, from ``torch.profiler``'s memory records.

    Workaround, kept in this one place: PyTorch has no public CPU counterpart of
    ``torch.cuda.max_memory_allocated``. With ``profile_memory=True`` the profiler records
    every allocation (+bytes) and free (-bytes) of the CPU allocator as ``[memory]`` events of
    ``prof.profiler.kineto_results`` (semi-private; what ``torch.autograd.profiler_util``
    itself reads). It omits the frees of blocks allocated before profiling started, so
    ``fn`` runs twice in one session, separated by a marker allocation of a unique size: the
    running sum of the records after the marker is the allocated memory relative to the start
    of the second call, with every free counted; its maximum is the peak increase.
    """
    from torch.profiler import ProfilerActivity, profile

    with _kineto_quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        marker = torch.empty(_MARKER_BYTES, dtype=torch.uint8)
        del marker
        fn()
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        raise RuntimeError("torch.profiler returned no results")
    events = [e for e in results.events() if e.name() == "[memory]"]
    records = [n for _, n in sorted(((e.start_ns(), e.nbytes()) for e in events), key=lambda t: t[0])]
    try:
        start = records.index(-_MARKER_BYTES, records.index(_MARKER_BYTES)) + 1
    except ValueError:
        raise RuntimeError("torch.profiler recorded no CPU allocations") from None
    current = peak = 0
    for nbytes in records[start:]:
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> Optional[int]:
    """Largest increase of allocated tensor memory (bytes) while ``fn()`` runs.

    CUDA: ``max_memory_allocated - memory_allocated`` after ``reset_peak_memory_stats``;
    CPU: torch's CPU allocator records (:func:`_cpu_allocator_peak`, which calls ``fn``
    twice and measures the second call). None when the measurement is unavailable (logged).

    Example:
        >>> peak_memory(lambda: torch.empty(1 << 20, dtype=torch.uint8), "cpu") >= 1 << 20
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    try:
        return _cpu_allocator_peak(fn)
    except (AttributeError, RuntimeError) as err:  # pragma: no cover - depends on the torch build
        logger.warning("peak memory unavailable on %s: %s", device, err)
        return None


# ---------------------------------------------------------------------------- models and data
def _spec(cfg: BenchConfig, device: torch.device, arch: str) -> ModelSpec:
    spec = SPECS["quick" if cfg.quick else ("cuda" if device.type == "cuda" else "cpu")][arch]
    return replace(spec, repeats=cfg.repeats) if cfg.repeats is not None else spec


def _build_model(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> nn.Module:
    from fgr_defense.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(spec.arch, spec.channels, 10, spec.size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _images(spec: ModelSpec, n: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` MNIST-5k test images for 28x28 models, seeded uniform noise for 32x32 ones."""
    if spec.dataset.startswith("mnist"):
        from fgr_defense.data import load_mnist5k

        x, y = load_mnist5k(train=False)
        reps = -(-n // len(y))
        return x.repeat(reps, 1, 1, 1)[:n].to(device), y.repeat(reps)[:n].to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, spec.channels, spec.size, spec.size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


class _Autocast(nn.Module):
    """The model under ``torch.autocast`` (and channels-last inputs), logits in float32.

    Used to give the torchattacks references the same precision as the flow attacks'
    ``set_precision``.
    """

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype], channels_last: bool) -> None:
        super().__init__()
        self.model, self.dtype, self.channels_last = model, dtype, channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


class _Recorder(nn.Module):
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
        return out


def _amp_dtype(cfg: BenchConfig) -> Optional[torch.dtype]:
    return torch.bfloat16 if cfg.amp == "bf16" else None


def _set_precision(attack: Any, cfg: BenchConfig) -> Any:
    if cfg.amp is not None or cfg.channels_last:
        attack.set_precision(_amp_dtype(cfg), channels_last=cfg.channels_last)
    return attack


# ---------------------------------------------------------------------------- rows
Row = dict[str, Any]


def _row(section: str, model: str, name: str, reference: str, batch: int, times: Mapping[str, list[float]],
         cand: str, ref: str, per: float = 1.0, **extra: Any) -> Row:
    return {"section": section, "model": model, "row": name, "reference": reference, "batch": batch,
            "ratio": ratio_stats(times[cand], times[ref]),
            "candidate_ms": 1e3 * _median(times[cand]) / per, "reference_ms": 1e3 * _median(times[ref]) / per,
            **extra}


def bench_attacks(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> list[Row]:
    """FlowPGD vs ``torchattacks.PGD`` (per step) and FlowFGSM vs ``torchattacks.FGSM``."""
    import torchattacks

    from torchattacks_deform import FlowFGSM, FlowPGD

    model = _build_model(spec, device, cfg).eval()
    ref_model: nn.Module = model
    if cfg.amp is not None or cfg.channels_last:
        ref_model = _Autocast(model, _amp_dtype(cfg), cfg.channels_last)
    x, y = _images(spec, spec.attack_batch, device, cfg.seed)
    k = spec.pgd_steps
    attacks: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "PGD": torchattacks.PGD(ref_model, eps=8 / 255, alpha=2 / 255, steps=k, random_start=True),
        "FlowPGD": _set_precision(FlowPGD(model, eps=1.0, alpha=0.25, steps=k, random_start=True), cfg),
        "FGSM": torchattacks.FGSM(ref_model, eps=8 / 255),
        "FlowFGSM": _set_precision(FlowFGSM(model, eps=1.0), cfg),
    }
    torch.manual_seed(cfg.seed)
    times = interleave({n: partial(a, x, y) for n, a in attacks.items()}, spec.repeats, cfg.warmup, device)
    b = spec.attack_batch
    return [
        _row("attacks", spec.arch, "FlowPGD", "torchattacks.PGD", b, times, "FlowPGD", "PGD", per=k,
             steps=k, unit="per step", eps="FlowPGD 1 px Linf; PGD 8/255 Linf"),
        _row("attacks", spec.arch, "FlowFGSM", "torchattacks.FGSM", b, times, "FlowFGSM", "FGSM",
             unit="per attack", eps="FlowFGSM 1 px Linf; FGSM 8/255 Linf"),
    ]


def plain_stadv(
    model: nn.Module, images: Tensor, labels: Tensor, steps: int, lr: float = 0.1, tau: float = 0.005,
    smooth_eps: float = 1e-8,
) -> Tensor:
    """The reference StAdv: a plain Adam loop over ``grid_sample`` with StAdv's default loss.

    Minimizes the margin loss ``max(Z_y - max_{j!=y} Z_j, 0)`` plus ``tau`` times the
    4-neighbour smoothness loss (each pair counted twice, ``smooth_eps`` inside the root) of a
    pixel flow, starting at zero, sampling with ``grid_sample(align_corners=True,
    padding_mode="border")``; keeps, per image, the first successful iterate (else the last).
    Written without the library, as a user would, to measure what the library adds.

    Returns:
        The flow ``(B, H, W, 2)`` in pixels (x, y), detached.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> plain_stadv(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), steps=2).shape
        torch.Size([2, 4, 4, 2])
    """
    b, _, h, w = images.shape
    rows, cols = torch.meshgrid(torch.arange(h, dtype=images.dtype, device=images.device),
                                torch.arange(w, dtype=images.dtype, device=images.device), indexing="ij")
    base = torch.stack([cols, rows], dim=-1)  # (H, W, 2) pixel coordinates (x, y)
    scale = images.new_tensor([2.0 / (w - 1), 2.0 / (h - 1)])
    flow = torch.zeros(b, h, w, 2, dtype=images.dtype, device=images.device, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=lr)
    best = torch.zeros_like(flow)
    done = torch.zeros(b, dtype=torch.bool, device=images.device)
    for step in range(steps + 1):
        last = step == steps
        with torch.set_grad_enabled(not last):
            warped = F.grid_sample(images, (base + flow) * scale - 1, mode="bilinear",
                                   padding_mode="border", align_corners=True)
            logits = model(warped)
            true = logits.gather(1, labels[:, None]).squeeze(1)
            onehot = F.one_hot(labels, num_classes=logits.shape[1]).bool()
            other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
            dx = flow[:, :, 1:] - flow[:, :, :-1]
            dy = flow[:, 1:] - flow[:, :-1]
            smooth = 2 * ((dx.pow(2).sum(-1) + smooth_eps).sqrt().sum((1, 2))
                          + (dy.pow(2).sum(-1) + smooth_eps).sqrt().sum((1, 2)))
            loss = (true - other).clamp_min(0) + tau * smooth
        fooled = (logits.detach().argmax(dim=1) != labels) & ~done
        best = torch.where(fooled[:, None, None, None], flow.detach(), best)
        done = done | fooled
        if last:
            break
        (flow.grad,) = torch.autograd.grad(loss.sum(), flow)
        opt.step()
    return torch.where(done[:, None, None, None], best, flow.detach())


def steps_to_rate(preds: Sequence[Tensor], labels: Tensor, rate: float) -> tuple[Optional[int], list[float]]:
    """Steps after which a best-iterate attack has fooled ``rate`` of the images.

    ``preds[k]`` are the predictions on iterate ``k`` (0 = the start); an image counts as
    fooled after step ``k`` when some iterate ``j <= k`` fooled it (what StAdv returns with
    ``steps=k``).

    Returns:
        ``(k or None, cumulative success rate per step)``.

    Example:
        >>> y = torch.tensor([0, 0])
        >>> steps_to_rate([torch.tensor([0, 0]), torch.tensor([1, 0]), torch.tensor([0, 1])], y, 1.0)
        (2, [0.0, 0.5, 1.0])
    """
    fooled = torch.zeros_like(labels, dtype=torch.bool)
    curve: list[float] = []
    for p in preds:
        fooled = fooled | (p != labels)
        curve.append(float(fooled.float().mean()))
    hit = next((k for k, c in enumerate(curve) if c >= rate), None)
    return hit, curve


def _trained_smallcnn(device: torch.device, cfg: BenchConfig) -> nn.Module:
    """A SmallCNN trained with the Standard defense (Adam, lr 1e-3, batch 128) on MNIST-5k."""
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


def _correct_images(model: nn.Module, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    from fgr_defense.data import load_mnist5k

    x, y = load_mnist5k(train=False)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        ok = model(x).argmax(dim=1) == y
    return x[ok][:n], y[ok][:n]


def bench_stadv(model: nn.Module, device: torch.device, cfg: BenchConfig, repeats: int) -> list[Row]:
    """StAdv vs :func:`plain_stadv`: steps and time to fool :data:`STADV_RATE` of the images."""
    from torchattacks_deform import StAdv

    x, y = _correct_images(model, cfg.stadv_images, device)
    rec = _Recorder(model)
    _set_precision(StAdv(rec, steps=cfg.stadv_max_steps), cfg).get_flow(x, y)
    k_lib, curve_lib = steps_to_rate(rec.preds, y, STADV_RATE)
    ref_model: nn.Module = model
    if cfg.amp is not None or cfg.channels_last:
        ref_model = _Autocast(model, _amp_dtype(cfg), cfg.channels_last)
    rec_ref = _Recorder(ref_model)
    plain_stadv(rec_ref, x, y, cfg.stadv_max_steps)
    k_ref, curve_ref = steps_to_rate(rec_ref.preds, y, STADV_RATE)
    reached = k_lib is not None and k_ref is not None
    s_lib = k_lib if k_lib is not None else cfg.stadv_max_steps
    s_ref = k_ref if k_ref is not None else cfg.stadv_max_steps
    lib = _set_precision(StAdv(model, steps=max(s_lib, 1)), cfg)
    times = interleave({"StAdv": lambda: lib(x, y), "plain": lambda: plain_stadv(ref_model, x, y, max(s_ref, 1))},
                       repeats, cfg.warmup, device)
    adv = lib(x, y)
    with torch.no_grad():
        success = float((model(adv).argmax(dim=1) != y).float().mean())
    note = "" if reached else f"{STADV_RATE:.0%} not reached in {cfg.stadv_max_steps} steps: timed at the limit"
    return [_row("stadv", "smallcnn (trained)", "StAdv", "plain Adam + grid_sample", int(x.shape[0]), times,
                 "StAdv", "plain", unit="time to 95% success", steps_lib=k_lib, steps_ref=k_ref,
                 success_lib=success, final_rate_lib=curve_lib[-1], final_rate_ref=curve_ref[-1],
                 max_steps=cfg.stadv_max_steps, note=note)]


def bench_es(model: nn.Module, device: torch.device, cfg: BenchConfig, repeats: int) -> list[Row]:
    """FlowES: queries per successful sample, images/s, and its throughput vs plain forwards."""
    from torchattacks_deform import FlowES, warp

    x, y = _correct_images(model, cfg.es_images, device)
    steps, population = (10, 8) if cfg.quick else (25, 20)
    rec = _Recorder(model)
    torch.manual_seed(cfg.seed)
    probe = _set_precision(FlowES(rec, eps=1.0, population=population, steps=steps), cfg)
    adv = probe(x, y)
    assert probe.last_queries is not None
    queries = probe.last_queries.cpu()
    with torch.no_grad():
        fooled = (model(adv).argmax(dim=1) != y).cpu()
    total = int(queries.sum())
    forwards = len(rec.batch_sizes)
    es = _set_precision(FlowES(model, eps=1.0, population=population, steps=steps), cfg)
    chunk = int(x.shape[0]) * population
    fwd_model: nn.Module = model
    if cfg.amp is not None or cfg.channels_last:
        fwd_model = _Autocast(model, _amp_dtype(cfg), cfg.channels_last)
    reps = x.repeat(population, 1, 1, 1)
    flows = 0.5 * torch.randn(chunk, 2, x.shape[2], x.shape[3], device=device)

    @torch.no_grad()
    def plain_forwards() -> None:
        left = total
        while left > 0:
            n = min(left, chunk)
            fwd_model(warp(reps[:n], flows[:n]))
            left -= n

    def run_es() -> None:
        torch.manual_seed(cfg.seed)
        es(x, y)

    times = interleave({"FlowES": run_es, "plain": plain_forwards}, repeats, cfg.warmup, device)
    n_ok = int(fooled.sum())
    per_success = float(queries[fooled].float().mean()) if n_ok else None
    es_time = _median(times["FlowES"])
    return [_row("es", "smallcnn (trained)", "FlowES", "batched warp + forward, same images", int(x.shape[0]),
                 times, "FlowES", "plain", unit="time for the same number of model queries",
                 population=population, steps=steps, success=n_ok / len(fooled),
                 queries_per_success=per_success, queries_total=total,
                 queries_total_per_success=(total / n_ok) if n_ok else None,
                 images_per_s=total / es_time, forwards=forwards, max_forward_batch=max(rec.batch_sizes))]


def bench_train(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> list[Row]:
    """Trainer steps of the paper's defenses as ratios to a Standard step, and their peak memory."""
    from fgr_defense.presets import build_defense
    from fgr_defense.trainer import Trainer

    model = _build_model(spec, device, cfg).train()
    x, y = _images(spec, spec.train_batch, device, cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    builds: dict[str, dict[str, Any]] = {
        "Standard": {"name": "Standard"}, "IGR": {"name": "IGR"}, "FGR": {"name": "FGR"},
        "FGR+RS": {"name": "FGR+RS"}, "FGR+RS (authors)": {"name": "FGR+RS", "variant": "authors"},
        "AT-PGD": {"name": "AT-PGD"}, "FGR+RS+AT-PGD": {"name": "FGR+RS+AT-PGD"},
    }
    trainers: dict[str, Trainer] = {}
    for row, kw in builds.items():
        defense = build_defense(model=model, dataset=spec.dataset, **kw)
        trainers[row] = Trainer(model, opt, device=device, progress=False, seed=cfg.seed, distributed=False,
                                **_trainer_precision(cfg), **defense.trainer_kwargs())
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
        rows.append(_row("train", spec.arch, name, "Standard step", spec.train_batch, times, name, "Standard",
                         unit="per training step", **extra))
    return rows


def _trainer_precision(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.amp is None and not cfg.channels_last:
        return {}
    return {"amp": cfg.amp, "channels_last": cfg.channels_last}


# ---------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A performance target of issue 6: ``value(row) <= limit``."""

    name: str
    section: str
    row: str
    limit: float
    model: Optional[str] = None
    key: str = "ratio"  # "ratio", "ratio_to_igr" or "memory_to_igr"


TARGETS = (
    Target("FlowPGD / PGD per step, SmallCNN", "attacks", "FlowPGD", 1.5, "smallcnn"),
    Target("FlowPGD / PGD per step, VGG-11", "attacks", "FlowPGD", 1.15, "vgg11"),
    Target("FlowPGD / PGD per step, ResNet-18", "attacks", "FlowPGD", 1.15, "resnet18"),
    Target("FGR (sigma = 0) / IGR", "train", "FGR", 1.10, key="ratio_to_igr"),
    Target("FGR+RS / IGR", "train", "FGR+RS", 1.45, key="ratio_to_igr"),
    Target("FGR+RS (authors) / IGR", "train", "FGR+RS (authors)", 1.10, key="ratio_to_igr"),
    Target("IGR / Standard", "train", "IGR", 3.0),
    Target("peak memory FGR+RS / IGR", "train", "FGR+RS", 1.3, key="memory_to_igr"),
)


def evaluate_targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each target checked against every matching row: ``{"target", "model", "value", "limit", "met"}``."""
    out = []
    for t in TARGETS:
        for r in rows:
            if r["section"] != t.section or r["row"] != t.row or (t.model and r["model"] != t.model):
                continue
            raw = r.get(t.key)
            value = raw.get("median") if isinstance(raw, dict) else raw
            out.append({"target": t.name, "model": r["model"], "limit": t.limit,
                        "value": value, "met": None if value is None else bool(value <= t.limit)})
    return out


# ---------------------------------------------------------------------------- environment
def _load() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers were taken: CPU/GPU, core count, threads, library versions."""
    import torchattacks

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "torchattacks": getattr(torchattacks, "__version__", "?"), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- driver
def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; write ``bench.json`` and ``bench.md`` to ``cfg.out`` after each group.

    Returns:
        The results dict (see :data:`FORMAT` and the module docstring).
    """
    from tqdm.auto import tqdm

    from .demo import code_fingerprint, git_revision
    from .runner import resolve_device

    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.amp is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp: bf16 is not supported on {torch.cuda.get_device_name(device)}")
    results: dict[str, Any] = {
        "format": FORMAT, "command": cfg.command,
        "git_revision": git_revision(_ROOT, exclude=cfg.out), "code_fingerprint": code_fingerprint(_ROOT),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(device),
        "load_before": _load(), "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "rows": [], "targets": [], "complete": False,
    }
    start = time.perf_counter()
    jobs: list[tuple[str, Callable[[], list[Row]]]] = []
    for arch in cfg.models:
        spec = _spec(cfg, device, arch)
        if "attacks" in cfg.sections:
            jobs.append((f"attacks/{arch}", partial(bench_attacks, spec, device, cfg)))
    if "smallcnn" in cfg.models and ("stadv" in cfg.sections or "es" in cfg.sections):
        holder: dict[str, nn.Module] = {}
        spec = _spec(cfg, device, "smallcnn")
        reps = spec.repeats if (cfg.quick or cfg.repeats is not None) else max(3, spec.repeats // 2)

        def trained() -> nn.Module:
            if "model" not in holder:
                holder["model"] = _trained_smallcnn(device, cfg)
            return holder["model"]

        if "stadv" in cfg.sections:
            jobs.append(("stadv/smallcnn", lambda: bench_stadv(trained(), device, cfg, reps)))
        if "es" in cfg.sections:
            jobs.append(("es/smallcnn", lambda: bench_es(trained(), device, cfg, reps)))
    for arch in cfg.models:
        spec = _spec(cfg, device, arch)
        if "train" in cfg.sections:
            jobs.append((f"train/{arch}", partial(bench_train, spec, device, cfg)))
    for name, job in tqdm(jobs, desc="bench", unit="group", disable=cfg.quick, dynamic_ncols=True):
        tick = time.perf_counter()
        rows = job()
        logger.info("bench %s: %.1f s", name, time.perf_counter() - tick)
        for r in rows:
            logger.info("  %-18s %-22s x%.3f", r["model"], r["row"], r["ratio"]["median"])
        results["rows"].extend(rows)
        results["targets"] = evaluate_targets(results["rows"])
        results["duration_s"] = time.perf_counter() - start
        _write(results, cfg.out)
    results["load_after"] = _load()
    results["complete"] = True
    results["duration_s"] = time.perf_counter() - start
    _write(results, cfg.out)
    return results


def _write(results: dict[str, Any], out: Optional[str]) -> None:
    if out is None:
        return
    from .runner import atomic_write_text

    atomic_write_text(Path(out) / "bench.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(Path(out) / "bench.md", format_markdown(results))


# ---------------------------------------------------------------------------- markdown
def _fmt_ratio(stats: Optional[Mapping[str, float]]) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.2f}x [{stats['q1']:.2f}-{stats['q3']:.2f}]"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _md_lines(header: Sequence[str], rows: Iterator[Sequence[str]]) -> list[str]:
    return [md_table(header, rows), ""]


def format_markdown(results: Mapping[str, Any]) -> str:
    """``bench.md``: targets met/missed, then one table per section, with command and machine.

    Ratios are ``median [first quartile - third quartile]`` over the timed rounds.
    """
    m = results["machine"]
    rev = results.get("git_revision") or "unknown"
    lines = [
        "# Benchmark: cost of the flow attacks and the regularized training steps", "",
        f"- command: `{results['command']}`",
        f"- git revision: `{rev}` (a `+dirty` suffix would mean uncommitted changes), code fingerprint "
        f"`{results.get('code_fingerprint')}` (`eval.demo.code_fingerprint`)",
        f"- machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
        f"device `{m['device']}`" + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"- load average (1/5/15 min) before: {results.get('load_before')}, after: {results.get('load_after')}",
        f"- started {results['started']}, took {results.get('duration_s', 0):.0f} s"
        + ("" if results.get("complete") else " (**incomplete**)"),
        "",
        "Every ratio is candidate time / reference time measured in the same round, rounds interleaved; "
        "`median [quartiles]` over the rounds. Rerun: `python -m eval bench` (`--help` for options).", "",
    ]
    targets = results.get("targets", [])
    if targets:
        lines += ["## Targets", ""]
        lines += _md_lines(["target", "model", "value", "limit", "status"], (
            (t["target"], t["model"], _fmt(t["value"], ".3f") + "x", f"<= {t['limit']:.2f}x",
             "-" if t["met"] is None else ("met" if t["met"] else "**missed**")) for t in targets))
    rows = results.get("rows", [])
    by = {s: [r for r in rows if r["section"] == s] for s in SECTIONS}
    if by["attacks"]:
        lines += ["## Attacks (per step for PGD, per attack for FGSM)", ""]
        lines += _md_lines(["model", "batch", "candidate", "reference", "ratio", "min-max", "candidate ms", "reference ms"], (
            (r["model"], str(r["batch"]), r["row"], r["reference"], _fmt_ratio(r["ratio"]),
             f"{r['ratio']['min']:.2f}-{r['ratio']['max']:.2f}", _fmt(r["candidate_ms"]), _fmt(r["reference_ms"]))
            for r in by["attacks"]))
    if by["stadv"]:
        lines += [f"## StAdv: time to fool {STADV_RATE:.0%} of correctly classified images", ""]
        lines += _md_lines(["model", "images", "steps (StAdv)", "steps (plain)", "time ratio", "StAdv ms", "plain ms", "note"], (
            (r["model"], str(r["batch"]), _fmt(r["steps_lib"], "d"), _fmt(r["steps_ref"], "d"), _fmt_ratio(r["ratio"]),
             _fmt(r["candidate_ms"]), _fmt(r["reference_ms"]), r.get("note") or "") for r in by["stadv"]))
    if by["es"]:
        lines += ["## FlowES (batched populations)", ""]
        lines += _md_lines(["model", "images", "population", "success", "queries / success", "images/s",
                         "forwards", "time vs plain forwards"], (
            (r["model"], str(r["batch"]), str(r["population"]), f"{100 * r['success']:.0f}%",
             _fmt(r["queries_per_success"]), f"{r['images_per_s']:.0f}", str(r["forwards"]), _fmt_ratio(r["ratio"]))
            for r in by["es"]))
    if by["train"]:
        lines += ["## Training steps (Trainer.train_step)", ""]
        lines += _md_lines(["model", "batch", "defense", "time / Standard", "time / IGR", "ms", "peak MB", "memory / IGR"], (
            (r["model"], str(r["batch"]), r["row"], _fmt_ratio(r["ratio"]), _fmt_ratio(r.get("ratio_to_igr")),
             _fmt(r["candidate_ms"]), _fmt(r.get("peak_memory_mb")), _fmt(r.get("memory_to_igr"), ".2f"))
            for r in by["train"]))
        lines += ["Peak memory: " + ("`torch.cuda.max_memory_allocated`" if "cuda" in m["device"] else
                  "torch's CPU allocator records via `torch.profiler(profile_memory=True)`")
                  + ", increase over the memory allocated when the step began.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m eval bench`` and ``benchmarks/run.py``."""
    p.add_argument("--out", default="results/bench", help="folder of bench.json and bench.md")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings (SmallCNN only)")
    p.add_argument("--models", default=None, help="comma-separated subset of smallcnn,vgg11,resnet18")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per model and device)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--amp", choices=["bf16"], default=None, help="run the models under bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels-last models and inputs")
    p.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace, command: str) -> BenchConfig:
    """A :class:`BenchConfig` from parsed :func:`add_arguments` options."""
    kwargs: dict[str, Any] = {"device": args.device, "repeats": args.repeats, "threads": args.threads,
                              "amp": args.amp, "channels_last": args.channels_last, "seed": args.seed,
                              "out": args.out, "command": command}
    if args.models:
        kwargs["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.sections:
        kwargs["sections"] = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    return BenchConfig.quick_config(**kwargs) if args.quick else BenchConfig(**kwargs)


def command_line(prefix: Sequence[str], argv: Optional[Sequence[str]] = None) -> str:
    """``prefix`` followed by the arguments, shell-quoted: the command recorded in the outputs.

    Example:
        >>> command_line(["python", "-m", "eval", "bench"], ["--threads", "1"])
        'python -m eval bench --threads 1'
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [*prefix, *args])
