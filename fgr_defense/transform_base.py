r"""The base class of the modification functions :math:`\tau(x, n)`.

:mod:`fgr_defense.transforms` holds the transforms of Table 2 (and re-exports these names).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["PADDING_MODES", "Transform"]


#: Padding modes of the warps (:func:`torchattacks_deform.flow.warp`).
PADDING_MODES = ("border", "zeros", "reflection")


class Transform:
    r"""Base class of the modification functions :math:`\tau(x, n)` of eq. (18).

    Subclasses implement :meth:`identity` and :meth:`apply`; :meth:`vjp` defaults to autograd
    through :meth:`apply` (with ``create_graph=True``) and may be overridden with a closed form.

    Convention:
        ``n`` has a leading batch dimension; the random start of a regularizer is
        ``r ~ N(0, sigma^2)`` element-wise in the units of ``n`` (:meth:`random_start`).
    """

    name = "transform"

    def identity(self, x: Tensor) -> Tensor:
        """The parameter :math:`n_0` with ``apply(x, n0) == x`` (no gradient attached)."""
        raise NotImplementedError

    def apply(self, x: Tensor, n: Tensor) -> Tensor:
        r""":math:`\tau(x, n)`, differentiable in ``n``."""
        raise NotImplementedError

    def vjp(self, x: Tensor, n: Tensor, grad_output: Tensor) -> Tensor:
        r"""Gradient of :math:`\langle \tau(x, n), g \rangle` w.r.t. ``n``, differentiable in ``g``."""
        n_ = n.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.apply(x.detach(), n_)
            (grad,) = torch.autograd.grad(out, n_, grad_outputs=grad_output, create_graph=True)
        return grad

    def linearize(self, x: Tensor, n: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r"""``(tau(x, n)`` detached, ``g -> vjp(x, n, g))``: the modified batch and its pullback.

        The regularizers call this once per step; subclasses may share work between the two
        (:class:`Flow` gets both from one ``grid_sample`` forward and backward).
        """
        with torch.no_grad():
            out = self.apply(x, n)
        return out, lambda grad_output: self.vjp(x, n, grad_output)

    def random_start_images(self, x: Tensor, n: Tensor) -> Tensor:
        r"""The images the ``"authors"`` variant of a regularizer starts from: ``tau(x, n)``.

        The regularizer clamps them to ``[0, 1]`` and detaches them. :class:`Flow`
        overrides this to warp with zeros padding, as the authors' random start does.
        """
        return self.apply(x, n)

    def random_start(self, n0: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
        """``r = sigma * N(0, 1)`` with the shape, dtype and device of ``n0``.

        Drawn with ``torch.randn`` from ``generator`` (the default generator of ``n0``'s device
        when None), so that a test can reproduce it after re-seeding.
        """
        noise = torch.randn(n0.shape, generator=generator, dtype=n0.dtype, device=n0.device)
        return noise * sigma

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
