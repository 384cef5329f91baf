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

    **The paper's lambda.** The authors' code takes the gradient of the batch-*mean*
    cross-entropy w.r.t. a flow ``u`` in normalized ``align_corners=True`` units and sums
    its square over the whole batch. With ``u_x = v_x * 2/(W-1)`` (pixels ``v``),
    :math:`\partial L/\partial u_x = \partial L/\partial v_x \cdot (W-1)/2` (``y`` uses
    ``H``), and the mean over the batch divides each example's gradient by ``B``, so their
    penalty is

    .. math::
        \sum_b \Big\| \frac{g_b}{B} \frac{W-1}{2} \Big\|_2^2
        = \frac{1}{B^2}\Big(\frac{W-1}{2}\Big)^2 \sum_b \|g_b\|_2^2
        = \frac{1}{B}\Big(\frac{W-1}{2}\Big)^2 R ,

    i.e. ``weight = lam * ((W - 1) / 2) ** 2 / B`` (square images, ``H == W``). For IGR the
    pixel factor is absent: ``weight = lam / B`` (assuming their IGR uses the same
    batch-mean/sum-of-squares reduction). :func:`paper_lambda_to_weight` does this
    conversion, :meth:`FGR.from_paper` / :meth:`IGR.from_paper` build regularizers from the
    paper's numbers (``lam``, batch size, image size, ``sigma`` = 0.01 normalized).
    Eq. (5) prints IGR with an unsquared norm; we use the square, as eq. (18) (whose special
    case IGR is) and Ross & Doshi-Velez do.

    **Variants of FGR+RS** (``variant=``):

    - ``"paper"`` (default) is eq. (16) literally:
      :math:`L(x, y) + w\,\|\nabla_v L(I(x, v_0 + r), y)\|_q^2` -- the task loss on the clean
      batch, the gradient at the randomly started flow ``r ~ N(0, sigma^2)`` (pixels). With
      ``sigma > 0`` this needs two forward passes: a clean one for the task loss and one on
      ``I(x, r)`` for the penalty (in train mode, batch norm normalizes and updates its
      running statistics with each of the two batches separately). With ``sigma == 0``
      one forward serves both. (Concatenating ``[x, I(x, r)]`` into one batch was measured
      slower: the double backward then runs over ``2B`` examples.)
    - ``"authors"`` follows the authors' public code: ``z = clamp(I(x, r), 0, 1)`` is
      computed once and detached, then the task loss *and* the flow gradient at zero flow
      are taken on ``z`` in one forward:
      :math:`L(z, y) + w\,\|\nabla_v L(I(z, v_0), y)\|_q^2`. The random flow acts as data
      augmentation of the task loss too, and the gradient is evaluated at the grid points
      of ``z`` (zero flow) rather than at the shifted sample points of ``x``.

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

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchattacks_deform.flow import normalized_to_pixels

from .transforms import Additive, Flow, Transform, check_image_batch

__all__ = [
    "FGR",
    "IGR",
    "VARIANTS",
    "GradientRegularizer",
    "LossFn",
    "RegularizerOutput",
    "check_logits",
    "gradient_norm_sq",
    "gradient_penalty",
    "paper_lambda_to_weight",
    "paper_sigma_to_pixels",
    "per_example_cross_entropy",
]

#: ``"paper"``: eq. (16) as printed; ``"authors"``: the authors' public code (see module doc).
VARIANTS = ("paper", "authors")

#: ``loss_fn(logits, targets) -> per-example losses (B,)``.
LossFn = Callable[[Tensor, Tensor], Tensor]

ImageSize = Union[int, "tuple[int, int]"]


def check_logits(logits: Any, batch_size: int, name: str = "model output") -> None:
    """Raise ``ValueError`` unless ``logits`` has the shape ``(batch_size, num_classes)`` of a classifier.

    Example:
        >>> check_logits(torch.zeros(4, 10), 4)
        >>> check_logits(torch.zeros(4, 10, 2, 2), 4)
        Traceback (most recent call last):
        ...
        ValueError: model output: expected classifier logits of shape (B, num_classes) = (4, K), got shape (4, 10, 2, 2)
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a logits tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != batch_size or logits.shape[1] < 1:
        raise ValueError(
            f"{name}: expected classifier logits of shape (B, num_classes) = ({batch_size}, K), "
            f"got shape {tuple(logits.shape)}"
        )


def per_example_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each example, shape ``(B,)``, after checking the logits' shape.

    Example:
        >>> per_example_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor([1.3863, 1.3863])
    """
    check_logits(logits, targets.shape[0] if isinstance(targets, Tensor) and targets.dim() > 0 else -1)
    return F.cross_entropy(logits, targets, reduction="none")


