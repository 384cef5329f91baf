"""``python -m eval demo``: train a Standard SmallCNN on MNIST-5k and attack it with the suite.

The demo is a pipeline of small stages (train or reuse cached models -> build a config ->
:func:`eval.runner.evaluate` -> summary), so later issues can add stages (more defenses, the
paper's full grid) without changing the entry point. Everything goes under ``out``; the
trained checkpoint is cached in ``out/cache`` and reused by the next run, and the evaluation
resumes like any ``eval run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import EvalConfig, parse_config

__all__ = ["demo_config", "format_summary", "run_demo", "train_standard"]

logger = logging.getLogger(__name__)

#: The demo's budgets (pixels) per attack family, and their settings: quick on a CPU.
DEMO_ATTACKS: list[dict[str, Any]] = [
    {"family": "FlowFGSM", "budgets": [0.5, 1.0]},
    {"family": "FlowPGD", "budgets": [0.5, 1.0], "params": {"steps": 10, "alpha_ratio": 0.25}},
    {"family": "StAdv", "budgets": [0.5, 1.0], "params": {"steps": 20}},
    {"family": "FlowES", "budgets": [0.5, 1.0], "params": {"population": 10, "steps": 10}},
]


def train_standard(path: Path, epochs: int = 3, seed: int = 0, device: str = "cpu") -> Path:
    """Train a SmallCNN with plain cross-entropy on the MNIST-5k training split; cache it.

    Reuses ``path`` when it exists. Adam (lr 1e-3), batch 128, fixed seed.
    """
    from fgr_defense.checkpoint import save_model
    from fgr_defense.data import load_mnist5k
    from fgr_defense.models import SmallCNN

    if path.is_file():
        logger.info("demo: reusing cached model %s", path)
        return path
    logger.info("demo: training a Standard SmallCNN on MNIST-5k for %d epoch(s)", epochs)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x, y = load_mnist5k(train=True)
        model = SmallCNN().to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(len(y), generator=gen)
            total = 0.0
            for i in range(0, len(y), 128):
                idx = perm[i : i + 128]
                loss = F.cross_entropy(model(x[idx].to(dev)), y[idx].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            logger.info("demo: epoch %d loss %.4f", epoch + 1, total / len(y))
    model.eval()
    arch = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "size": 28}
    save_model(model, path, arch, meta={"defense": "Standard", "dataset": "mnist5k", "epochs": epochs,
                                        "seed": seed, "trainer": "eval.demo.train_standard"})
    return path


def demo_config(checkpoint: Path, n: int = 500, device: str = "auto") -> EvalConfig:
    """The demo's evaluation config: the Standard model against every attack at two budgets."""
    return parse_config({
        "name": "demo",
        "device": device,
        "data": {"dataset": "mnist5k", "n": n, "batch_size": 250},
        "models": [{"name": "Standard", "defense": "Standard", "group": "SmallCNN",
                    "source": "checkpoint", "path": str(checkpoint)}],
        "attacks": DEMO_ATTACKS,
        "plots": {"samples": 3},
    }, source="demo")


def run_demo(out: str | Path = "results/demo", n: int = 500, epochs: int = 3,
             device: str = "auto") -> dict[str, Any]:
    """Train (or reuse) the Standard model, evaluate it, and return the results dict."""
    from .runner import evaluate, resolve_device

    out = Path(out)
    dev = resolve_device(device)
    ckpt = train_standard(out / "cache" / "standard-smallcnn.pt", epochs=epochs, device=str(dev))
    # The demo's settings belong to the code, not to the user: when a newer demo changes them,
    # recompute the affected cells instead of stopping with StaleResultsError.
    results = evaluate(demo_config(ckpt, n=n, device=device), out, overwrite_stale=True)
    if results is None:  # pragma: no cover - only under torchrun on ranks > 0
        return {}
    return results


def format_summary(results: dict[str, Any]) -> str:
    """A plain-text table: one row per (model, attack, budget)."""
    if not results:
        return ""
    lines = [f"{'model':<12} {'attack':<9} {'budget':>7} {'clean%':>7} {'robust%':>8} "
             f"{'flowLinf':>8} {'flowL2':>7} {'queries':>8} {'time_s':>7}"]
    for c in results["cells"]:
        lines.append(
            f"{c['model']:<12} {c['attack']:<9} {c['budget']:>7g} {100 * c['clean_acc']:>7.2f} "
            f"{100 * c['robust_acc']:>8.2f} {c['flow_linf_mean']:>8.3f} {c['flow_l2_mean']:>7.2f} "
            f"{c['queries_per_sample']:>8.1f} {c['time_s']:>7.1f}")
    for w in results["worst_case"]:
        lines.append(f"{w['model']:<12} {'worst':<9} {'L' + str(w['level']):>7} {'':>7} {100 * w['robust_acc']:>8.2f}")
    if results["checks"]:
        lines.append("")
        lines += [f"WARNING {f['message']}" for f in results["checks"]]
    return "\n".join(lines)
