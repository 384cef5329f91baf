r"""Modification functions :math:`\tau(x, n)` of Table 2, for the unified regularizer (eq. (18)).

Each transform maps clean images ``x`` and a parameter ``n`` to modified images
``tau(x, n)``; ``identity(x)`` returns the parameter :math:`n_0` with ``tau(x, n0) == x``.
:class:`~fgr_defense.regularizers.GradientRegularizer` penalizes the gradient of the loss
with respect to ``n`` at :math:`n_0` (plus an optional random start).

==================  ===========================  ====================================
Transform           :math:`\tau(x, n)`            parameter ``n`` (per example)
==================  ===========================  ====================================
:class:`Additive`   ``x + n``                    ``(C, H, W)`` noise, ``n0 = 0`` (IGR)
:class:`Multiplicative` ``x * n``                ``(C, H, W)`` factors, ``n0 = 1``
:class:`MaskedAdditive` ``x + m * n``            ``(C, H, W)`` patch noise, ``n0 = 0``
:class:`Flow`       ``warp(x, n)``               ``(2, H, W)`` flow in pixels, ``n0 = 0`` (FGR)
:class:`Affine`     ``warp(x, A(n))``            ``(2, 3)`` affine matrix, ``n0 = [I | 0]``
==================  ===========================  ====================================

The semantic row of Table 2 needs a generative model and is not shipped; subclass
:class:`Transform` (``identity`` and ``apply``) to add it or any other modification.

Convention:
    - Images are ``(B, C, H, W)`` floats (``[0, 1]`` for the models of this package).
    - Every warp goes through the one flow primitive :func:`torchattacks_deform.flow.warp`
      (pixels, channel 0 = x/columns, channel 1 = y/rows, ``align_corners=True``); the
      affine transform is turned into a flow field first (:func:`affine_flow`).
    - ``vjp(x, n, g)`` returns :math:`(\partial \tau(x, n) / \partial n)^\top g`, i.e. the
      gradient with respect to ``n`` of :math:`\langle \tau(x, n), g\rangle`; it must be
      differentiable in ``g`` (the regularizers backpropagate through it to the model).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from torchattacks_deform.flow import flow_to_pixels, warp
from torchattacks_deform.validation import check_choice, check_images, check_number

from .transform_base import PADDING_MODES, Transform

__all__ = [
    "PADDING_MODES",
    "TRANSFORMS",
    "Additive",
    "Affine",
    "Flow",
    "MaskedAdditive",
    "Multiplicative",
    "Transform",
    "affine_flow",
    "build_transform",
]


class Additive(Transform):
    r"""Additive noise ``tau(x, n) = x + n`` with ``n0 = 0``: eq. (18) becomes IGR (eq. (5)).

    Convention:
        ``n`` has the shape of ``x``; the gradient w.r.t. ``n`` is the input gradient.

    Example:
        >>> t = Additive()
        >>> x = torch.rand(2, 1, 3, 3)
        >>> torch.equal(t.apply(x, t.identity(x)), x)
        True
    """

    name = "additive"

    def identity(self, x: Tensor) -> Tensor:
        check_images(x, "x", layout_only=True)
        return torch.zeros_like(x)

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        return x + n

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output


class Multiplicative(Transform):
    r"""Multiplicative noise ``tau(x, n) = x * n`` with ``n0 = 1`` (Table 2, row 2).

    Convention:
        ``n`` has the shape of ``x`` (unitless factors); ``grad_n = g * x``.

    Example:
        >>> t = Multiplicative()
        >>> x = torch.rand(2, 1, 3, 3)
        >>> torch.equal(t.apply(x, t.identity(x)), x)
        True
        >>> g = torch.ones_like(x)
        >>> torch.equal(t.vjp(x, t.identity(x), g), x)
        True
    """

    name = "multiplicative"

    def identity(self, x: Tensor) -> Tensor:
        check_images(x, "x", layout_only=True)
        return torch.ones_like(x)

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        return x * n

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output * x


class MaskedAdditive(Transform):
    r"""Adversarial patch ``tau(x, n) = x + m * n`` with ``n0 = 0`` (Table 2, row 3).

    Args:
        mask: tensor broadcastable to the images ``(B, C, H, W)``, e.g. ``(H, W)`` or
            ``(1, 1, H, W)``; 1 inside the patch, 0 outside (soft masks allowed).

    Convention:
        ``n`` has the shape of ``x``; ``grad_n = m * g`` (zero outside the patch).

    Raises:
        TypeError: ``mask`` is not a floating-point tensor.
        ValueError: ``mask`` has NaN or infinite values.

    Example:
        >>> t = MaskedAdditive.patch(4, 4, top=1, left=1, size=2)
        >>> x = torch.rand(1, 1, 4, 4)
        >>> t.vjp(x, t.identity(x), torch.ones_like(x))[0, 0]
        tensor([[0., 0., 0., 0.],
                [0., 1., 1., 0.],
                [0., 1., 1., 0.],
                [0., 0., 0., 0.]])
    """

    name = "masked_additive"

    def __init__(self, mask: Tensor) -> None:
        if not isinstance(mask, Tensor) or not mask.is_floating_point():
            raise TypeError(f"mask: expected a floating-point tensor, got {type(mask).__name__}"
                            + (f" of dtype {mask.dtype}" if isinstance(mask, Tensor) else ""))
        if not bool(torch.isfinite(mask).all()):
            raise ValueError("mask: expected finite values (1 inside the patch, 0 outside), got NaN or inf")
        self.mask = mask

    @classmethod
    def patch(cls, height: int, width: int, top: int, left: int, size: int) -> MaskedAdditive:
        """A square ``size x size`` patch with its top-left corner at ``(top, left)``."""
        for value, name in ((height, "height"), (width, "width"), (top, "top"), (left, "left"), (size, "size")):
            check_number(value, name, integer=True)
        if size < 1 or top < 0 or left < 0 or top + size > height or left + size > width:
            raise ValueError(
                f"patch: expected a size >= 1 square inside the {height}x{width} image, "
                f"got top={top}, left={left}, size={size}"
            )
        mask = torch.zeros(height, width)
        mask[top : top + size, left : left + size] = 1.0
        return cls(mask)

    def _mask(self, x: Tensor) -> Tensor:
        return self.mask.to(device=x.device, dtype=x.dtype)

    def identity(self, x: Tensor) -> Tensor:
        check_images(x, "x", layout_only=True)
        try:
            torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"mask: expected a shape broadcastable to the images {tuple(x.shape)}, "
                f"got {tuple(self.mask.shape)}"
            ) from err
        return torch.zeros_like(x)

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        return x + self._mask(x) * n

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output * self._mask(x)

    def __repr__(self) -> str:
        return f"MaskedAdditive(mask={tuple(self.mask.shape)})"


class Flow(Transform):
    r"""Adversarial deformation ``tau(x, v) = warp(x, v)`` with ``v0 = 0``: eq. (18) becomes FGR.

    Args:
        padding_mode: how :func:`~torchattacks_deform.flow.warp` reads outside the image:
            ``"border"`` (default), ``"zeros"`` or ``"reflection"``.

    Convention:
        ``v`` is a ``(B, 2, H, W)`` flow in **pixels** (channel 0 = x, channel 1 = y); the
        random start ``sigma`` is in pixels (the paper's 0.01 in ``align_corners=True``
        normalized units is ``normalized_to_pixels(0.01, W)`` px). ``vjp`` is autograd through
        ``warp`` (the double backward of ``grid_sample`` w.r.t. its incoming gradient exists;
        w.r.t. the grid it does not, and is not needed).

    Example:
        >>> t = Flow()
        >>> x = torch.rand(2, 3, 5, 5)
        >>> v0 = t.identity(x)
        >>> v0.shape, torch.equal(t.apply(x, v0), x)
        (torch.Size([2, 2, 5, 5]), True)
    """

    name = "flow"

    def __init__(self, padding_mode: str = "border") -> None:
        self.padding_mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)

    def identity(self, x: Tensor) -> Tensor:
        check_images(x, "x", layout_only=True)
        b, _, h, w = x.shape
        return x.new_zeros(b, 2, h, w)

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        return warp(x, n, padding_mode=self.padding_mode)

    def random_start_images(self, x: Tensor, n: Tensor) -> Tensor:
        """``warp(x, v)`` with **zeros** padding, whatever ``padding_mode`` is.

        The authors' random start calls ``F.grid_sample`` with its default padding, zeros;
        their penalty then uses their own sampler, closest to ``"border"``.
        """
        return warp(x, n, padding_mode="zeros")

    def warp_and_jacobian(self, x: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        r"""``warp(x, v)`` and its per-channel derivative w.r.t. the flow, both without graph.

        ``J[b, c, k, i, j] = d warp(x, v)[b, c, i, j] / d v[b, k, i, j]``, shape
        ``(B, C, 2, H, W)`` (a warped pixel depends only on its own flow vector). One forward
        and one backward of the shared :func:`~torchattacks_deform.flow.warp` on the channels
        as separate images, so the values are those of ``warp(x, v)`` and the one-sided slopes
        at integer sample points are exactly the ones ``grid_sample`` picks.
        """
        b, c, h, w = x.shape
        with torch.enable_grad():
            flow = n.detach().repeat_interleave(c, dim=0).requires_grad_(True)
            out = warp(x.detach().reshape(b * c, 1, h, w), flow, padding_mode=self.padding_mode)
            (jac,) = torch.autograd.grad(out, flow, grad_outputs=torch.ones_like(out))
        return out.detach().reshape(b, c, h, w), jac.reshape(b, c, 2, h, w)

    def jacobian(self, x: Tensor, n: Tensor) -> Tensor:
        """The ``J`` of :meth:`warp_and_jacobian`."""
        return self.warp_and_jacobian(x, n)[1]

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        """``sum_c g[:, c] * J[:, c]``: the chain rule through the warp, elementwise in ``g``.

        Same value as autograd through ``warp`` (up to float rounding of the channel sum), but
        its backward is elementwise instead of a double backward of ``grid_sample`` (about 4x
        cheaper).
        """
        return self.linearize(x, n)[1](grad_output)

    def linearize(self, x: Tensor, n: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The warped batch and the pullback ``g -> sum_c g[:, c] * J[:, c]`` from one warp pass."""
        out, jac = self.warp_and_jacobian(x, n)
        return out, lambda grad_output: (grad_output.unsqueeze(2) * jac).sum(dim=1)

    def __repr__(self) -> str:
        return f"Flow(padding_mode={self.padding_mode!r})"