def gradient_norm_sq(grad: Tensor, q: float = 2.0) -> Tensor:
    r"""Squared q-norm of each example's gradient, :math:`\|g_b\|_q^2`, shape ``(B,)``.

    Convention:
        The norm runs over all non-batch dimensions. ``q = 2`` is ``sum(g**2)`` (smooth at
        zero), ``q = inf`` is ``max|g|**2``, other ``q >= 1`` use ``(sum |g|^q)^(2/q)``.

    Example:
        >>> g = torch.tensor([[3.0, -4.0], [1.0, 1.0]])
        >>> gradient_norm_sq(g, 2), gradient_norm_sq(g, 1), gradient_norm_sq(g, float("inf"))
        (tensor([25.,  2.]), tensor([49.,  4.]), tensor([16.,  1.]))
    """
    _check_q(q)
    flat = grad.flatten(1)
    if q == 2:
        return flat.pow(2).sum(dim=1)
    if math.isinf(q):
        return flat.abs().amax(dim=1).pow(2)
    if q == 1:
        return flat.abs().sum(dim=1).pow(2)
    total = flat.abs().pow(q).sum(dim=1)
    return total.clamp_min(torch.finfo(total.dtype).tiny).pow(2.0 / q)


def _check_q(q: Any) -> None:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or q < 1:
        raise ValueError(f"q: expected a norm order >= 1 (or float('inf')), got {q!r}")


def _check_number(value: Any, name: str, what: str = "a non-negative finite number") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def _square_size(image_size: ImageSize) -> int:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        h = w = image_size
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = int(image_size[0]), int(image_size[1])
    else:
        raise TypeError(f"image_size: expected an int or (H, W), got {image_size!r}")
    if h != w:
        raise ValueError(
            f"image_size: the paper's lambda maps onto one weight only for square images "
            f"(x scales with W-1, y with H-1), got H={h}, W={w}"
        )
    if w < 2:
        raise ValueError(f"image_size: expected >= 2 pixels, got {w}")
    return w


def paper_lambda_to_weight(
    lam: float, batch_size: int, image_size: ImageSize | None = None, kind: str = "flow"
) -> float:
    r"""Convert the paper's/authors' ``lambda`` into this package's ``weight``.

    ``kind="flow"`` (FGR, FGR+RS): ``weight = lam * ((W - 1) / 2) ** 2 / batch_size``;
    ``kind="input"`` (IGR): ``weight = lam / batch_size``. See the module docstring for the
    derivation (batch-mean loss, sum of squares over the batch, flow in normalized
    ``align_corners=True`` units vs. our per-example mean of squared per-example pixel
    gradients).

    Args:
        lam: the paper's lambda (e.g. FGR's 100, 400, 500, 1000; IGR's 1000 ... 7000).
        batch_size: the batch size the lambda was tuned for (the paper: 256).
        image_size: W of square images (or ``(H, W)`` with ``H == W``); needed for flows.
        kind: ``"flow"`` or ``"input"``.

    Example:
        >>> paper_lambda_to_weight(100, 256, 32)  # CIFAR: 100 * 15.5**2 / 256
        93.84765625
        >>> paper_lambda_to_weight(1000, 256, kind="input")
        3.90625
    """
    lam = _check_number(lam, "lam")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if kind == "input":
        return lam / batch_size
    if kind != "flow":
        raise ValueError(f"kind: expected 'flow' or 'input', got {kind!r}")
    if image_size is None:
        raise ValueError("image_size: required for kind='flow' (the pixel/normalized factor (W-1)/2)")
    w = _square_size(image_size)
    return lam * ((w - 1) / 2.0) ** 2 / batch_size


