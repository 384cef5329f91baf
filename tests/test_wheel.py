"""A wheel built from this repository works outside it: the README's three lines and ``deform-robust evaluate``.

The wheel is installed with ``pip install --target`` into a temporary folder that is put first on
``PYTHONPATH`` (the development install's import hook only answers after the path), and both
examples run from a temporary working directory that holds a user's own ``eval.py``: the installed
packages must neither need the repository nor import a module named ``eval``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from fgr_defense.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy of the sources: setuptools builds in <source>/build, and a stale build folder
    # could carry modules the checkout no longer has into the wheel.
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "results", "build", "*.egg-info", "__pycache__", ".hypothesis", ".*_cache", "data", "models"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(base / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = (base / "dist").glob("deform_robust-*.whl")
    site = base / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr
    work = base / "work"
    work.mkdir()
    (work / "eval.py").write_text("open('EVAL_PY_WAS_IMPORTED', 'w').close()\n")  # a user's own eval.py
    return {"wheel": wheel, "site": site, "work": work}


def _run(args: list[str], files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(files["site"])}
    return subprocess.run(args, cwd=files["work"], env=env, capture_output=True, text=True, timeout=900)


def test_wheel_contents(installed: dict[str, Path]) -> None:
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("deform_robust-")}
    assert tops == {"torchattacks_deform", "fgr_defense", "deform_robust"}  # no top-level eval or benchmarks
    # every module of the three packages, subpackages included (deform_robust/training was once left out)
    sources = {p.relative_to(ROOT).as_posix() for top in sorted(tops) for p in (ROOT / top).rglob("*.py")}
    assert sources and sources <= set(names), sorted(sources - set(names))
    for data in ("deform_robust/zoo.yaml", "deform_robust/py.typed", "fgr_defense/py.typed",
                 "torchattacks_deform/py.typed"):
        assert data in names
    entry = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "deform-robust = deform_robust.cli:main" in entry


def test_readme_three_lines_run_from_the_wheel(installed: dict[str, Path]) -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n(from torchattacks_deform import evaluate_robustness\n.*?)```", text, re.S)
    assert block is not None, "the README's three-line example is missing"
    lines = [ln for ln in block.group(1).strip().splitlines() if ln.strip()]
    assert len(lines) == 3
    setup = ("import torch, torchattacks_deform, fgr_defense, deform_robust\n"
             "from fgr_defense import SmallCNN, load_mnist5k\n"
             "import deform_robust.training, deform_robust.cli\n"
             "for m in (torchattacks_deform, fgr_defense, deform_robust, deform_robust.training, deform_robust.cli):\n"
             "    assert m.__file__.startswith({!r}), m.__file__\n"
             "torch.manual_seed(0)\n"
             "model = SmallCNN(width=8).eval()\n"
             "images, labels = load_mnist5k(train=False)\n"
             "images, labels = images[:8], labels[:8]\n").format(str(installed["site"]))
    code = setup + "\n".join(lines).replace("eps=0.5)", "eps=0.5, attacks='fast')") + "\n"
    out = _run([sys.executable, "-c", code], installed)
    assert out.returncode == 0, out.stderr
    assert re.search(r"clean", out.stdout) and re.search(r"worst", out.stdout), out.stdout
    assert not (installed["work"] / "EVAL_PY_WAS_IMPORTED").exists()


def test_console_script_evaluates_a_user_pt_file(installed: dict[str, Path], trained_model: nn.Module,
                                                  mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test
    data, ckpt = installed["work"] / "mine.pt", installed["work"] / "model.pt"
    torch.save({"images": x[:12].clone(), "labels": y[:12].clone()}, data)
    save_model(trained_model, ckpt, {"name": "smallcnn16", "in_channels": 1, "num_classes": 10, "size": 28})
    script = installed["site"] / "bin" / "deform-robust"
    assert script.is_file()
    out = _run([sys.executable, str(script), "evaluate", "--model", str(ckpt), "--data", str(data), "--eps", "0.5",
                "--attacks", "fast", "--device", "cpu", "--no-progress"], installed)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "clean %" in line)
    assert "worst case %" in header and "FlowAPGD-CE" in header
    assert not (installed["work"] / "EVAL_PY_WAS_IMPORTED").exists()
    helped = _run([sys.executable, str(script), "--help"], installed)
    assert helped.returncode == 0 and "examples:" in helped.stdout
