r"""The one flow convention of deform-robust, and the differentiable warp built on it.

Convention:
    - A flow is a tensor of shape ``(B, 2, H, W)`` in **pixel units**.
    - Channel 0 is the horizontal displacement (x, along columns, positive = to the right),
      channel 1 the vertical displacement (y, along rows, positive = downwards).
    - ``warp(x, flow)[b, c, i, j] = bilinear(x[b, c], row=i + flow[b, 1, i, j],
      col=j + flow[b, 0, i, j])``: each output pixel *reads* the input at its own
      location moved by the flow (backward warping, eq. (4) of Xia & Li).
    - The zero flow is exactly the identity: ``warp(x, zeros) == x`` bit for bit.
    - Budgets (``eps``) are in pixels. Published budgets in normalized grid units are
      converted with :func:`normalized_to_pixels` (``align_corners=True``: 1 px = 2/(W-1),
      as in the authors' FGR code; ``align_corners=False``: 1 px = 2/W, as in PAT and
      MultiRobustBench's StAdv).
    - ``flow_norm(flow, "Linf")`` is the largest absolute component of the flow;
      ``flow_norm(flow, "L2")`` is the Euclidean norm of the whole flow tensor of one
      example, i.e. :math:`\|v - v_0\|_2` of the paper.

Every function here is differentiable in both the images and the flow, works in float32 and
float64, and on any device PyTorch's ``grid_sample`` supports.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._compat import create_meshgrid
from ._flowcheck import _check_finite, check_flow
from .units import flow_to_normalized, flow_to_pixels, normalized_to_pixels, pixels_to_normalized
from .validation import check_choice, check_images, check_number

__all__ = [
    "NORMS",
    "Warp",
    "check_flow",
    "flow_norm",
    "flow_smoothness_loss",
    "flow_to_normalized",
    "flow_to_pixels",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "project_flow",
    "warp",
]

NORMS = ("Linf", "L2")
_PADDING_MODES = ("border", "zeros", "reflection")
_MODES = ("bilinear", "nearest")

Number = Union[float, int]


def _check_norm(norm: str) -> None:
    check_choice(norm, "norm", NORMS)


def warp(
    images: Tensor, flow: Tensor, padding_mode: str = "border", mode: str = "bilinear"
) -> Tensor:
    r"""Warp images by a per-pixel flow in pixel units (eq. (4) of the paper).

    .. math::
        x'[b, c, i, j] = \mathrm{bilinear}(x[b, c],\; i + v[b, 1, i, j],\; j + v[b, 0, i, j])

    Sampling goes through :func:`torch.nn.functional.grid_sample` with ``align_corners=True``
    on a grid built by kornia's pixel-grid helpers, so pixel ``k`` sits exactly at
    normalized coordinate ``2k/(size-1) - 1``.

    Convention:
        - ``images``: ``(B, C, H, W)``, any range; ``flow``: ``(B, 2, H, W)`` in pixels,
          channel 0 = x (columns, +right), channel 1 = y (rows, +down).
        - Zero flow returns the input exactly. ``grid_sample`` alone would return it up to
          float rounding of the normalized grid (about 1e-7), so where the flow of a pixel is
          exactly zero the value is replaced by the input value (the gradient is still the
          one of ``grid_sample``).
        - At an exactly integer sample position the derivative with respect to the flow is
          the one-sided slope that ``grid_sample`` picks; it is the piecewise-linear kink the
          paper's random start (eq. (16)) is designed to step off.

    Args:
        images: images to warp, shape ``(B, C, H, W)``, floating point.
        flow: displacement in pixels, shape ``(B, 2, H, W)``, same dtype and device.
        padding_mode: how samples outside the image are read: ``"border"`` (default, repeat
            the edge pixel), ``"zeros"`` or ``"reflection"``.
        mode: ``"bilinear"`` (default, eq. (4)) or ``"nearest"``.

    Returns:
        The warped images, shape ``(B, C, H, W)``, differentiable in ``images`` and ``flow``.

    Raises:
        TypeError: non-tensor or non-floating-point input.
        ValueError: wrong rank or shapes, mismatched flow, unknown mode, non-finite images, or
            a flow with NaN, inf or absurdly large components (beyond an eighth of the dtype's
            range); such flows crash PyTorch's CPU ``grid_sample`` backward.

    Note:
        The double backward of ``grid_sample`` with respect to the incoming gradient works
        in every PyTorch version, which is all that gradient regularizers of model
        parameters (FGR) need. The double backward with respect to the grid (hence
        :math:`\partial^2 x' / \partial v^2`) raised "derivative for
        grid_sampler_2d_backward is not implemented" in PyTorch up to at least 2.0
        (pytorch/pytorch#34704); recent releases implement it (torch 2.14 passes
        ``gradgradcheck``). ``tests/torchattacks_deform/test_flow.py`` checks which case the installed
        PyTorch is in, and that it is correct where it works.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> flow = torch.zeros(1, 2, 4, 4)
        >>> torch.equal(warp(x, flow), x)
        True
        >>> flow[:, 0] = 1.0  # every pixel reads its right-hand neighbour
        >>> warp(x, flow)[0, 0]
        tensor([[ 1.,  2.,  3.,  3.],
                [ 5.,  6.,  7.,  7.],
                [ 9., 10., 11., 11.],
                [13., 14., 15., 15.]])
    """
    check_images(images, layout_only=True)
    check_flow(flow, images)
    if flow.dtype != images.dtype or flow.device != images.device:
        raise TypeError(
            f"flow: expected dtype {images.dtype} on {images.device} like images, "
            f"got {flow.dtype} on {flow.device}"
        )
    check_choice(padding_mode, "padding_mode", _PADDING_MODES)
    check_choice(mode, "mode", _MODES)
    has_zero = _check_finite(images, flow)
    if images.shape[0] == 0:
        return images.clone()
    _, _, h, w = images.shape
    base, scale, offset = _grid_constants(h, w, images.device, images.dtype)  # each (1, 2, ., .)
    # kornia's normalize_pixel_coordinates(coords, h, w) is ``factor * coords + offset``; the
    # same two float operations on the channel-first layout give bit-identical values and
    # gradients, about 10x faster than on the (B, H, W, 2) view (innermost size 2).
    grid = ((base + flow) * scale + offset).permute(0, 2, 3, 1)
    if images.requires_grad:
        # grid_sample's CPU backward accumulates the image gradient in the grid's memory order.
        # Keep the (B, W, H, 2) memory layout the kornia-built grid had (one transposing copy),
        # so that image gradients stay bit-identical too; flow gradients and values do not
        # depend on the layout.
        grid = grid.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    out = F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    # Exact identity at zero flow: grid_sample's unnormalization ((g + 1) / 2 * (W - 1)) can
    # land 1 ulp off an integer; patch the value (not the gradient) of such pixels. Skip the
    # patch when no flow component is zero (then no pixel is still; the check above found out).
    if not has_zero:
        return out
    zero = flow == 0
    still = zero[:, :1] & zero[:, 1:]
    return torch.where(still, out + (images - out).detach(), out)


@functools.lru_cache(maxsize=16)
def _cached_grid_constants(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, even if first built in inference mode
        return _build_grid_constants(height, width, device, dtype)


def _build_grid_constants(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    base = create_meshgrid(height, width, device=device, dtype=dtype).permute(0, 3, 1, 2).contiguous()
    # kornia's normalize_pixel_coordinates: factor (2 / (W - 1), 2 / (H - 1)) rounded from
    # Python floats to ``dtype``, offset -1.
    factor = torch.tensor([2.0 / (width - 1.0), 2.0 / (height - 1.0)], device=device, dtype=dtype)
    offset = torch.full((1, 2, 1, 1), -1.0, device=device, dtype=dtype)
    return base, factor.reshape(1, 2, 1, 1), offset


def _grid_constants(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """``(base, factor, offset)`` of :func:`warp`, each ``(1, 2, ., .)``, channel 0 = x, 1 = y.

    ``base`` are the pixel coordinates from kornia's ``create_meshgrid``; ``factor * coords +
    offset`` is kornia's ``normalize_pixel_coordinates`` (``align_corners=True``).

    Cached per ``(H, W, device, dtype)`` in a bounded LRU cache (16 entries) rather than built
    for every warp (5 small ops plus a host-to-device copy, i.e. a CUDA sync, per call): the
    tensors are a pure function of that immutable key, carry no autograd history and are
    never written to (``warp`` only reads them, out of place), so sharing them is safe. Not
    cached while ``torch.compile``/``torch.jit`` trace (a traced value must not outlive the
    trace).
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return _build_grid_constants(height, width, device, dtype)
    return _cached_grid_constants(height, width, device, dtype)