def paper_sigma_to_pixels(sigma_normalized: float, image_size: ImageSize) -> float:
    """The paper's random-start std (normalized ``align_corners=True`` units) in pixels.

    Example:
        >>> round(paper_sigma_to_pixels(0.01, 28), 6)  # the paper's 0.01 on MNIST
        0.135
    """
    sigma_normalized = _check_number(sigma_normalized, "sigma_normalized")
    return float(normalized_to_pixels(sigma_normalized, _square_size(image_size), align_corners=True))


@dataclass
class RegularizerOutput:
    """What :meth:`GradientRegularizer.compute` hands to the trainer.

    Attributes:
        penalty: ``weight * raw_penalty``, a scalar with its graph (add it to the task loss).
        raw_penalty: the unweighted mean squared gradient norm ``R`` (with graph).
        task_loss: mean task loss of the forward pass the regularizer made (clean ``x`` for
            ``variant="paper"``, ``z`` for ``"authors"``), or None when it made none.
        output: the logits of that forward pass, or None.
        backpropagated: True when the ``backward`` callback of :func:`gradient_penalty` was
            called on both terms (their gradients are already accumulated; every tensor of
            the result is then detached).
    """

    penalty: Tensor
    raw_penalty: Tensor
    task_loss: Optional[Tensor] = None
    output: Optional[Tensor] = None
    backpropagated: bool = False


def gradient_penalty(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    transform: Transform,
    *,
    sigma: float = 0.0,
    q: float = 2.0,
    variant: str = "paper",
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    with_penalty: bool = True,
    backward: Callable[[Tensor], None] | None = None,
    backward_weight: float = 1.0,
) -> RegularizerOutput:
    r"""The unweighted eq. (18) penalty, the task loss and the logits, in as few passes as possible.

    .. math::
        R = \frac{1}{B}\sum_b \|\nabla_{n_b} \ell_b(\tau(x, n_0 + r), y)\|_q^2,
        \quad r \sim \mathcal{N}(0, \sigma^2)

    (``variant="authors"``: evaluated at ``n0`` on ``z = clamp(tau(x, n0 + r), 0, 1)``, and
    the task loss on ``z``). ``penalty`` and ``raw_penalty`` of the result are both ``R``.

    Convention:
        ``r = sigma * torch.randn(n0.shape)`` from ``generator`` (or the default generator),
        drawn once per call, before any forward pass. Inputs are never modified in place.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, K)``.
        x: images ``(B, C, H, W)``.
        y: targets ``(B,)``.
        transform: the modification function (:mod:`fgr_defense.transforms`).
        sigma: random-start std in the units of ``n`` (pixels for flows); 0 disables it.
        q: norm order of the gradient (the paper: 2).
        variant: ``"paper"`` or ``"authors"``.
        loss_fn: per-example loss ``(logits, y) -> (B,)``; default cross-entropy.
        generator: random generator for the random start.
        with_penalty: False skips the gradient (``R = 0``; the task loss is still computed).
        backward: optional ``loss -> None`` (e.g. ``Tensor.backward``). When the task loss
            needs a *separate* clean forward pass (``variant="paper"`` with ``sigma > 0``),
            it is called on ``backward_weight * R`` as soon as ``R`` is computed and then on
            the task loss, so that the penalty's double-backprop graph is freed before the
            clean pass builds its graph: the peak memory is that of the larger pass, not of
            both. Same values and gradients (summed in another order). Ignored (never called)
            when the task loss shares the penalty's forward.
        backward_weight: the factor of ``R`` passed to ``backward`` (the regularizer's weight).

    Returns:
        :class:`RegularizerOutput` with ``task_loss`` and ``output`` always set.

    Example:
        >>> from fgr_defense.transforms import Flow
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> out = gradient_penalty(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]), Flow())
        >>> out.raw_penalty.shape, out.output.shape, out.raw_penalty.requires_grad
        (torch.Size([]), torch.Size([2, 3]), True)
    """
    check_image_batch(x)
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected {x.shape[0]} targets (one per image), got {got}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    sigma = _check_number(sigma, "sigma")
    loss_fn = loss_fn or per_example_cross_entropy
    x = x.detach()
    n0 = transform.identity(x)
    n = n0 + transform.random_start(n0, sigma, generator) if sigma > 0 else n0

    if variant == "authors":
        base = transform.apply(x, n).clamp(0.0, 1.0).detach() if sigma > 0 else x
        point = n0 if sigma > 0 else n
        shared = True  # the task loss is taken on ``base`` = z, in the penalty's forward
    else:
        base, point = x, n
        shared = sigma == 0  # at n0 the modified batch is x itself: one forward for both

    if not with_penalty:
        output = model(base)
        task = loss_fn(output, y).mean()
        zero = task.new_zeros(())
        return RegularizerOutput(zero, zero, task, output)

    x_mod, pullback = transform.linearize(base, point)
    if point is n0:  # tau(x, n0) == x by the contract of Transform.identity: use x itself
        x_mod = base
    x_mod = x_mod.detach().requires_grad_(True)
    with torch.enable_grad():
        # The penalty's pass first, then (eq. 16) the separate clean pass for the task loss.
        mod_out = model(x_mod)
        losses = loss_fn(mod_out, y)
        (grad_x,) = torch.autograd.grad(losses.sum(), x_mod, create_graph=True)
        grad_n = pullback(grad_x)
        raw = gradient_norm_sq(grad_n, q).mean()
        if shared:
            return RegularizerOutput(raw, raw, losses.mean(), mod_out)
        if backward is not None:  # free the penalty's double-backprop graph before the clean pass
            backward(raw * backward_weight)
            raw, mod_out = raw.detach(), mod_out.detach()
        output = model(x)
        task = loss_fn(output, y).mean()
        if backward is not None:
            backward(task)
            return RegularizerOutput(raw, raw, task.detach(), output.detach(), backpropagated=True)
    return RegularizerOutput(raw, raw, task, output)


