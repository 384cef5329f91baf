"""Fuzzing: random shapes, dtypes, non-finite values and parameters never crash, never leak an
internal error, and every refusal names the argument it refuses.

Only ``ValueError``/``TypeError`` may come out of :func:`warp`, :func:`project_flow`,
:func:`flow_norm` and of each attack's constructor and call (on a tiny model), and the message
must start with the argument's name (``"eps: ..."``, ``"images: ..."``). Valid inputs must give
finite outputs of the right shape. A SIGSEGV would kill the run, so "never a crash" is implied.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from torchattacks_deform import (
    FlowAutoAttack,
    FlowES,
    FlowFGSM,
    FlowPGD,
    FlowSquare,
    StAdv,
    flow_norm,
    project_flow,
    warp,
)

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]
SPECIALS = [math.nan, math.inf, -math.inf]


def prefix(err: Exception) -> str:
    """The argument named by a message: everything before the first ``": "``."""
    return str(err).split(": ", 1)[0]


def odd(draw: Any, one_in: int) -> bool:
    """True about once in ``one_in`` draws; the simplest example (what shrinking aims at) is False."""
    return bool(draw(st.integers(0, one_in - 1)) == one_in - 1)


@st.composite
def tensors(draw: Any, shape: Any = None, dtype: Any = None, lo: float = -3.0, hi: float = 3.0) -> Tensor:
    """A tensor of a random (or given) shape and dtype, sometimes with one NaN or infinity."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=5)))
    dtype = dtype if dtype is not None else draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    if t.numel() and dtype.is_floating_point and odd(draw, 4):
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    if dtype == torch.bool:
        return t > 0
    return t.to(dtype) if dtype.is_floating_point else t.round().clamp(0, 100).to(dtype)


def dtypes(draw: Any) -> torch.dtype:
    """A floating dtype mostly, any of :data:`DTYPES` sometimes."""
    return draw(st.sampled_from(DTYPES)) if odd(draw, 5) else draw(st.sampled_from([torch.float32, torch.float64,
                                                                                   torch.float16]))


@st.composite
def image_and_flow(draw: Any) -> tuple[Tensor, Tensor]:
    """Mostly well-formed (B, C, H, W) images with a matching flow, sometimes anything."""
    b, c, h, w = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(2, 5)), draw(st.integers(2, 5)))
    if odd(draw, 6):  # degenerate sizes
        b, c, h, w = draw(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5), st.integers(0, 5)))
    dtype = dtypes(draw)
    images = draw(tensors() if odd(draw, 6) else tensors(shape=(b, c, h, w), dtype=dtype, lo=0, hi=1))
    flow_dtype = draw(st.sampled_from(DTYPES)) if odd(draw, 5) else dtype
    flow = draw(tensors() if odd(draw, 6) else tensors(shape=(b, 2, h, w), dtype=flow_dtype))
    if flow.is_floating_point() and flow.numel() and odd(draw, 6):
        flow = flow * 1e38  # finite but huge (overflows float32 positions; inf in float16)
    return images, flow


@FUZZ
@given(image_and_flow(), st.sampled_from(["border", "zeros", "reflection", "wrap", None]),
       st.sampled_from(["bilinear", "nearest", "bicubic", 1]))
def test_warp(pair: tuple[Tensor, Tensor], padding_mode: Any, mode: Any) -> None:
    images, flow = pair
    if flow.is_floating_point():
        flow = flow.clone().requires_grad_(True)
    try:
        out = warp(images, flow, padding_mode=padding_mode, mode=mode)
    except (ValueError, TypeError) as err:
        assert prefix(err) in ("images", "flow", "padding_mode", "mode"), err
        return
    assert out.shape == images.shape and out.dtype == images.dtype and bool(torch.isfinite(out).all())
    if out.numel():
        (grad,) = torch.autograd.grad(out.sum(), flow)  # the backward that used to SIGSEGV
        assert grad.shape == flow.shape


EPS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.sampled_from(["1", None, True]),
                st.builds(lambda v: torch.tensor(v), st.lists(st.floats(-1, 3) | st.sampled_from(SPECIALS),
                                                             max_size=3)))


@FUZZ
@given(image_and_flow(), EPS, st.sampled_from(["Linf", "L2", "L1", 2]))
def test_project_flow_and_flow_norm(pair: tuple[Tensor, Tensor], eps: Any, norm: Any) -> None:
    _, flow = pair
    try:
        out = project_flow(flow, eps, norm)
    except (ValueError, TypeError) as err:
        assert prefix(err) in ("flow", "eps", "norm"), err
    else:
        assert out.shape == flow.shape
        finite = torch.isfinite(flow).all(dim=(1, 2, 3)) if flow.shape[0] else flow.new_ones(0, dtype=torch.bool)
        bound = torch.as_tensor(eps, dtype=torch.float64).expand(flow.shape[0])
        size = flow_norm(out, norm).double()
        tol = 1e-2 * (1 + bound) if flow.dtype == torch.float16 else 1e-5 * (1 + bound)
        assert bool((size[finite] <= bound[finite] + tol[finite]).all())
    try:
        size = flow_norm(flow, norm)
    except (ValueError, TypeError) as err:
        assert prefix(err) in ("flow", "norm"), err
    else:
        assert size.shape == (flow.shape[0],)