class Warp(nn.Module):
    """Module form of :func:`warp`.

    Args:
        padding_mode: see :func:`warp`.
        mode: see :func:`warp`.

    Example:
        >>> Warp()(torch.rand(2, 3, 5, 5), torch.zeros(2, 2, 5, 5)).shape
        torch.Size([2, 3, 5, 5])
    """

    def __init__(self, padding_mode: str = "border", mode: str = "bilinear") -> None:
        check_choice(padding_mode, "padding_mode", _PADDING_MODES)
        check_choice(mode, "mode", _MODES)
        super().__init__()
        self.padding_mode = padding_mode
        self.mode = mode

    def forward(self, images: Tensor, flow: Tensor) -> Tensor:
        return warp(images, flow, padding_mode=self.padding_mode, mode=self.mode)


def flow_norm(flow: Tensor, norm: str = "Linf") -> Tensor:
    r"""Per-example size of a flow, in pixels.

    Convention:
        ``"Linf"``: :math:`\max_{k,i,j} |v_{k,i,j}|` (largest single component);
        ``"L2"``: :math:`\sqrt{\sum_{k,i,j} v_{k,i,j}^2}` over the whole example, which is
        :math:`\|v - v_0\|_2` of the paper.

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels.
        norm: ``"Linf"`` or ``"L2"``.

    Returns:
        Tensor of shape ``(B,)``.

    Example:
        >>> v = torch.zeros(1, 2, 3, 3)
        >>> v[0, 0, 0, 0], v[0, 1, 1, 1] = 3.0, -4.0
        >>> flow_norm(v, "Linf"), flow_norm(v, "L2")
        (tensor([4.]), tensor([5.]))
    """
    check_flow(flow)
    _check_norm(norm)
    flat = flow.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project_flow(flow: Tensor, eps: Number | Tensor, norm: str = "Linf") -> Tensor:
    r"""Project a flow onto the ball ``flow_norm(flow, norm) <= eps`` (out of place).

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels.
        eps: budget in **pixels**, a finite non-negative number, or a 0-d or ``(B,)`` tensor
            of them.
        norm: ``"Linf"`` (clip every component to ``[-eps, eps]``) or ``"L2"`` (rescale the
            examples whose L2 norm exceeds ``eps``).

    Returns:
        The projected flow, same shape; differentiable almost everywhere.

    Raises:
        ValueError: negative, NaN or infinite ``eps``, an ``eps`` tensor of the wrong shape, or
            an unknown ``norm``.
        TypeError: ``eps`` is neither a number nor a real tensor.

    Note:
        Non-finite flow components are not refused here (a NaN stays NaN, an infinite
        component is clipped in ``"Linf"``); :func:`warp` refuses such flows.

    Example:
        >>> v = torch.full((1, 2, 2, 2), 3.0)
        >>> project_flow(v, 1.0, "Linf").max().item()
        1.0
        >>> round(flow_norm(project_flow(v, 2.0, "L2"), "L2").item(), 4)
        2.0
    """
    check_flow(flow)
    _check_norm(norm)
    if isinstance(eps, Tensor):
        if eps.dtype == torch.bool or eps.is_complex():
            raise TypeError(f"eps: expected a real tensor of budgets in pixels, got dtype {eps.dtype}")
        if eps.dim() > 1 or (eps.dim() == 1 and eps.shape[0] != flow.shape[0]):
            raise ValueError(
                f"eps: expected a number, a 0-d tensor or a ({flow.shape[0]},) tensor (one budget per "
                f"example), got shape {tuple(eps.shape)}"
            )
        eps_t = eps.to(dtype=flow.dtype, device=flow.device)
        if not bool((torch.isfinite(eps_t) & (eps_t >= 0)).all()):
            raise ValueError(f"eps: expected finite non-negative budgets in pixels, got {eps}")
    else:
        # A number is checked on the host: no device sync in an attack's inner loop.
        check_number(eps, "eps", minimum=0)
        if eps > torch.finfo(flow.dtype).max:  # a budget beyond the dtype's range bounds nothing
            eps = math.inf
        if norm == "Linf" and not (flow.requires_grad and torch.is_grad_enabled()):
            # Same values as the path below (eps rounded to flow.dtype) in one kernel; the path
            # below is kept for autograd, whose minimum/maximum split the gradient at ties.
            return flow.clamp(-eps, eps)
        eps_t = torch.full((), eps, dtype=flow.dtype, device=flow.device)  # a fill, not a copy
    eps_b = eps_t.reshape(-1, 1, 1, 1) if eps_t.dim() == 1 else eps_t
    if norm == "Linf":
        return torch.maximum(torch.minimum(flow, eps_b), -eps_b)
    norms = flow.flatten(1).norm(p=2, dim=1).reshape(-1, 1, 1, 1)
    factor = torch.clamp(eps_b / norms.clamp_min(torch.finfo(flow.dtype).tiny), max=1.0)
    return flow * factor


