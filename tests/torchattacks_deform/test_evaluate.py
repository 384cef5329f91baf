"""evaluate_robustness: the three-line entry point, its report, its inputs and its semantics."""

from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
import torchattacks
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from torchattacks_deform import FlowFGSM, FlowPGD, RobustnessReport, evaluate_robustness, warp


def cheap(model: nn.Module) -> dict:
    """Deterministic attacks (no random start), so that runs can be compared exactly."""
    return {"fgsm": FlowFGSM(model, eps=0.5), "pgd": FlowPGD(model, eps=0.5, steps=3, random_start=False)}


class Recording(nn.Module):
    """Records the range of every input; the evaluated model takes [0, 1] images."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.lo, self.hi = inner, math.inf, -math.inf

    def forward(self, x: Tensor) -> Tensor:
        self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        return self.inner(x)  # type: ignore[no-any-return]


@pytest.fixture()
def model(trained_model: nn.Module) -> nn.Module:
    return copy.deepcopy(trained_model)


@pytest.fixture()
def data(mnist_test: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    x, y = mnist_test[0][:24].clone(), mnist_test[1][:24].clone()
    y[:3] = (y[:3] + 1) % 10  # three certainly misclassified examples
    return x, y


def test_three_lines(model: nn.Module, data: tuple[Tensor, Tensor], capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = data
    torch.manual_seed(0)
    report = evaluate_robustness(model, images, labels, eps=0.5, attacks="fast")
    print(report)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "Flow robustness: 24 examples, Linf eps = 0.5 px, FlowAutoAttack 'fast', attacks run independently"
    assert report.suite == "fast" and report.to_dict()["suite"] == "fast"
    assert [ln.split()[0] for ln in lines[1:-1]] == ["clean", "FlowAPGD-CE", "FlowAPGD-T", "StAdv", "FlowSquare", "worst"]
    assert f"{100 * report.clean_accuracy:5.1f}%" in lines[1] and f"{100 * report.worst_case_accuracy:5.1f}%" in lines[-2]
    assert lines[-1].startswith("  per class, clean -> worst case %: 0: ")  # the compact per-class line
    assert isinstance(report, RobustnessReport) and report.n == 24 and report.clean_accuracy <= 21 / 24
    assert set(report.queries) == set(report.robust_accuracy) and report.queries["FlowSquare"] > 1


def test_report_is_consistent(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    r = evaluate_robustness(model, x, y, attacks=cheap(model))
    cc, fgsm, pgd = r.clean_correct, r.success["fgsm"], r.success["pgd"]
    assert cc.shape == (24,) and cc.dtype == torch.bool and not bool(cc[:3].any())
    assert not bool((fgsm & ~cc).any()) and not bool((pgd & ~cc).any())  # only clean-correct ones are attacked
    assert torch.equal(r.robust, cc & ~fgsm & ~pgd)
    assert r.robust_accuracy == {"fgsm": int((cc & ~fgsm).sum()) / 24, "pgd": int((cc & ~pgd).sum()) / 24}
    assert r.worst_case_accuracy == float(r.robust.float().mean()) <= min(r.robust_accuracy.values())
    assert r.attacked == {"fgsm": int(cc.sum()), "pgd": int(cc.sum())} and r.queries["pgd"] == 3.0
    assert r.flows is not None and r.flows.shape == (24, 2, 28, 28)
    assert torch.equal(r.flows[~(fgsm | pgd)], torch.zeros(int((~(fgsm | pgd)).sum()), 2, 28, 28))
    with torch.no_grad():  # the worst-case flows fool the model
        assert bool((model(warp(x, r.flows).clamp(0, 1)).argmax(1)[fgsm | pgd] != y[fgsm | pgd]).all())
    # independent: each attack's number is that attack alone on the clean-correct examples
    flow = FlowPGD(model, eps=0.5, steps=3, random_start=False).get_flow(x[cc], y[cc])
    with torch.no_grad():
        alone = model(warp(x[cc], flow).clamp(0, 1)).argmax(1) != y[cc]
    assert torch.equal(pgd[cc], alone)
    assert torch.equal(r.flows[fgsm], FlowFGSM(model, eps=0.5).get_flow(x[cc], y[cc])[fgsm[cc]])  # first success
    text = json.dumps(r.to_dict())
    assert '"per_attack": "independent"' in text and evaluate_robustness(
        model, x, y, attacks=cheap(model), return_flows=False).flows is None


def test_cascade_is_cumulative(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    r = evaluate_robustness(model, x, y, attacks=cheap(model), cascade=True)
    fgsm, pgd = r.success["fgsm"], r.success["pgd"]
    assert not bool((fgsm & pgd).any())  # the second attack only ran on what the first did not fool
    assert r.attacked["pgd"] == r.attacked["fgsm"] - int(fgsm.sum())
    assert r.robust_accuracy["fgsm"] >= r.robust_accuracy["pgd"] == r.worst_case_accuracy
    assert r.per_attack == "cumulative" and "cumulative" in str(r) and r.to_dict()["cascade"] is True
    independent = evaluate_robustness(model, x, y, attacks=cheap(model))
    assert torch.equal(r.success["fgsm"], independent.success["fgsm"])  # the first attack sees the same examples


def test_numpy_and_dataloader_inputs(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    ref = evaluate_robustness(model, x, y, attacks=cheap(model), batch_size=5)
    for images, labels in [(x.numpy(), y.numpy()), (x.numpy(), y.numpy().astype(np.uint8)), (x, y.tolist())]:
        r = evaluate_robustness(model, images, labels, attacks=cheap(model), batch_size=5)
        assert torch.equal(r.robust, ref.robust) and r.robust_accuracy == ref.robust_accuracy
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    r = evaluate_robustness(model, loader, attacks=cheap(model), batch_size=5)  # 10-batches split in two
    assert torch.equal(r.robust, ref.robust) and r.n == 24
    assert r.flows is not None and ref.flows is not None and torch.equal(r.flows, ref.flows)
    pairs = [(x[:12].numpy(), y[:12].numpy()), (x[12:], y[12:])]  # any iterable of pairs
    assert torch.equal(evaluate_robustness(model, pairs, attacks=cheap(model), batch_size=5).robust, ref.robust)


def test_input_errors(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    atk = cheap(model)
    cases = [
        (dict(images=(x.numpy() * 255).astype(np.uint8), labels=y), TypeError, r"^images: .*integer dtype uint8.*255"),
        (dict(images=(x * 255).to(torch.uint8), labels=y), TypeError, r"^images: .*divide by 255"),
        (dict(images=x * 2, labels=y), ValueError, r"^images: expected values in \[0, 1\]"),
        (dict(images=x[:, 0], labels=y), ValueError, r"^images: expected rank 4"),
        (dict(images=x, labels=None), ValueError, r"^labels: required with a tensor"),
        (dict(images=x, labels=y[:5]), ValueError, r"^labels: expected 24 labels"),
        (dict(images=x, labels=y.float().numpy()), TypeError, r"^labels: expected integer class indices"),
        (dict(images=x, labels=y + 10), ValueError, r"^labels: expected class indices in \[0, 9\]"),
        (dict(images=DataLoader(TensorDataset(x, y)), labels=y), ValueError, r"^labels: expected None when"),
        (dict(images=[x, y], labels=None), TypeError, r"^images: expected batches of \(images, labels\)"),
        (dict(images=[(x, y), (x[:, :, :5], y)], labels=None), ValueError, r"^images: expected every batch"),
        (dict(images="data.pt", labels=None), TypeError, r"^images: expected a float tensor or numpy array"),
        (dict(images=[], labels=None), ValueError, r"^images: expected at least one example"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            evaluate_robustness(model, attacks=atk, **kwargs)


def test_argument_errors(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    other = copy.deepcopy(model)
    normed = FlowFGSM(model)
    normed.set_normalization_used([0.1], [0.3])
    targeted = FlowFGSM(model)
    targeted.set_mode_targeted_by_label(quiet=True)
    cases = [
        (dict(eps=math.inf), ValueError, r"^eps: expected a finite number in \[0, 10000\]"),
        (dict(norm="L1"), ValueError, r"^norm: expected one of"),
        (dict(batch_size=0), ValueError, r"^batch_size: expected an int >= 1"),
        (dict(cascade="yes"), TypeError, r"^cascade: expected True or False"),
        (dict(progress=1), TypeError, r"^progress: expected True or False"),
        (dict(attacks="strong"), ValueError, r"^attacks: expected one of \('standard', 'fast', 'legacy'\)"),
        (dict(attacks=FlowFGSM(model)), TypeError, r"^attacks: expected 'standard', 'fast' or 'legacy', a list"),
        (dict(attacks=[]), ValueError, r"^attacks: expected at least one attack"),
        (dict(attacks=[lambda a, b: a]), TypeError, r"^attacks\[0\]: expected a FlowAttack"),
        (dict(attacks={"x": FlowFGSM(other)}), ValueError, r"^attacks\['x'\]: expected an attack on the evaluated"),
        (dict(attacks=[normed]), ValueError, r"^attacks\[0\]: expected no set_normalization_used"),
        (dict(attacks=[targeted]), ValueError, r"^attacks\[0\]: expected an untargeted attack"),
        (dict(attacks=[torchattacks.FGSM(model)], cascade=True), TypeError, r"^attacks\[0\]: cascade=True runs"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            evaluate_robustness(model, x, y, **kwargs)
    with pytest.raises(TypeError, match=r"^model: expected a torch.nn.Module"):
        evaluate_robustness(lambda t: t, x, y)  # type: ignore[arg-type]

    class NaN(nn.Module):
        def forward(self, t: Tensor) -> Tensor:
            return model(t) * math.nan

    nan_model = NaN()
    with pytest.raises(ValueError, match=r"^model output: expected finite logits of shape \(24, K\)"):
        evaluate_robustness(nan_model, x, y, attacks=[FlowFGSM(nan_model, eps=0.5)])
    with pytest.raises(TypeError, match=r"^images: expected dtype torch.float32 like the model's"):
        evaluate_robustness(model, x.double(), y, attacks=cheap(model))


def test_mode_grads_and_inputs_untouched(model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    x0, y0 = x.clone(), y.clone()
    for training in (True, False):
        model.train(training)
        evaluate_robustness(model, x, y, attacks=cheap(model), cascade=not training)
        assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_model_sees_unnormalized_images_only(trained_model: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    """No normalization anywhere: the model gets [0, 1] images from every call (clean, attacks, checks)."""
    x, y = data
    net = Recording(trained_model)
    torch.manual_seed(0)
    evaluate_robustness(net, x, y, attacks="fast", cascade=True)
    assert 0 <= net.lo and net.hi <= 1 + 1e-6


def test_pixel_attacks_progress_device_logging(model: nn.Module, data: tuple[Tensor, Tensor],
                                               capsys: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    x, y = data
    attacks = {"pixel-FGSM": torchattacks.FGSM(model, eps=0.3), "flow-FGSM": FlowFGSM(model, eps=0.5)}
    with caplog.at_level(logging.INFO, logger="torchattacks_deform"):
        r = evaluate_robustness(model, x, y, attacks=attacks, batch_size=10, device="cpu", progress=True)
    assert "evaluate_robustness" in capsys.readouterr().err  # tqdm's bar (3 batches)
    assert any("evaluate_robustness" in rec.getMessage() for rec in caplog.records)
    assert set(r.queries) == {"flow-FGSM"} and set(r.time_s) == {"pixel-FGSM", "flow-FGSM"}
    assert r.success["pixel-FGSM"].any()  # a pixel attack counts, without a flow
    only_pixel = r.success["pixel-FGSM"] & ~r.success["flow-FGSM"]
    assert r.flows is not None and not bool(r.flows[only_pixel].any())
    evaluate_robustness(model, x, y, attacks=cheap(model), progress=None)  # one batch: no bar
    assert "evaluate_robustness" not in capsys.readouterr().err
