"""Reliability of the flow attacks: one test per item of the "Reliability" issue.

Every numeric parameter is finite and in range (errors name it), the model's output is
checked, labels are checked against the number of classes, ``set_normalization_used`` is
checked, and the inputs that used to kill the Python process (SIGSEGV in PyTorch's CPU
``grid_sample`` backward on a non-finite grid) now raise a ``ValueError`` instead; those run
in subprocesses so that a regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from torchattacks_deform import (
    FlowAutoAttack,
    FlowES,
    FlowFGSM,
    FlowPGD,
    FlowSquare,
    StAdv,
    flow_smoothness_loss,
    normalized_to_pixels,
    pixels_to_normalized,
    project_flow,
    warp,
)
from torchattacks_deform._base import FlowAttack

PRELUDE = """
import torch
from torch import nn
from torchattacks_deform import FlowPGD, StAdv, warp
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 3))
x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = m
    def forward(self, z):
        return self.inner(z) * float("nan")
"""

# name -> (code that used to crash the process, regex the error must match)
CRASHES = {
    "FlowPGD eps=inf": ("FlowPGD(m, eps=float('inf'), steps=2)(x, y)", r"ValueError: eps: expected a finite"),
    "FlowPGD alpha=inf": ("FlowPGD(m, alpha=float('inf'), steps=2)(x, y)", r"ValueError: alpha: expected a finite"),
    "StAdv tau=inf": ("StAdv(m, tau=float('inf'), steps=2)(x, y)", r"ValueError: tau: expected a finite"),
    "StAdv lr=inf": ("StAdv(m, lr=float('inf'), steps=2)(x, y)", r"ValueError: lr: expected a finite"),
    "StAdv NaN logits": ("StAdv(NaNModel(), steps=2)(x, y)",
                         r"ValueError: model output: expected finite logits .*NaN or inf for 4 of 4 examples"),
    "StAdv std=0": ("a = StAdv(m, steps=2); a.set_normalization_used([0.5], [0]); a((x - 0.5) / 0.2, y)",
                    r"ValueError: std\[0\]: expected a finite number > 0"),
    "warp NaN flow backward": (
        "v = torch.full((4, 2, 4, 4), float('nan'), requires_grad=True); warp(x, v).sum().backward()",
        r"ValueError: flow: expected finite values, got NaN or inf in 128 of 128 components"),
}


@pytest.fixture(scope="module")
def crash_results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every former crash case in its own interpreter, concurrently (one torch import each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-c", PRELUDE + code], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for name, (code, _) in CRASHES.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("name", list(CRASHES))
def test_former_crashes_raise_instead(name: str, crash_results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    import re

    result = crash_results[name]
    assert result.returncode not in (-11, 139), f"{name}: the process crashed (SIGSEGV)"
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # an uncaught Python exception
    assert re.search(CRASHES[name][1], result.stderr), result.stderr[-2000:]


# -- fixtures for the in-process tests ---------------------------------------------------------

def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture()
def data() -> tuple[Tensor, Tensor]:
    torch.manual_seed(1)
    return torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])


FACTORIES: dict[str, Callable[[nn.Module], FlowAttack]] = {
    "FlowFGSM": lambda m: FlowFGSM(m, eps=0.5),
    "FlowPGD": lambda m: FlowPGD(m, eps=0.5, steps=2, restarts=2),
    "StAdv": lambda m: StAdv(m, steps=2, bound=0.5),
    "FlowES": lambda m: FlowES(m, eps=0.5, population=4, steps=2),
    "FlowSquare": lambda m: FlowSquare(m, eps=0.5, queries=6),
    "FlowAutoAttack": lambda m: FlowAutoAttack(m, eps=0.5, version="fast"),
}

# (class, parameter, bad value, exception, message regex)
BAD_PARAMS: list[tuple[Any, str, Any, type, str]] = []
for _cls, _params in [
    (FlowFGSM, ["eps"]),
    (FlowPGD, ["eps", "alpha"]),
    (StAdv, ["tau", "lr", "bound", "smooth_eps"]),
    (FlowES, ["eps", "sigma", "alpha"]),
    (FlowSquare, ["eps", "p_init"]),
    (FlowAutoAttack, ["eps"]),
]:
    for _p in _params:
        BAD_PARAMS += [(_cls, _p, math.inf, ValueError, rf"^{_p}: expected a finite number"),
                       (_cls, _p, -math.inf, ValueError, rf"^{_p}: expected a finite number"),
                       (_cls, _p, math.nan, ValueError, rf"^{_p}: expected a finite number"),
                       (_cls, _p, -1.0, ValueError, rf"^{_p}: expected a finite number"),
                       (_cls, _p, "1", TypeError, rf"^{_p}: expected a finite number")]
for _cls, _p, _min in [(FlowPGD, "steps", 0), (FlowPGD, "restarts", 1), (StAdv, "steps", 0), (FlowES, "steps", 0),
                       (FlowES, "max_batch", 1), (FlowSquare, "queries", 2), (FlowSquare, "seed", 0)]:
    BAD_PARAMS += [(_cls, _p, _min - 1, ValueError, rf"^{_p}: expected an int >= {_min}"),
                   (_cls, _p, math.inf, TypeError, rf"^{_p}: expected an int"),
                   (_cls, _p, 2.0, TypeError, rf"^{_p}: expected an int"),
                   (_cls, _p, True, TypeError, rf"^{_p}: expected an int")]
BAD_PARAMS += [
    (StAdv, "kappa", math.inf, ValueError, r"^kappa: .*None"),
    (StAdv, "kappa", -1.0, ValueError, r"^kappa: expected a finite number >= 0"),
    (StAdv, "smooth_eps", 0.0, ValueError, r"^smooth_eps: expected a finite number > 0"),
    (StAdv, "clip_positions", 1, TypeError, r"^clip_positions: expected True or False"),
    (FlowPGD, "random_start", "yes", TypeError, r"^random_start: expected True or False"),
    (FlowPGD, "loss", "dlr", ValueError, r"^loss: expected one of \('ce', 'margin'\)"),
    (FlowFGSM, "loss", "dlr", ValueError, r"^loss: expected one of"),
    (FlowPGD, "padding_mode", "wrap", ValueError, r"^padding_mode: expected one of"),
    (FlowES, "population", 3, ValueError, r"^population: expected an even number"),
    (FlowES, "population", math.nan, TypeError, r"^population: expected an int"),
    (FlowSquare, "p_init", 1.5, ValueError, r"^p_init: expected a fraction in \(0, 1\]"),
    (FlowSquare, "p_init", 0.0, ValueError, r"^p_init: expected a fraction in \(0, 1\]"),
    (FlowAutoAttack, "version", "plus", ValueError, r"^version: expected one of"),
    (FlowAutoAttack, "norm", "L1", ValueError, r"^norm: expected one of"),
]


@pytest.mark.parametrize(("cls", "param", "value", "exc", "match"), BAD_PARAMS,
                         ids=[f"{c.__name__}-{p}-{v!r}" for c, p, v, _, _ in BAD_PARAMS])
def test_every_numeric_parameter_is_finite_and_in_range(cls: Any, param: str, value: Any, exc: type,
                                                       match: str) -> None:
    with pytest.raises(exc, match=match):
        cls(tiny(), **{param: value})


def test_kappa_none_means_unclamped(data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    assert StAdv(tiny(), kappa=None).kappa is None
    assert StAdv.pat(tiny(), image_size=32).kappa is None
    assert StAdv.multirobustbench(tiny(), image_size=32).kappa is None
    StAdv(tiny(), kappa=None, steps=2)(x, y)


def test_function_parameters_are_finite() -> None:
    v = torch.zeros(2, 2, 3, 3)
    for eps in (math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match="^eps: expected a finite"):
            project_flow(v, eps)
        with pytest.raises(ValueError, match="^eps: expected finite non-negative budgets"):
            project_flow(v, torch.tensor([0.5, eps]))
        with pytest.raises(ValueError, match="^eps: expected a finite"):
            flow_smoothness_loss(v, eps=eps)
        if eps != -1.0:  # displacements may be negative
            with pytest.raises(ValueError, match="^value: expected a finite"):
                pixels_to_normalized(eps, 32)
            with pytest.raises(ValueError, match="^value: expected a finite"):
                normalized_to_pixels(eps, 32)
    with pytest.raises(ValueError, match=r"^eps: expected .*\(2,\) tensor"):
        project_flow(v, torch.ones(3))
    with pytest.raises(TypeError, match="^eps: expected a finite number"):
        project_flow(v, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^align_corners: expected True or False"):
        normalized_to_pixels(1.0, 32, align_corners=1)  # type: ignore[arg-type]
    # a budget beyond the dtype's range bounds nothing (it used to raise a RuntimeError)
    assert torch.equal(project_flow(torch.ones(1, 2, 2, 2), 1e39), torch.ones(1, 2, 2, 2))


def test_warp_refuses_non_finite_flow_and_images() -> None:
    x = torch.rand(2, 1, 4, 4)
    for bad in (math.nan, math.inf, -math.inf):
        v = torch.zeros(2, 2, 4, 4)
        v[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match=r"^flow: expected finite values, got NaN or inf in 1 of 64"):
            warp(x, v)
        xb = x.clone()
        xb[0, 0, 1, 1] = bad
        with pytest.raises(ValueError, match=r"^images: expected finite values, got NaN or inf in 1 of 32"):
            warp(xb, torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"^flow: expected displacements of at most .* px"):
        warp(x, torch.full((2, 2, 4, 4), 3e38))  # finite, but the sampling positions overflow float32


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("output", ["nan", "inf", "rank1", "rank3", "one_class", "tuple", "int"])
def test_model_output_is_checked(name: str, output: str, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    inner = tiny()

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: Tensor) -> Any:
            out = self.inner(z)
            if output == "nan":
                return torch.where(torch.arange(z.shape[0])[:, None] < 3, out * math.nan, out)
            return {"inf": lambda: out + math.inf, "rank1": lambda: out[:, 0], "rank3": lambda: out[:, :, None],
                    "one_class": lambda: out[:, :1], "tuple": lambda: (out,),
                    "int": lambda: out.round().long()}[output]()

    match = {"nan": r"^model output: expected finite logits of shape \(6, K\).*NaN or inf for 3 of 6 examples",
             "inf": r"^model output: .*NaN or inf for 6 of 6 examples", "rank1": r"^model output: .*got shape \(6,\)",
             "rank3": r"^model output: .*got shape \(6, 3, 1\)", "one_class": r"^model output: .*K >= 2.*\(6, 1\)",
             "tuple": r"^model output: .*got tuple", "int": r"^model output: .*floating point"}[output]
    with pytest.raises((ValueError, TypeError), match=match):
        FACTORIES[name](Bad())(x, y)


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("bad", [-100, -1, 3, 1000])
def test_labels_checked_against_the_classes(name: str, bad: int, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    y = y.clone()
    y[4] = bad
    match = r"^labels: expected (non-negative class indices|class indices in \[0, 2\] \(the model has 3 outputs\))"
    with pytest.raises(ValueError, match=match):
        FACTORIES[name](tiny())(x, y)
    with pytest.raises(ValueError, match=match):
        FACTORIES[name](tiny()).get_flow(x, y)


@pytest.mark.parametrize("name", ["FlowFGSM", "FlowPGD", "StAdv", "FlowES"])
def test_target_labels_checked_too(name: str, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    atk = FACTORIES[name](tiny())
    atk.set_mode_targeted_by_function(lambda images, labels: labels + 2, quiet=True)
    with pytest.raises(ValueError, match=r"^target labels: expected class indices in \[0, 2\]"):
        atk(x, y)
    atk.set_mode_targeted_by_label(quiet=True)
    with pytest.raises(ValueError, match=r"^labels: expected non-negative"):
        atk(x, torch.full((6,), -100))


def test_minus_100_no_longer_returns_the_input(data: tuple[Tensor, Tensor]) -> None:
    """It used to: cross-entropy ignores -100, so the gradient was zero and nothing moved."""
    x, _ = data
    for atk in (FlowFGSM(tiny()), FlowPGD(tiny(), steps=1)):
        with pytest.raises(ValueError, match="ignore_index"):
            atk(x, torch.full((6,), -100))


def test_set_normalization_used_is_checked(data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    atk = FlowFGSM(tiny())
    for mean, std, exc, match in [([0.5], [0.0], ValueError, r"^std\[0\]: expected a finite number > 0"),
                                  ([0.5], [-0.1], ValueError, r"^std\[0\]: expected a finite number > 0"),
                                  ([0.5], [math.inf], ValueError, r"^std\[0\]: expected a finite"),
                                  ([math.nan], [0.2], ValueError, r"^mean\[0\]: expected a finite number"),
                                  ([0.5, 0.5], [0.2], ValueError, r"^set_normalization_used: .*same length"),
                                  ([], [], TypeError, r"^mean: expected a non-empty sequence"),
                                  ("abc", [0.2], TypeError, r"^mean: expected a non-empty sequence")]:
        with pytest.raises(exc, match=match):
            atk.set_normalization_used(mean, std)
    assert atk.normalization_used is None  # nothing half-set
    atk.set_normalization_used(np.array([0.5]), torch.tensor([0.25]))  # arrays and tensors are fine
    atk(((x - 0.5) / 0.25), y)
    three = FlowFGSM(tiny())
    three.set_normalization_used([0.5] * 3, [0.2] * 3)
    match = r"^set_normalization_used: mean/std have 3 values; expected 1 or one per channel of images \(1 channels\)"
    with pytest.raises(ValueError, match=match):
        three(x, y)
    with pytest.raises(ValueError, match=match):
        three.get_flow(x, y)
    with pytest.raises(ValueError, match=r"^images: expected rank 4"):
        three(x[:, 0], y)  # checked before torchattacks' inverse normalization broadcasts it


def test_images_dtype_must_match_the_model(data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    with pytest.raises(TypeError, match=r"^images: expected dtype torch.float32 like the model's parameters"):
        FlowPGD(tiny(), steps=1)(x.double(), y)
    atk = FlowPGD(tiny(), steps=1)
    atk.set_precision(torch.bfloat16)  # autocast takes bfloat16 inputs too
    assert atk(x.bfloat16(), y).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"^images: expected dtype torch.float32"):
        atk(x.double(), y)


def test_a_diverging_attack_names_itself_and_the_flow(data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    with pytest.raises(ValueError, match=r"^eps: expected a finite number in \[0, 10000\], got 1e\+39"):
        FlowPGD(tiny(), eps=1e39, steps=2)  # such a budget is refused before it can diverge
    flow = torch.full((x.shape[0], 2, *x.shape[2:]), float("inf"))
    with pytest.raises(ValueError, match=r"^FlowPGD: its iterate diverged \(flow: expected finite values"):
        FlowPGD(tiny(), steps=2).warp(x, flow)
    with pytest.raises(ValueError, match=r"^lr: expected at most 3.4e\+38"):
        StAdv(tiny(), lr=1e39, steps=2)(x, y)
