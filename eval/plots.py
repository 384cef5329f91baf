"""PNG figures of a run, drawn with matplotlib's Agg canvas (no pyplot, no display).

Every image shown is made by the evaluated attack's own ``apply_flow`` (its warp, padding and
clamping), so the figures show exactly what was evaluated.

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
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from torch import Tensor, nn

from deform_robust.config import AttackConfig, EvalConfig
from deform_robust.data import TestData
from deform_robust.runner import ModelCache
from fgr_defense.constants import REFERENCE_DEFENSE
from fgr_defense.naming import file_slug

from .figures import save_figure
from .stats import representatives

__all__ = ["budget_plots", "flow_to_rgb", "model_plots", "save_figure"]

logger = logging.getLogger(__name__)


def budget_plots(results: dict[str, Any], out: Path) -> list[str]:
    """Robust accuracy vs budget per attack, one line per defense (representatives)."""
    ref = results["config"].get("report", {}).get("reference_defense", REFERENCE_DEFENSE)
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
            unit = next((c.get("budget_unit", "px") for c in results["cells"] if c["attack"] == a["name"]), "px")
            ax.set_xlabel(f"budget ({unit}, {a['family']})")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.set_title(f"{a['name']}" + (f" - {g}" if g != "all" else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(save_figure(fig, out / f"robust_vs_budget_{file_slug(a['name'])}.png"))
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


def _flow_attacks(cfg: EvalConfig) -> list[AttackConfig]:
    return [a for a in cfg.attacks if a.resolved.info.space == "flow" and max(a.budgets) > 0]


def _plot_attack(cfg: EvalConfig) -> AttackConfig | None:
    """The attack of the landscape and Fig. 1: ``plots.attack``, else StAdv, else the first flow attack."""
    if cfg.plots.attack is not None:
        return cfg.attack(cfg.plots.attack)
    flows = _flow_attacks(cfg)
    return next((a for a in flows if a.family == "StAdv"), flows[0] if flows else None)


def _attack(model: nn.Module, a: AttackConfig) -> Any:
    return a.resolved.build(model, max(a.budgets), a.params)


def _adv_flow(atk: Any, x: Tensor, y: Tensor, seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return atk.get_flow(x, y).to(x.dtype)  # type: ignore[no-any-return]


def _random_like(v: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(v.shape, generator=g).to(v)
    return r * (v.flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1).clamp_min(1e-12)).reshape(-1, 1, 1, 1)


@torch.no_grad()
def _loss_grid(model: nn.Module, atk: Any, x: Tensor, y: Tensor, d1: Tensor, d2: Tensor, grid: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = torch.linspace(-1, 1, grid, device=x.device)
    aa, bb = torch.meshgrid(t, t, indexing="ij")
    flows = aa.reshape(-1, 1, 1, 1) * d1 + bb.reshape(-1, 1, 1, 1) * d2
    losses = []
    for i in range(0, flows.shape[0], 256):
        f = flows[i:i + 256]
        xs = atk.apply_flow(x.expand(f.shape[0], -1, -1, -1), f)
        losses.append(F.cross_entropy(model(xs), y.expand(f.shape[0]), reduction="none").cpu())
    z = torch.cat(losses).reshape(grid, grid).numpy()
    return aa.cpu().numpy(), bb.cpu().numpy(), z


def model_plots(cfg: EvalConfig, out: Path, data: TestData, device: torch.device) -> list[str]:
    """Draw the figures that need the models (landscape, Fig. 1, sample grids); returns their paths."""
    names = list(cfg.plots.models) if cfg.plots.models is not None else [m.name for m in cfg.models]
    attack = _plot_attack(cfg)
    if attack is None:
        logger.info("plots: no flow attack with a positive budget; no model figures")
        return []
    cache = ModelCache(cfg, data, device)
    files: list[str] = []
    k = cfg.plots.samples
    cols = min(len(names), 4)
    land = Figure(figsize=(4.2 * cols, 3.8 * math.ceil(len(names) / 4)))
    for mi, name in enumerate(names):
        model, correct = cache.get(name)
        idx = correct.nonzero().flatten()[:k]
        if len(idx) == 0:
            logger.warning("plots: model %r classifies no example correctly; skipping its plots", name)
            continue
        x, y = data.images[idx].to(device), data.labels[idx].to(device)
        atk = _attack(model, attack)
        v_adv = _adv_flow(atk, x, y, cfg.seed + mi)
        v_rand = _random_like(v_adv, cfg.seed + 1000 + mi)
        aa, bb, z = _loss_grid(model, atk, x[:1], y[:1], v_adv[:1], v_rand[:1], cfg.plots.grid)
        ax = land.add_subplot(math.ceil(len(names) / 4), cols, mi + 1, projection="3d")
        ax.plot_surface(aa, bb, z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("adv. flow")
        ax.set_ylabel("random flow")
        ax.set_zlabel("loss")
        ax.set_title(name, fontsize=9)
        if mi == 0:
            files.append(_fig1(atk, x[:1], v_adv[:1], v_rand[:1], attack.name, name, out, cfg.plots.grid))
        files.append(_samples(model, cfg, x, y, name, out, cfg.seed + mi))
    land.suptitle(f"Loss along the adversarial ({attack.name}, {max(attack.budgets):g} px) and a random flow")
    land.tight_layout()
    files.insert(0, save_figure(land, out / "landscape.png"))
    return files


@torch.no_grad()
def _fig1(atk: Any, x: Tensor, v_adv: Tensor, v_rand: Tensor, attack: str, model: str, out: Path, grid: int) -> str:
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot(1, 2, 1)
    ts = torch.linspace(0, 1, 41, device=x.device)
    for label, d in (("random flow", v_rand), (f"adversarial flow ({attack})", v_adv)):
        flows = ts.reshape(-1, 1, 1, 1) * d
        xs = atk.apply_flow(x.expand(len(ts), -1, -1, -1), flows)
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
    dist = (atk.apply_flow(x.expand(flows.shape[0], -1, -1, -1), flows) - x).flatten(1).norm(dim=1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(aa.cpu().numpy(), bb.cpu().numpy(), dist.reshape(grid, grid).cpu().numpy(), cmap="magma")
    ax3.set_xlabel("adv. flow")
    ax3.set_ylabel("random flow")
    ax3.set_zlabel(r"$\|x' - x\|_2$")
    fig.tight_layout()
    return save_figure(fig, out / "flow_vs_pixel_distance.png")


def _samples(model: nn.Module, cfg: EvalConfig, x: Tensor, y: Tensor, name: str, out: Path, seed: int) -> str:
    attacks = _flow_attacks(cfg)
    cols = 1 + 2 * len(attacks)
    fig = Figure(figsize=(1.6 * cols, 1.7 * x.shape[0] + 0.6))
    h, w = x.shape[2:]
    step = max(1, min(h, w) // 8)
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    atks = [_attack(model, a) for a in attacks]
    flows = [_adv_flow(atk, x, y, seed) for atk in atks]
    with torch.no_grad():
        advs = [atk.apply_flow(x, f) for atk, f in zip(atks, flows)]
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
    return save_figure(fig, out / f"samples_{file_slug(name)}.png")
