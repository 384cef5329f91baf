"""A user's first hour: the README's shell block runs verbatim from the user's own folder.

The folder holds what a new user brings: their model class in ``mypkg/nets.py`` with its
weights, a ``.pt`` of test images, an ImageFolder of grayscale PNGs, a RobustBench
architecture's weights (random, in the zoo's file format) and their own ``.npz`` of RGB
images. Each README line runs in a subprocess through the installed console script, with no
``PYTHONPATH``; the training pair is interrupted with Ctrl-C (SIGINT) after its first epoch
and continued with ``--resume``, as the README says.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """The user's own classifier: 1x28x28 digits, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
'''


def readme_shell_lines() -> list[str]:
    """The commands of the README's shell block that starts with ``deform-robust --version``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "deform-robust --version" in b)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    return env


def _run(line: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new user's folder, with nothing of the repository in it."""
    from PIL import Image

    from deform_robust.robustbench import expected_weight_files, robustbench_entry
    from fgr_defense.data import load_mnist5k

    home = tmp_path_factory.mktemp("user")
    (home / "mypkg").mkdir()
    (home / "mypkg" / "__init__.py").write_text("")
    (home / "mypkg" / "nets.py").write_text(NETS)
    scope: dict[str, object] = {}
    exec(NETS, scope)
    torch.manual_seed(0)
    net = scope["Net"]()  # type: ignore[operator]
    # a few steps of training so that some examples are classified correctly and get attacked
    x, y = load_mnist5k(train=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(0, 2000, 100):
        loss = torch.nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), home / "net.pt")
    xt, yt = load_mnist5k(train=False)
    torch.save({"images": xt[:12].clone(), "labels": yt[:12].clone()}, home / "test.pt")
    # grayscale PNGs, one folder per class, 12 per class
    for c in range(10):
        (home / "digits" / str(c)).mkdir(parents=True)
        for k, idx in enumerate((yt == c).nonzero().flatten()[:12].tolist()):
            Image.fromarray((xt[idx, 0] * 255).round().to(torch.uint8).numpy(), mode="L").save(
                home / "digits" / str(c) / f"{k}.png")
    # RobustBench: the real Wong2020Fast architecture, random weights, in the zoo's file format
    rb = robustbench_entry("Wong2020Fast", "cifar10", "Linf")["model"]()
    (path,) = expected_weight_files("Wong2020Fast", "cifar10", "Linf", home / "models")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in rb.state_dict().items()}}, path)
    rng = np.random.default_rng(0)
    np.savez(home / "mine.npz", images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             labels=np.array([0, 1, 2, 3]))
    # a CIFAR-10 test set in the archive's format (synthetic images: no network here)
    (home / "data" / "cifar-10-batches-py").mkdir(parents=True)
    batch = {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in rng.integers(0, 10, 120)],
             "data": rng.integers(0, 256, (120, 3072), dtype=np.uint8)}
    (home / "data" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return home


def test_the_block_is_what_this_file_runs() -> None:
    lines = readme_shell_lines()
    assert lines[0] == "deform-robust --version"
    assert all(line.startswith("deform-robust ") for line in lines)
    assert sum(" train " in line for line in lines) == 2 and lines[-1] == lines[-2] + " --resume"


def test_version(user_folder: Path) -> None:
    res = _run(readme_shell_lines()[0], user_folder)
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"deform-robust \d+\.\d+\.\d+\S*\n", res.stdout)


def test_evaluate_the_users_model_class_from_their_folder(user_folder: Path) -> None:
    (line,) = [x for x in readme_shell_lines() if "--data test.pt" in x]
    res = _run(line, user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "No module named" not in res.stderr
    out = res.stdout
    assert "clean" in out and "worst" in out and "0.25" in out and "0.5" in out


def test_evaluate_a_grayscale_image_folder(user_folder: Path) -> None:
    (line,) = [x for x in readme_shell_lines() if "--data digits/" in x]
    res = _run(line, user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((user_folder / "out" / "robustness.json").read_text())
    assert rec["n"] == 100
    # drawn evenly over the 10 classes, not the first 100 in class order
    assert {c: v["n"] for c, v in rec["per_class"].items()} == {str(c): 10 for c in range(10)}
    assert (user_folder / "out" / "robustness.csv").is_file()
    saved = list((user_folder / "out").glob("adversarial_eps*.pt"))
    assert saved and torch.load(saved[0], weights_only=True)["labels"].shape == (100,)


def test_evaluate_a_robustbench_architecture_on_the_users_npz(user_folder: Path) -> None:
    (line,) = [x for x in readme_shell_lines() if "robustbench:" in x]
    res = _run(line, user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "clean" in res.stdout


def test_zoo_on_a_cifar10_folder(user_folder: Path) -> None:
    (line,) = [x for x in readme_shell_lines() if x.startswith("deform-robust zoo ")]
    res = _run(line, user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((user_folder / "results" / "zoo-cifar10-Linf" / "cifar10" / "Linf" / "Wong2020Fast.json")
                     .read_text())
    assert rec["n_examples"] == 100 and rec["weights_sha256"] and rec["deformation_worst_case_acc"]


def test_train_ctrl_c_then_resume(user_folder: Path) -> None:
    first, resume = [x for x in readme_shell_lines() if " train " in x]
    run_dir = user_folder / "runs" / "fgr"
    proc = subprocess.Popen(["bash", "-c", f"exec {first}"], cwd=user_folder, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            log = run_dir / "log.json"
            if log.is_file() and '"epoch"' in log.read_text(errors="replace"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    assert "--resume" in last and "interrupted" in last.lower()
    res = _run(resume, user_folder)
    assert res.returncode == 0, res.stderr[-3000:]
    log = json.loads((run_dir / "log.json").read_text())
    epochs = [h["epoch"] for h in log["epochs"]]
    assert epochs[-1] == 3 and sorted(set(epochs)) == [1, 2, 3]
    assert not (run_dir / ".lock").exists()  # no debris after a finished run
    assert not (user_folder / "results" / "zoo-cifar10-Linf" / ".lock").exists()
