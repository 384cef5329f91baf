"""The masking check's benchmark: a masked model blinds gradients; finds counted by FlowES's queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.flow_es_masking import InputQuantized, main, query_cuts, render, run


def test_input_quantized_rounds_and_has_a_zero_input_gradient() -> None:
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    out = InputQuantized(inner, levels=4)(x)
    torch.testing.assert_close(out, inner(torch.round(x.detach() * 4) / 4))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_run_counts_finds_by_queries_and_leaves_no_debris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.flow_attacks as fa
    from deform_robust.data import load_test_data

    data = load_test_data("mnist5k", n=8)
    linear = torch.nn.Linear(784, 10, bias=False)  # templates of the 8 test images: most classified correctly
    with torch.no_grad():
        linear.weight.zero_().index_add_(0, data.labels, data.images.flatten(1))
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    monkeypatch.setattr(fa, "_models", lambda out, device: [("m", model)])
    result = run(tmp_path, budgets=(1.0,), images=(0, 8), progress=False)
    (row,) = result["rows"]
    within = [row["es_within"][str(c)] for c in query_cuts(20, 100)]
    assert within == sorted(within) and within[-1] <= row["FlowES"] <= row["clean"] <= 8
    assert row["es_queries"] == 2001 and row["FlowAPGD-CE"] <= row["clean"]
    assert 0 <= row["FlowSquare 1000"] <= row["clean"] and 0 <= row["FlowSquare 2000"] <= row["clean"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masking.json"]  # no partial, lock or temporaries
    assert main(["--out", str(tmp_path), "--render"]) == 0
    assert "| m | 1 | " in (tmp_path / "masking.md").read_text()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "none"), "--render"])


def test_render_says_what_a_smaller_check_would_have_found() -> None:
    def row(m: str, within: tuple[int, int, int]) -> dict[str, Any]:
        return {"model": m, "eps": 0.5, "n": 10, "clean": 9, "FlowAPGD-CE": 0, "FlowES": within[-1],
                "es_queries": 2001, "es_within": dict(zip(map(str, query_cuts(20, 100)), within))}

    text = render({"command": "c", "git_revision": "r", "machine": "x", "wall_s": 3.0, "images": [200, 320],
                   "rows": [row("a", (1, 2, 4)), row("b", (2, 3, 4))]})
    assert "| **total** | | 18 | 0 | **3** | **5** | **8** |" in text
    assert "A check of 500 queries would have fooled 3 of the 8 examples the full check fooled (62% fewer)." in text
    assert "A check of 1,000 queries would have fooled 5 of the 8" in text and "MNIST-5k test images 200-319" in text