_SMOOTHNESS_PADDINGS = ("none", "replicate")


def flow_smoothness_loss(flow: Tensor, eps: float = 1e-8, padding: str = "none") -> Tensor:
    r"""The stAdv flow smoothness loss of Xiao et al. (2018), per example.

    .. math::
        \mathcal{L}_{flow}(v) = \sum_{p} \sum_{q \in \mathcal{N}(p)}
        \sqrt{\|v_x^{(p)} - v_x^{(q)}\|_2^2 + \|v_y^{(p)} - v_y^{(q)}\|_2^2 + \epsilon}

    where :math:`\mathcal{N}(p)` are the 4-connected neighbours (left, right, up, down) of
    pixel ``p``, so every neighbouring pair inside the image is counted twice, as in the
    definition. ``padding`` says what a neighbour outside the image is:

    - ``"none"`` (default): it does not exist; only pairs inside the image are summed.
    - ``"replicate"``: it is the pixel itself (replicate padding), so each of the
      ``2 (H + W)`` missing neighbours adds a zero difference, i.e. a constant
      ``sqrt(eps)``. This is the ``stAdv_norm`` of mister_ed used by PAT (Laidlaw et al.,
      2021) and MultiRobustBench, which compute it with ``eps = 1e-10`` on the flow in
      normalized units (``align_corners=False``); ``StAdv.pat`` reproduces it.

    Both choices have the same gradient and differ by ``2 (H + W) sqrt(eps)``.

    Convention:
        Flow in pixels; the loss is in pixels. The ``eps`` inside the square root keeps the
        gradient finite at zero flow; it contributes ``sqrt(eps)`` per neighbour term.
        Because the loss is positively homogeneous, the loss of ``flow_to_normalized(v)``
        with ``eps`` equals ``s`` times the loss of ``v`` with ``eps / s**2`` for a square
        image, where ``s`` is the size of one pixel in normalized units.

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels.
        eps: small finite non-negative constant inside the square root.
        padding: ``"none"`` or ``"replicate"`` (see above).

    Returns:
        Tensor ``(B,)``.

    Raises:
        ValueError: negative ``eps``, unknown ``padding`` or a flow of the wrong shape.

    Example:
        >>> v = torch.zeros(1, 2, 3, 3)
        >>> flow_smoothness_loss(v, eps=0.0)
        tensor([0.])
        >>> v[0, 0, 1, 1] = 1.0  # one pixel moved by 1 px: 4 neighbours, each pair twice
        >>> flow_smoothness_loss(v, eps=0.0)
        tensor([8.])
        >>> flow_smoothness_loss(torch.zeros(1, 2, 3, 3), eps=1.0, padding="replicate")
        tensor([36.])
    """
    check_flow(flow)
    eps = check_number(eps, "eps", minimum=0)
    check_choice(padding, "padding", _SMOOTHNESS_PADDINGS)
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]  # horizontal neighbour pairs
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]  # vertical neighbour pairs
    hx = (dx.pow(2).sum(dim=1) + eps).sqrt().flatten(1).sum(dim=1)
    hy = (dy.pow(2).sum(dim=1) + eps).sqrt().flatten(1).sum(dim=1)
    loss = 2.0 * (hx + hy)
    if padding == "replicate":
        h, w = flow.shape[2], flow.shape[3]
        loss = loss + 2.0 * (h + w) * math.sqrt(eps)
    return loss
