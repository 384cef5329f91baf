r"""Gradient regularizers: IGR (eq. (5)), FGR and FGR+RS (eqs. (11), (16)), unified eq. (18).

A regularizer is a small object: ``regularizer(model, x, y)`` returns the weighted penalty,
a scalar that keeps its graph (double backprop), so ``(task_loss + penalty).backward()``
trains through it. The :class:`~fgr_defense.trainer.Trainer` calls the richer
``regularizer.compute(model, x, y, loss_fn)``, which also returns the task loss and logits of
the forward pass it already made (see :class:`RegularizerOutput`), so nothing is computed twice.

Convention:
    **Normalization (one, everywhere).** With per-example losses :math:`\ell_b` (cross-entropy
    by default) and the per-example gradient :math:`g_b = \nabla_{n_b} \ell_b` at the
    evaluation point (the gradient of :math:`\sum_b \ell_b` w.r.t. the batch of parameters
    ``n``; for a model without batch-norm in train mode this is exactly each example's own
    gradient), the penalty is

    .. math::
        R = \frac{1}{B} \sum_b \|g_b\|_q^2 ,\qquad
        \text{loss} = \frac{1}{B}\sum_b \ell_b(\text{task}) + \text{weight} \cdot R

    with flows in **pixels** (:class:`~fgr_defense.transforms.Flow`) and input gradients in
    pixel-value units (:class:`~fgr_defense.transforms.Additive`). ``weight`` is therefore
    independent of the batch size.

    **The paper's lambda** is converted by :func:`~fgr_defense.paper.paper_lambda_to_weight`
    (``weight = lam * ((W - 1) / 2) ** 2 / B ** 2`` for flows, ``lam / B ** 2`` for IGR; the
    derivation from the authors' code is in :mod:`fgr_defense.paper`); :meth:`FGR.from_paper`
    / :meth:`IGR.from_paper` build regularizers from the paper's numbers. Eq. (5) prints IGR
    with an unsquared norm; we use the square, as eq. (18) (whose special case IGR is) and
    Ross & Doshi-Velez do.

    **Variants of FGR+RS** (``variant=``):

    - ``"paper"`` (default) is eq. (16) literally:
      :math:`L(x, y) + w\,\|\nabla_v L(I(x, v_0 + r), y)\|_q^2` -- the task loss on the clean
      batch, the gradient at the randomly started flow ``r ~ N(0, sigma^2)`` (pixels). With
      ``sigma > 0`` this needs two forward passes: a clean one for the task loss and one on
      ``I(x, r)`` for the penalty (in train mode, batch norm normalizes and updates its
      running statistics with each of the two batches separately). With ``sigma == 0``
      one forward serves both. (Concatenating ``[x, I(x, r)]`` into one batch was measured
      slower: the double backward then runs over ``2B`` examples.)
    - ``"authors"`` follows the authors' public code: ``z = clamp(I_0(x, r), 0, 1)`` is
      computed once and detached, then the task loss *and* the flow gradient at zero flow
      are taken on ``z`` in one forward:
      :math:`L(z, y) + w\,\|\nabla_v L(I(z, v_0), y)\|_q^2`. The random flow acts as data
      augmentation of the task loss too, and the gradient is evaluated at the grid points
      of ``z`` (zero flow) rather than at the shifted sample points of ``x``. Padding as in
      their code: the random-start warp ``I_0`` reads zeros outside the image
      (``F.grid_sample``'s default there, :meth:`Transform.random_start_images`); the penalty
      uses the transform's padding (``"border"`` by default), the ``grid_sample`` mode
      closest to their own sampler, whose indices are clamped to the image. The two agree
      everywhere except on the first row and column, where ``grid_sample``'s border mode
      has a zero derivative and their sampler the inward slope; and at zero flow every
      sample sits on a pixel, where the derivative is one-sided and the side picked depends
      on the last bit of the identity grid (both implementations pick the right-hand slope
      when ``W - 1`` is a power of two).

    **Cost.** The gradient w.r.t. ``n`` is obtained by the chain rule,
    :math:`\nabla_n L = (\partial \tau / \partial n)^\top \nabla_{x'} L`: one forward on
    the (detached) modified images ``x' = tau(x, n)``, their input gradient with
    ``create_graph=True``, then the pullback of ``tau`` (:meth:`Transform.linearize`:
    closed form for the additive transforms; for flows the per-pixel Jacobian ``J`` of the
    warp, computed together with ``x'`` by one ``grid_sample`` forward/backward, so that
    ``grad_v = sum_c grad_x'[c] * J[c]`` is elementwise in ``grad_x'``). FGR therefore costs
    one IGR step plus one ``grid_sample`` forward/backward, and never needs
    ``grid_sample``'s double backward w.r.t. the grid (which PyTorch does not implement).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from torchattacks_deform.validation import check_choice, check_number

from .constants import VARIANTS
from .losses import LossFn, _check_q, gradient_norm_sq, per_example_cross_entropy
from .paper import ImageSize, check_penalty, paper_lambda_to_weight, paper_sigma_to_pixels
from .penalty import RegularizerOutput, gradient_penalty
from .transforms import Additive, Flow, Transform

__all__ = [
    "FGR",
    "IGR",
    "VARIANTS",
    "GradientRegularizer",
    "LossFn",
    "RegularizerOutput",
    "gradient_norm_sq",
    "gradient_penalty",
    "paper_lambda_to_weight",
    "paper_sigma_to_pixels",
    "per_example_cross_entropy",
]


def _non_negative(value: Any, name: str) -> float:
    return float(check_number(value, name, minimum=0))


class GradientRegularizer:
    r"""Unified gradient regularization, eq. (18): ``weight * ||grad_n L(tau(x, n0 + r), y)||_q^2``.

    Args:
        transform: a :class:`~fgr_defense.transforms.Transform` (Table 2).
        weight: penalty weight in this package's normalization (module docstring); a
            finite number >= 0.
        sigma: random-start std in the units of ``n`` (pixels for flows); finite, >= 0;
            0 disables it.
        q: norm order of the gradient: a finite number >= 1 (the paper: 2), or
            ``float("inf")`` for the L-inf norm.
        variant: ``"paper"`` (eq. (16)/(18) as printed, default) or ``"authors"`` (module doc).
        generator: random generator of the random start (default: the global one).

    Convention:
        ``regularizer(model, x, y)`` returns the weighted penalty (scalar, with graph);
        ``compute`` returns a :class:`RegularizerOutput` with the task loss too
        (``computes_task_loss = True``: the trainer then uses that task loss and those
        logits instead of its own forward pass).

    Raises:
        TypeError, ValueError: bad ``transform``, ``weight``, ``sigma``, ``q``, ``variant``
            or ``generator`` (NaN and infinite numbers are refused, except ``q = inf``).

    Example:
        >>> from fgr_defense.transforms import Additive
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
        >>> torch.equal(GradientRegularizer(Additive(), 2.0)(model, x, y), IGR(2.0)(model, x, y))
        True
    """

    computes_task_loss = True

    def __init__(
        self,
        transform: Transform,
        weight: float,
        *,
        sigma: float = 0.0,
        q: float = 2.0,
        variant: str = "paper",
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(transform, Transform):
            raise TypeError(
                f"transform: expected a fgr_defense.transforms.Transform, got {type(transform).__name__}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        self.transform = transform
        self.weight = check_penalty(weight, "weight")
        self.sigma = _non_negative(sigma, "sigma")
        self.q = _check_q(q)
        self.variant = check_choice(variant, "variant", VARIANTS)
        self.generator = generator

    def compute(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn | None = None,
                backward: Callable[[Tensor], None] | None = None) -> RegularizerOutput:
        """Weighted penalty, raw penalty, task loss and logits (see :func:`gradient_penalty`).

        A zero weight skips the gradient computation (penalty 0, same task loss).
        ``backward``: see :func:`gradient_penalty` (the trainer's memory saving).
        """
        out = gradient_penalty(
            model, x, y, self.transform, sigma=self.sigma, q=self.q, variant=self.variant,
            loss_fn=loss_fn, generator=self.generator,
            with_penalty=self.weight > 0, backward=backward, backward_weight=self.weight,
        )
        out.penalty = out.raw_penalty * self.weight
        return out

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.compute(model, x, y).penalty

    def config(self) -> dict[str, Any]:
        """A JSON-able description (stored in checkpoints' meta)."""
        return {"regularizer": type(self).__name__, "transform": repr(self.transform),
                "weight": self.weight, "sigma": self.sigma, "q": self.q, "variant": self.variant}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(transform={self.transform!r}, weight={self.weight}, "
                f"sigma={self.sigma}, q={self.q}, variant={self.variant!r})")


class IGR(GradientRegularizer):
    r"""Input gradient regularization (eq. (5), squared): ``weight * mean_b ||grad_x l_b||_q^2``.

    Identical to ``GradientRegularizer(Additive(), weight, q=q)``.

    Args:
        weight: penalty weight (module docstring; the paper's lambda via :meth:`from_paper`).
        q: norm order (the paper: 2).
        sigma: optional random start in pixel values (not in the paper; 0 by default).
        variant, generator: see :class:`GradientRegularizer`.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        >>> x, y = torch.zeros(1, 1, 2, 2), torch.tensor([0])
        >>> IGR(1.0)(model, x, y)  # grad_x CE = (p0 - 1) * e0 = -0.5 e0 at x = 0
        tensor(0.2500, grad_fn=<MulBackward0>)
    """

    def __init__(
        self,
        weight: float,
        q: float = 2.0,
        *,
        sigma: float = 0.0,
        variant: str = "paper",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(Additive(), weight, sigma=sigma, q=q, variant=variant,
                         generator=generator)

    @classmethod
    def from_paper(cls, lam: float, batch_size: int = 256, **kwargs: Any) -> IGR:
        """IGR with the paper's lambda: ``weight = lam / batch_size ** 2``.

        Convention:
            The authors publish no IGR code; the reduction of their FGR code (gradient of the
            batch-mean loss, per-example squared norms averaged over the batch) is assumed by
            analogy, without FGR's pixel factor (see :func:`paper_lambda_to_weight`).

        Example:
            >>> IGR.from_paper(1000, 256).weight
            0.0152587890625
        """
        return cls(paper_lambda_to_weight(lam, batch_size, kind="input"), **kwargs)

    def __repr__(self) -> str:
        return f"IGR(weight={self.weight}, q={self.q}, sigma={self.sigma}, variant={self.variant!r})"


class FGR(GradientRegularizer):
    r"""Flow gradient regularization (eq. (11)); with ``sigma > 0`` FGR+RS (eq. (16)).

    .. math::
        \text{loss} = L(x, y) + \text{weight}\cdot\frac{1}{B}\sum_b
        \|\nabla_{v_b} \ell_b(I(x, v_0 + r), y)\|_q^2,\qquad r \sim \mathcal{N}(0, \sigma^2)

    Identical to ``GradientRegularizer(Flow(padding_mode), weight, sigma=sigma, q=q, ...)``.

    Args:
        weight: penalty weight, flows in pixels (module docstring); the paper's lambda via
            :meth:`from_paper` or :func:`paper_lambda_to_weight`.
        sigma: random-start std in **pixels** (the paper's 0.01 normalized is
            :func:`paper_sigma_to_pixels`); 0 = plain FGR.
        q: norm order of the flow gradient (the paper: 2; ``float("inf")``: L-inf).
        variant: ``"paper"`` (eq. (16), default) or ``"authors"`` (their code: task loss and
            zero-flow gradient on ``z = clamp(I_0(x, r), 0, 1)``, one forward; ``I_0`` warps
            with zeros padding, the penalty with ``padding_mode``; module docstring).
        padding_mode: padding of :func:`~torchattacks_deform.flow.warp` for the penalty:
            ``"border"`` (default), ``"zeros"`` or ``"reflection"``.
        generator: random generator of the random start.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3))
        >>> x, y = torch.rand(2, 1, 5, 5), torch.tensor([0, 1])
        >>> reg = FGR(1.0, sigma=0.2)
        >>> penalty = reg(model, x, y)
        >>> penalty.shape, bool(penalty > 0), penalty.requires_grad
        (torch.Size([]), True, True)
    """

    def __init__(
        self,
        weight: float,
        sigma: float = 0.0,
        q: float = 2.0,
        *,
        variant: str = "paper",
        padding_mode: str = "border",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(Flow(padding_mode), weight, sigma=sigma, q=q, variant=variant,
                         generator=generator)

    @classmethod
    def from_paper(
        cls, lam: float, batch_size: int = 256, image_size: ImageSize = 32,
        sigma_normalized: float = 0.0, **kwargs: Any,
    ) -> FGR:
        """FGR from the paper's numbers: ``lam`` and ``sigma`` in the authors' convention.

        Convention:
            ``weight = lam * ((W - 1) / 2) ** 2 / batch_size ** 2`` and
            ``sigma = sigma_normalized * (W - 1) / 2`` pixels (derivation in the module
            docstring; ``batch_size`` is the batch the lambda was tuned with).

        Example:
            >>> reg = FGR.from_paper(100, batch_size=256, image_size=28, sigma_normalized=0.01)
            >>> round(reg.weight, 4), round(reg.sigma, 4)
            (0.2781, 0.135)
        """
        weight = paper_lambda_to_weight(lam, batch_size, image_size, kind="flow")
        return cls(weight, sigma=paper_sigma_to_pixels(sigma_normalized, image_size), **kwargs)

    def __repr__(self) -> str:
        return (f"FGR(weight={self.weight}, sigma={self.sigma}, q={self.q}, variant={self.variant!r}, "
                f"padding_mode={getattr(self.transform, 'padding_mode', 'border')!r})")