def affine_flow(theta: Tensor, height: int, width: int) -> Tensor:
    r"""The pixel flow of a batch of 2x3 affine matrices, in the convention of ``F.affine_grid``.

    .. math::
        v(p) = \mathrm{px}\big((\theta - [I\,|\,0])\,[q(p); 1]\big)

    where :math:`q(p) \in [-1, 1]^2` is pixel ``p`` in normalized ``align_corners=True``
    coordinates ``(x, y)`` and ``px`` converts normalized displacements back to pixels.
    ``warp(x, affine_flow(theta, H, W))`` samples the input at ``theta @ [q; 1]``, exactly
    what ``grid_sample(x, affine_grid(theta, ..., align_corners=True), align_corners=True)``
    does, and the identity matrix gives the exactly-zero flow.

    Convention:
        ``theta``: ``(B, 2, 3)``, maps output normalized ``(x, y)`` to input normalized
        ``(x, y)`` (``F.affine_grid``); the flow is ``(B, 2, H, W)`` in pixels.

    Args:
        theta: affine matrices ``(B, 2, 3)``.
        height: image height H (>= 2).
        width: image width W (>= 2).

    Returns:
        Flow ``(B, 2, H, W)`` in pixels, differentiable in ``theta``.

    Example:
        >>> theta = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])  # shift by 0.5 normalized
        >>> affine_flow(theta, 3, 5)[0, 0]  # 0.5 normalized = 1 px when W = 5
        tensor([[1., 1., 1., 1., 1.],
                [1., 1., 1., 1., 1.],
                [1., 1., 1., 1., 1.]])
    """
    if not isinstance(theta, Tensor) or theta.dim() != 3 or theta.shape[1:] != (2, 3):
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ValueError(f"theta: expected affine matrices of shape (B, 2, 3), got {shape}")
    if height < 2 or width < 2:
        raise ValueError(f"height, width: expected >= 2, got {height}x{width}")
    eye = torch.eye(2, 3, dtype=theta.dtype, device=theta.device)
    delta = theta - eye
    qx = torch.arange(width, dtype=theta.dtype, device=theta.device) * (2.0 / (width - 1)) - 1.0
    qy = torch.arange(height, dtype=theta.dtype, device=theta.device) * (2.0 / (height - 1)) - 1.0
    flow_norm = (
        delta[:, :, 0, None, None] * qx[None, None, None, :]
        + delta[:, :, 1, None, None] * qy[None, None, :, None]
        + delta[:, :, 2, None, None]
    )
    return flow_to_pixels(flow_norm)


