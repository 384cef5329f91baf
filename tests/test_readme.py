"""The README's Python examples run as written (the RobustBench one up to its offline check)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


#: What each README Python block must call, in order; each has a test below that runs it.
RUN_BY_A_TEST = ("evaluate_robustness(", "FlowPGD(", "Trainer(", "load_robustbench_model(")


def test_every_python_block_is_run_by_a_test() -> None:
    """A new or reordered README example fails here until a test runs it (no example goes unrun)."""
    blocks = python_blocks()
    assert len(blocks) == len(RUN_BY_A_TEST), "a README Python block without a test that runs it"
    for block, call in zip(blocks, RUN_BY_A_TEST):
        assert call in block, f"expected the README block that calls {call} here"
        compile(block, "README.md", "exec")


def test_readme_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    bash = next(b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "make demo" in b)
    assert [line.split("#")[0].strip() for line in bash.strip().splitlines()] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def test_three_line_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from fgr_defense import SmallCNN, load_mnist5k

    torch.manual_seed(0)
    images, labels = load_mnist5k(train=False)
    scope = {"model": SmallCNN(width=8).eval(), "images": images[:8], "labels": labels[:8]}
    exec(compile(python_blocks()[0], "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "clean" in out and "worst" in out
    report = scope["report"]
    assert report.n == 8 and 0.0 <= report.worst_case_accuracy <= min(report.robust_accuracy.values())


def test_attack_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_blocks()[1], "README.md", "exec"), {})
    out = capsys.readouterr().out
    acc = float(out.split("robust accuracy:")[1])
    assert 0.0 <= acc <= 1.0


def test_training_example_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    block = python_blocks()[2].replace("epochs=2", "epochs=1")  # half the time; same code path
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "'acc'" in out


def test_robustbench_example_fails_offline_naming_the_file(tmp_path: Path) -> None:
    block = python_blocks()[3].replace('model_dir="models"', f"model_dir={str(tmp_path)!r}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cifar10" / "Linf" / "Standard.pt"))):
        exec(compile(block, "README.md", "exec"), {})


def test_paper_lambda_statement_matches_the_code() -> None:
    from fgr_defense import FGR

    text = README.read_text(encoding="utf-8")
    assert "weight = lam * ((W - 1) / 2)**2 / B**2" in text
    reg = FGR.from_paper(lam=300, batch_size=128, image_size=32, sigma_normalized=0.01)
    assert f"gives weight\n{reg.weight:.2f}" in text or f"gives weight {reg.weight:.2f}" in text
