"""PNG figures of a run, drawn with matplotlib's Agg canvas (no pyplot, no display).

- ``robust_vs_budget_<attack>.png``: robust accuracy vs budget, one line per defense
  (for defenses with several instances, the one matched to the reference's clean accuracy,
  as in Table 1, Standard included; one panel per group). Paper, Figs. 5/6.
- ``landscape.png``: cross-entropy loss of one example over the plane
  ``alpha * v_adv + beta * v_rand`` (adversarial flow of the plot attack, and a Gaussian random
  flow rescaled to the same L2 norm), one surface per model. Paper, Fig. 7.
- ``flow_vs_pixel_distance.png``: ``||x' - x||_2`` against ``||v - v0||_2`` along the random and
  the adversarial flow direction, and ``||x' - x||_2`` over their plane. Paper, Fig. 1.
- ``samples_<model>.png``: clean images, adversarial images and their flows (colour wheel:
  hue = direction, brightness = length; arrows every few pixels) for a few examples.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from torch import Tensor, nn

from fgr_defense.checkpoint import atomic_write
from torchattacks_deform.flow import warp

from .attacks import ATTACK_FAMILIES, build_attack

__all__ = ["budget_plots", "flow_to_rgb", "headline_plot", "matching_plot", "model_plots", "save_figure",
           "tradeoff_plot"]

logger = logging.getLogger(__name__)


def save_figure(fig: Figure, path: Path) -> str:
    """Render ``fig`` with the Agg canvas into ``path`` atomically; returns the path."""
    FigureCanvasAgg(fig)
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=100, format="png"))
    return str(path)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+.-" else "-" for ch in text).strip("-")


def budget_plots(results: dict[str, Any], out: Path) -> list[str]:
    """Robust accuracy vs budget per attack, one line per defense (representatives)."""
    from .report import representatives

    ref = results["config"].get("report", {}).get("reference_defense", "AT-PGD")
    groups, selection, _ = representatives(results["models"], ref)
    models = {m["name"]: m for m in results["models"]}
    files = []
    for a in results["config"]["attacks"]:
        fig = Figure(figsize=(5.2 * len(groups), 4))
        for gi, g in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), gi + 1)
            for defense, name in selection[g].items():
                cells = sorted((c for c in results["cells"] if c["model"] == name and c["attack"] == a["name"]),
                               key=lambda c: c["budget"])
                xs = [c["budget"] for c in cells]
                ys = [100 * c["robust_acc"] for c in cells]
                if not xs or xs[0] > 0:  # budget 0 is the clean accuracy
                    xs, ys = [0.0] + xs, [100 * models[name]["clean_acc"]] + ys
                ax.plot(xs, ys, marker="o", label=f"{defense} ({name})" if defense != name else name)
            ax.set_xlabel(f"budget (px, {a['family']})")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.set_title(f"{a['name']}" + (f" - {g}" if g != "all" else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(save_figure(fig, out / f"robust_vs_budget_{_slug(a['name'])}.png"))
    return files


def flow_to_rgb(flow: Tensor, max_norm: float | None = None) -> np.ndarray:
    """Colour-code one flow ``(2, H, W)``: hue = direction, brightness = length.

    Example:
        >>> flow_to_rgb(torch.zeros(2, 3, 4)).shape
        (3, 4, 3)
    """
    u, v = flow[0].detach().cpu().numpy(), flow[1].detach().cpu().numpy()
    mag = np.hypot(u, v)
    scale = max_norm if max_norm else float(mag.max()) or 1.0
    hsv = np.stack([(np.arctan2(v, u) / (2 * np.pi)) % 1.0, np.ones_like(u),
                    np.clip(mag / scale, 0, 1)], axis=-1)
    return np.asarray(hsv_to_rgb(hsv))


def _show(ax: Any, img: Tensor) -> None:
    x = img.detach().cpu()
    if x.shape[0] == 1:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_attack(cfg: Any) -> Any:
    if cfg.plots.attack is not None:
        return cfg.attack(cfg.plots.attack)
    for a in cfg.attacks:
        if a.family == "StAdv":
            return a
    return next((a for a in cfg.attacks if ATTACK_FAMILIES[a.family].uses_gradients), cfg.attacks[0])


def _adv_flow(model: nn.Module, attack: Any, x: Tensor, y: Tensor, seed: int) -> Tensor:
    budget = max(attack.budgets)
    if budget <= 0:
        return torch.zeros(x.shape[0], 2, *x.shape[2:], device=x.device)
    atk = build_attack(attack.family, model, budget, attack.params)
    with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return atk.get_flow(x, y).to(x.dtype)  # type: ignore[no-any-return]


def _random_like(v: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(v.shape, generator=g).to(v)
    return r * (v.flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1).clamp_min(1e-12)).reshape(-1, 1, 1, 1)


@torch.no_grad()
def _loss_grid(model: nn.Module, x: Tensor, y: Tensor, d1: Tensor, d2: Tensor, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = torch.linspace(-1, 1, grid, device=x.device)
    aa, bb = torch.meshgrid(t, t, indexing="ij")
    flows = aa.reshape(-1, 1, 1, 1) * d1 + bb.reshape(-1, 1, 1, 1) * d2
    losses = []
    for i in range(0, flows.shape[0], 256):
        f = flows[i : i + 256]
        xs = warp(x.expand(f.shape[0], -1, -1, -1), f)
        losses.append(F.cross_entropy(model(xs), y.expand(f.shape[0]), reduction="none").cpu())
    z = torch.cat(losses).reshape(grid, grid).numpy()
    return aa.cpu().numpy(), bb.cpu().numpy(), z


def model_plots(cfg: Any, out: Path, images: Tensor, labels: Tensor, device: torch.device,
                results: dict[str, Any]) -> list[str]:
    """Draw the plots that need the models (landscape, Fig. 1, sample grids)."""
    from .runner import _ModelCache

    names = list(cfg.plots.models) if cfg.plots.models is not None else [m.name for m in cfg.models]
    attack = _plot_attack(cfg)
    cache = _ModelCache(cfg, images, labels, device)
    files: list[str] = []
    k = cfg.plots.samples
    land = Figure(figsize=(4.2 * min(len(names), 4), 3.8 * math.ceil(len(names) / 4)))
    for mi, name in enumerate(names):
        model, correct = cache.get(name)
        idx = correct.nonzero().flatten()[:k]
        if len(idx) == 0:
            logger.warning("plots: model %r classifies no example correctly; skipping its plots", name)
            continue
        x, y = images[idx].to(device), labels[idx].to(device)
        v_adv = _adv_flow(model, attack, x, y, cfg.seed + mi)
        v_rand = _random_like(v_adv, cfg.seed + 1000 + mi)
        aa, bb, z = _loss_grid(model, x[:1], y[:1], v_adv[:1], v_rand[:1], cfg.plots.grid)
        ax = land.add_subplot(math.ceil(len(names) / 4), min(len(names), 4), mi + 1, projection="3d")
        ax.plot_surface(aa, bb, z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("adv. flow")
        ax.set_ylabel("random flow")
        ax.set_zlabel("loss")
        ax.set_title(name, fontsize=9)
        if mi == 0:
            files.append(_fig1(x[:1], v_adv[:1], v_rand[:1], attack.name, name, out, cfg.plots.grid))
        files.append(_samples(model, cfg, x, y, name, out, cfg.seed + mi))
    land.suptitle(f"Loss along the adversarial ({attack.name}, {max(attack.budgets):g} px) and a random flow")
    land.tight_layout()
    files.insert(0, save_figure(land, out / "landscape.png"))
    return files


@torch.no_grad()
def _fig1(x: Tensor, v_adv: Tensor, v_rand: Tensor, attack: str, model: str, out: Path, grid: int) -> str:
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot(1, 2, 1)
    ts = torch.linspace(0, 1, 41, device=x.device)
    for label, d in (("random flow", v_rand), (f"adversarial flow ({attack})", v_adv)):
        flows = ts.reshape(-1, 1, 1, 1) * d
        xs = warp(x.expand(len(ts), -1, -1, -1), flows)
        dx = (xs - x).flatten(1).norm(dim=1).cpu().numpy()
        dv = flows.flatten(1).norm(dim=1).cpu().numpy()
        ax.plot(dv, dx, label=label)
    ax.set_xlabel(r"$\|v - v_0\|_2$ (px)")
    ax.set_ylabel(r"$\|x' - x\|_2$")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"model {model}: equal flow length, different image change", fontsize=9)
    t = torch.linspace(-1, 1, grid, device=x.device)
    aa, bb = torch.meshgrid(t, t, indexing="ij")
    flows = aa.reshape(-1, 1, 1, 1) * v_adv + bb.reshape(-1, 1, 1, 1) * v_rand
    dist = (warp(x.expand(flows.shape[0], -1, -1, -1), flows) - x).flatten(1).norm(dim=1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(aa.cpu().numpy(), bb.cpu().numpy(), dist.reshape(grid, grid).cpu().numpy(), cmap="magma")
    ax3.set_xlabel("adv. flow")
    ax3.set_ylabel("random flow")
    ax3.set_zlabel(r"$\|x' - x\|_2$")
    fig.tight_layout()
    return save_figure(fig, out / "flow_vs_pixel_distance.png")


def _samples(model: nn.Module, cfg: Any, x: Tensor, y: Tensor, name: str, out: Path, seed: int) -> str:
    attacks = list(cfg.attacks)
    cols = 1 + 2 * len(attacks)
    fig = Figure(figsize=(1.6 * cols, 1.7 * x.shape[0] + 0.6))
    h, w = x.shape[2:]
    step = max(1, min(h, w) // 8)
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    flows = [_adv_flow(model, a, x, y, seed) for a in attacks]
    with torch.no_grad():
        advs = [warp(x, f).clamp(0, 1) for f in flows]
        preds = [model(adv).argmax(1).cpu() for adv in advs]
    for r in range(x.shape[0]):
        ax = fig.add_subplot(x.shape[0], cols, r * cols + 1)
        _show(ax, x[r])
        ax.set_title(f"clean y={int(y[r])}", fontsize=7)
        for j, a in enumerate(attacks):
            ax = fig.add_subplot(x.shape[0], cols, r * cols + 2 + 2 * j)
            _show(ax, advs[j][r])
            ax.set_title(f"{a.name} {max(a.budgets):g}px: {int(preds[j][r])}", fontsize=7)
            ax = fig.add_subplot(x.shape[0], cols, r * cols + 3 + 2 * j)
            f = flows[j][r].cpu()
            ax.imshow(flow_to_rgb(f))
            ax.quiver(xx, yy, f[0].numpy()[::step, ::step], f[1].numpy()[::step, ::step],
                      angles="xy", scale_units="xy", scale=0.5, color="white", width=0.01)
            ax.set_title(f"flow max {float(f.abs().max()):.2f}px", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{name}: clean, adversarial (prediction) and flow", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out / f"samples_{_slug(name)}.png")


def headline_plot(headline: dict[str, Any], results: dict[str, Any], path: Path) -> str:
    """Robust accuracy of the matched instances vs budget, mean +/- std over seeds (one panel per attack)."""
    attacks = [a for a in results["config"]["attacks"]
               if any(c["attack"] == a["name"] for c in headline["cells"])]
    fig = Figure(figsize=(4.2 * max(len(attacks), 1), 3.8))
    clean = {c["family"]: c for c in headline["clean"]}
    for ai, a in enumerate(attacks):
        ax = fig.add_subplot(1, max(len(attacks), 1), ai + 1)
        for fam in headline["families"]:
            cells = sorted((c for c in headline["cells"] if c["attack"] == a["name"] and c["family"] == fam),
                           key=lambda c: c["budget"])
            xs = [0.0] + [c["budget"] for c in cells]
            ys = [100 * clean[fam]["mean"]] + [100 * c["mean"] for c in cells]
            es = [100 * (clean[fam]["std"] or 0.0)] + [100 * (c["std"] or 0.0) for c in cells]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=fam)
        ax.set_xlabel(f"budget (px, {a['family']})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(a["name"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    n = len(headline["seeds"])
    fig.suptitle(f"Matched instances, mean ± std over {n} seed(s)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def tradeoff_plot(results: dict[str, Any], headline: dict[str, Any], families: Any, path: Path) -> str:
    """Robust vs clean accuracy of every instance (one seed), per attack at its middle budget (Fig. 6 style)."""
    attacks = [a for a in results["config"]["attacks"] if a["budgets"]]
    fig = Figure(figsize=(4.2 * max(len(attacks), 1), 3.8))
    cells = {(c["model"], c["attack"], c["budget"]): c["robust_acc"] for c in results["cells"]}
    matched = {r["model"] for r in headline["selection"] if r["seed"] == headline["main_seed"]}
    target = headline["target"]["clean_acc"] if headline.get("target") else None
    for ai, a in enumerate(attacks):
        budget = a["budgets"][len(a["budgets"]) // 2]
        ax = fig.add_subplot(1, max(len(attacks), 1), ai + 1)
        defenses = list(dict.fromkeys(m["defense"] for m in results["models"]))
        for d in defenses:
            ms = sorted((m for m in results["models"] if m["defense"] == d
                         and (m["name"], a["name"], budget) in cells), key=lambda m: m["clean_acc"])
            if not ms:
                continue
            xs = [100 * m["clean_acc"] for m in ms]
            ys = [100 * cells[(m["name"], a["name"], budget)] for m in ms]
            style = "-o" if d in families else "s"
            ax.plot(xs, ys, style, label=d, markersize=5)
            for m, x, y in zip(ms, xs, ys):
                if m["name"] in matched:
                    ax.plot([x], [y], "o", markersize=11, markerfacecolor="none", markeredgecolor="black")
        if target is not None:
            ax.axvline(100 * target, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"{a['name']} @ {budget:g} px", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Every instance of the main seed; circles: matched instances; dashed: matching target",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def matching_plot(pools: dict[str, Any], headline: dict[str, Any], strength: dict[str, float], xlabel: str,
                  path: Path) -> str:
    """Clean accuracy of every instance of the compared families vs its weight, one line per seed.

    ``pools`` maps a seed (str) to its ``[{"name", "defense", "clean_acc"}, ...]``;
    ``strength`` maps a model name to its regularizer weight (the x axis, log scale).
    Circles mark the matched instances, the dashed line the matching target.
    """
    fams = headline["families"]
    fig = Figure(figsize=(4.0 * max(len(fams), 1), 3.6))
    matched = {(str(r["seed"]), r["model"]) for r in headline["selection"]}
    target = headline["target"]["clean_acc"] if headline.get("target") else None
    for fi, fam in enumerate(fams):
        ax = fig.add_subplot(1, max(len(fams), 1), fi + 1)
        for seed, pool in pools.items():
            ms = sorted((m for m in pool if m["defense"] == fam and m["name"] in strength),
                        key=lambda m: strength[m["name"]])
            xs = [strength[m["name"]] for m in ms]
            ys = [100 * m["clean_acc"] for m in ms]
            ax.plot(xs, ys, "-o", markersize=4, label=f"seed {seed}")
            for m, x, y in zip(ms, xs, ys):
                if (seed, m["name"]) in matched:
                    ax.plot([x], [y], "o", markersize=11, markerfacecolor="none", markeredgecolor="black")
        if target is not None:
            ax.axhline(100 * target, color="gray", linestyle="--", linewidth=1,
                       label=f"target ({headline['target']['model']})")
        if any(v > 0 for v in strength.values()):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("clean accuracy (%)")
        ax.set_title(fam)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Matching on clean accuracy: circles are the matched instances", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