class Affine(Transform):
    r"""Affine attack ``tau(x, theta) = warp(x, A(theta))`` at ``theta0 = [I | 0]`` (Table 2, row 5).

    The gradient of eq. (18) is taken with respect to the 2x3 matrix (6 numbers per example),
    through :func:`affine_flow` and the shared :func:`~torchattacks_deform.flow.warp`.

    Args:
        padding_mode: see :func:`~torchattacks_deform.flow.warp`.

    Convention:
        ``theta`` is ``(B, 2, 3)`` in ``F.affine_grid``'s normalized ``align_corners=True``
        convention (translations in half-widths); ``sigma`` of a random start is in those units.

    Example:
        >>> t = Affine()
        >>> x = torch.rand(2, 1, 6, 6)
        >>> theta0 = t.identity(x)
        >>> theta0[0]
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
        >>> torch.equal(t.apply(x, theta0), x)
        True
    """

    name = "affine"

    def __init__(self, padding_mode: str = "border") -> None:
        self.padding_mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)

    def identity(self, x: Tensor) -> Tensor:
        check_images(x, "x", layout_only=True)
        return torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3).clone()

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        return warp(x, affine_flow(n, x.shape[2], x.shape[3]), padding_mode=self.padding_mode)

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        """Chain rule: the flow gradient (:meth:`Flow.vjp`) pulled back through :func:`affine_flow`."""
        theta = n.detach().requires_grad_(True)
        with torch.enable_grad():
            flow = affine_flow(theta, x.shape[2], x.shape[3])
            grad_flow = Flow(self.padding_mode).vjp(x, flow.detach(), grad_output)
            (grad,) = torch.autograd.grad(flow, theta, grad_outputs=grad_flow, create_graph=True)
        return grad

    def __repr__(self) -> str:
        return f"Affine(padding_mode={self.padding_mode!r})"


TRANSFORMS: dict[str, type[Transform]] = {
    "additive": Additive,
    "multiplicative": Multiplicative,
    "flow": Flow,
    "affine": Affine,
}


def build_transform(name: str, **kwargs: Any) -> Transform:
    """Build a transform by name (``MaskedAdditive`` needs a mask, so build it directly).

    Example:
        >>> build_transform("flow")
        Flow(padding_mode='border')
    """
    if name not in TRANSFORMS:
        raise ValueError(f"transform: expected one of {sorted(TRANSFORMS)}, got {name!r}")
    return TRANSFORMS[name](**kwargs)