class GradientRegularizer:
    r"""Unified gradient regularization, eq. (18): ``weight * ||grad_n L(tau(x, n0 + r), y)||_q^2``.

    Args:
        transform: a :class:`~fgr_defense.transforms.Transform` (Table 2).
        weight: penalty weight in this package's normalization (module docstring); >= 0.
        sigma: random-start std in the units of ``n`` (pixels for flows); 0 disables it.
        q: norm order of the gradient (the paper: 2).
        variant: ``"paper"`` (eq. (16)/(18) as printed, default) or ``"authors"`` (module doc).
        generator: random generator of the random start (default: the global one).

    Convention:
        ``regularizer(model, x, y)`` returns the weighted penalty (scalar, with graph);
        ``compute`` returns a :class:`RegularizerOutput` with the task loss too
        (``computes_task_loss = True``: the trainer then uses that task loss and those
        logits instead of its own forward pass).

    Raises:
        TypeError, ValueError: bad ``transform``, ``weight``, ``sigma``, ``q`` or ``variant``.

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
        self.transform = transform
        self.weight = _check_number(weight, "weight")
        self.sigma = _check_number(sigma, "sigma")
        _check_q(q)
        self.q = float(q)
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.variant = variant
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
        """IGR with the paper's/authors' lambda (``weight = lam / batch_size``).

        Example:
            >>> IGR.from_paper(1000, 256).weight
            3.90625
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
        q: norm order of the flow gradient (the paper: 2).
        variant: ``"paper"`` (eq. (16), default) or ``"authors"`` (their code: task loss and
            zero-flow gradient on ``z = clamp(I(x, r), 0, 1)``, one forward).
        padding_mode: padding of :func:`~torchattacks_deform.flow.warp`.
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

        ``weight = lam * ((W - 1) / 2) ** 2 / batch_size`` and
        ``sigma = sigma_normalized * (W - 1) / 2`` pixels.

        Example:
            >>> reg = FGR.from_paper(100, batch_size=256, image_size=28, sigma_normalized=0.01)
            >>> round(reg.weight, 4), round(reg.sigma, 4)
            (71.1914, 0.135)
        """
        weight = paper_lambda_to_weight(lam, batch_size, image_size, kind="flow")
        return cls(weight, sigma=paper_sigma_to_pixels(sigma_normalized, image_size), **kwargs)

    def __repr__(self) -> str:
        return (f"FGR(weight={self.weight}, sigma={self.sigma}, q={self.q}, variant={self.variant!r}, "
                f"padding_mode={getattr(self.transform, 'padding_mode', 'border')!r})")
