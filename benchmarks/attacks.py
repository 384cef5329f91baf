"""Attack row groups: FlowPGD/FlowFGSM vs torchattacks, StAdv vs a plain loop, FlowES throughput.

Example:
    >>> import torch
    >>> y = torch.tensor([0, 0])
    >>> steps_to_rate([torch.tensor([0, 0]), torch.tensor([1, 0])], y, 0.5)
    (1, [0.0, 0.5])
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import (
    Recorder,
    Row,
    build_model,
    correct_images,
    make_row,
    precision_model,
    set_precision,
    spec_images,
)
from .config import STADV_RATE, BenchConfig, ModelSpec
from .timing import interleave, median

__all__ = ["bench_attacks", "bench_es", "bench_stadv", "plain_stadv", "steps_to_rate"]


def bench_attacks(spec: ModelSpec, device: torch.device, cfg: BenchConfig) -> list[Row]:
    """FlowPGD vs ``torchattacks.PGD`` (per step) and FlowFGSM vs ``torchattacks.FGSM``."""
    # torch and the attacks: imported when the benchmark runs, so that --help stays fast
    import torchattacks

    from torchattacks_deform import FlowFGSM, FlowPGD

    model = build_model(spec, device, cfg).eval()
    ref_model = precision_model(model, cfg)
    x, y = spec_images(spec, spec.attack_batch, device, cfg.seed)
    k = spec.pgd_steps
    attacks: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "PGD": torchattacks.PGD(ref_model, eps=8 / 255, alpha=2 / 255, steps=k, random_start=True),
        "FlowPGD": set_precision(FlowPGD(model, eps=1.0, alpha=0.25, steps=k, random_start=True), cfg),
        "FGSM": torchattacks.FGSM(ref_model, eps=8 / 255),
        "FlowFGSM": set_precision(FlowFGSM(model, eps=1.0), cfg),
    }
    torch.manual_seed(cfg.seed)
    times = interleave({n: partial(a, x, y) for n, a in attacks.items()}, spec.repeats, cfg.warmup, device)
    b = spec.attack_batch
    return [
        make_row("attacks", spec.arch, "FlowPGD", "torchattacks.PGD", b, times, "FlowPGD", "PGD", per=k,
                 steps=k, unit="per step", eps="FlowPGD 1 px Linf; PGD 8/255 Linf"),
        make_row("attacks", spec.arch, "FlowFGSM", "torchattacks.FGSM", b, times, "FlowFGSM", "FGSM",
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


def bench_stadv(model: nn.Module, device: torch.device, cfg: BenchConfig, repeats: int) -> list[Row]:
    """StAdv vs :func:`plain_stadv`: steps and time to fool :data:`~benchmarks.config.STADV_RATE` of the images."""
    # torch and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import StAdv

    x, y = correct_images(model, cfg.stadv_images, device)
    rec = Recorder(model)
    set_precision(StAdv(rec, steps=cfg.stadv_max_steps), cfg).get_flow(x, y)
    k_lib, curve_lib = steps_to_rate(rec.preds, y, STADV_RATE)
    ref_model = precision_model(model, cfg)
    rec_ref = Recorder(ref_model)
    plain_stadv(rec_ref, x, y, cfg.stadv_max_steps)
    k_ref, curve_ref = steps_to_rate(rec_ref.preds, y, STADV_RATE)
    reached = k_lib is not None and k_ref is not None
    s_lib = k_lib if k_lib is not None else cfg.stadv_max_steps
    s_ref = k_ref if k_ref is not None else cfg.stadv_max_steps
    lib = set_precision(StAdv(model, steps=max(s_lib, 1)), cfg)
    times = interleave({"StAdv": lambda: lib(x, y), "plain": lambda: plain_stadv(ref_model, x, y, max(s_ref, 1))},
                       repeats, cfg.warmup, device)
    adv = lib(x, y)
    with torch.no_grad():
        success = float((model(adv).argmax(dim=1) != y).float().mean())
    note = "" if reached else f"{STADV_RATE:.0%} not reached in {cfg.stadv_max_steps} steps: timed at the limit"
    return [make_row("stadv", "smallcnn (trained)", "StAdv", "plain Adam + grid_sample", int(x.shape[0]), times,
                     "StAdv", "plain", unit="time to 95% success", steps_lib=k_lib, steps_ref=k_ref,
                     success_lib=success, final_rate_lib=curve_lib[-1], final_rate_ref=curve_ref[-1],
                     max_steps=cfg.stadv_max_steps, note=note)]


def bench_es(model: nn.Module, device: torch.device, cfg: BenchConfig, repeats: int) -> list[Row]:
    """FlowES: queries per successful sample, images/s, and its throughput vs plain forwards."""
    # torch and the attacks: imported when the benchmark runs, so that --help stays fast
    from torchattacks_deform import FlowES, warp

    x, y = correct_images(model, cfg.es_images, device)
    steps, population = (10, 8) if cfg.quick else (25, 20)
    rec = Recorder(model)
    torch.manual_seed(cfg.seed)
    probe = set_precision(FlowES(rec, eps=1.0, population=population, steps=steps), cfg)
    adv = probe(x, y)
    assert probe.last_queries is not None
    queries = probe.last_queries.cpu()
    with torch.no_grad():
        fooled = (model(adv).argmax(dim=1) != y).cpu()
    total = int(queries.sum())
    forwards = len(rec.batch_sizes)
    es = set_precision(FlowES(model, eps=1.0, population=population, steps=steps), cfg)
    chunk = int(x.shape[0]) * population
    fwd_model = precision_model(model, cfg)
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
    es_time = median(times["FlowES"])
    return [make_row("es", "smallcnn (trained)", "FlowES", "batched warp + forward, same images", int(x.shape[0]),
                     times, "FlowES", "plain", unit="time for the same number of model queries",
                     population=population, steps=steps, success=n_ok / len(fooled),
                     queries_per_success=per_success, queries_total=total,
                     queries_total_per_success=(total / n_ok) if n_ok else None,
                     images_per_s=total / es_time, forwards=forwards, max_forward_batch=max(rec.batch_sizes))]