# -- attacks -------------------------------------------------------------------------------------

NUMBER = st.one_of(st.floats(0.01, 2), st.floats(0.01, 2), st.floats(0.01, 2),
                   st.sampled_from([0, 1, -1.0, 1e39, math.nan, math.inf, -math.inf, "1", None, True]))
COUNT = st.one_of(st.integers(1, 3), st.integers(1, 3), st.sampled_from([0, -1, 2.0, math.inf, "2", None, False]))
# (always drawn, sometimes drawn): the counts are always drawn (small) to keep the runs fast
PARAMS: dict[Any, tuple[dict[str, Any], dict[str, Any]]] = {
    FlowFGSM: ({}, {"eps": NUMBER, "norm": st.sampled_from(["Linf", "L2", "L0"]),
                    "loss": st.sampled_from(["ce", "margin", "x"])}),
    FlowPGD: ({"steps": COUNT}, {"eps": NUMBER, "alpha": NUMBER, "restarts": COUNT,
                                 "random_start": st.sampled_from([True, False, 1]),
                                 "norm": st.sampled_from(["Linf", "L2", "L0"]), "loss": st.sampled_from(["ce", "margin", "x"])}),
    StAdv: ({"steps": COUNT}, {"tau": NUMBER, "lr": NUMBER, "kappa": NUMBER, "bound": NUMBER, "smooth_eps": NUMBER,
                               "clip_positions": st.sampled_from([True, False, "no"])}),
    FlowES: ({"steps": COUNT, "population": st.sampled_from([2, 4, 2, 4, 3, 0, -2, 4.0, "4"])},
             {"eps": NUMBER, "sigma": NUMBER, "alpha": NUMBER, "max_batch": st.sampled_from([1, 7, 4096, 0, -1, 2.5])}),
    FlowSquare: ({"queries": st.one_of(st.integers(2, 6), st.sampled_from([1, 0, 2.0, math.inf, "2", None, False]))},
                 {"eps": NUMBER, "p_init": NUMBER, "seed": st.sampled_from([0, 3, None, -1, 1.5])}),
    FlowAutoAttack: ({"version": st.sampled_from(["custom"] * 6 + ["fast", "plus"])},
                     {"eps": NUMBER, "norm": st.sampled_from(["Linf", "L2", "L0"])}),
}
CALL_NAMES = ("images", "labels", "target labels", "flow", "model output", "lr", "set_normalization_used",
              "FlowFGSM", "FlowPGD", "StAdv", "FlowES", "FlowSquare")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # any H, W; K = 3


@st.composite
def attack_inputs(draw: Any) -> tuple[Tensor, Tensor]:
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    if odd(draw, 8):
        b, h, w = draw(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 5)))
    dtype = dtypes(draw) if odd(draw, 4) else torch.float32
    images = draw(tensors(dtype=dtype) if odd(draw, 8) else tensors(shape=(b, 1, h, w), dtype=dtype, lo=0, hi=1))
    if odd(draw, 8):
        labels = draw(tensors(shape=(b,), lo=-2, hi=4) if odd(draw, 2) else tensors())
    else:
        labels = draw(tensors(shape=(b,), dtype=torch.int64, lo=0, hi=2))
    return images, labels


@pytest.mark.parametrize("cls", list(PARAMS), ids=lambda c: c.__name__)
def test_attack_constructor_and_call(cls: Any) -> None:
    @FUZZ
    @given(st.fixed_dictionaries(PARAMS[cls][0], optional=PARAMS[cls][1]), attack_inputs(), st.integers(0, 3))
    def run(kwargs: dict[str, Any], inputs: tuple[Tensor, Tensor], targeted: int) -> None:
        model = tiny()
        if kwargs.get("version") == "custom":
            kwargs["attacks"] = [FlowFGSM(model, eps=0.5), FlowPGD(model, eps=0.5, steps=2)]
        try:
            atk = cls(model, **kwargs)
        except (ValueError, TypeError) as err:
            assert prefix(err).split("[")[0] in (*kwargs, "model"), (kwargs, err)  # attacks[i]: a member
            return
        if targeted == 3 and cls is not FlowAutoAttack:
            atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 4, quiet=True)
        images, labels = inputs
        try:
            adv = atk(images, labels)
        except (ValueError, TypeError) as err:
            assert prefix(err) in CALL_NAMES, (kwargs, err)
            return
        assert adv.shape == images.shape and bool(torch.isfinite(adv).all())
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1

    run()
