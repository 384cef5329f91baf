r"""StAdv: the optimization-based flow attack of Xiao et al. (2018), solved with Adam."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack
from .flow import _SMOOTHNESS_PADDINGS, flow_smoothness_loss, normalized_to_pixels, project_flow
from .losses import check_kappa, margin_loss
from .validation import check_bool, check_budget, check_choice, check_number

__all__ = ["StAdv"]


class StAdv(FlowAttack):
    r"""Spatially transformed adversarial examples: margin loss plus flow smoothness, by Adam.

    .. math::
        \min_v \; \mathcal{L}_{adv}(\mathcal{I}(x, v)) + \tau \, \mathcal{L}_{flow}(v)
        \quad \text{s.t. } \|v\|_\infty \le \text{bound (optional)}

    :math:`\mathcal{L}_{adv}` is the Carlini-Wagner margin loss
    (:func:`~torchattacks_deform._base.margin_loss`) with confidence ``kappa`` (toward the
    target in targeted mode), :math:`\mathcal{L}_{flow}` the smoothness loss
    :func:`~torchattacks_deform.flow_smoothness_loss`. The flow starts at zero and takes
    ``steps`` steps of :class:`torch.optim.Adam` (default betas) with learning rate ``lr``;
    after each step it is projected onto the Linf ``bound`` (clipping, when a bound is set)
    and, with ``clip_positions``, its sampling positions are clipped to the image rectangle.

    Every iterate (the start, each step, the final one) is scored with the forward pass the
    next step needs anyway, and the attack returns, per example, the best iterate: a
    successful one (misclassified, or classified as the target) with the smallest total loss;
    if none succeeded, the one with the smallest total loss. Keeping the best matters because
    once the margin is saturated the smoothness term pulls the flow back, so more steps can
    undo a success. Cost: ``steps`` warps, forwards and backwards plus one forward.

    Numerics:
        Adam's first steps move many neighbouring flow components by almost exactly ``lr``,
        which leaves their differences near zero, where the square root of the smoothness
        loss has curvature ``1 / sqrt(smooth_eps)``; Adam then rescales those gradients to
        full-size steps. The iterates are therefore sensitive to float rounding: inputs that
        differ by 1e-8 (e.g. after a normalize / un-normalize round trip) can give flows
        differing by 0.1 px after a few steps. Identical arithmetic gives identical
        results; the attack's success rate is not affected.

    Convention:
        The flow, ``bound`` and ``lr`` are in **pixels**; :math:`\mathcal{L}_{flow}` is
        computed on the pixel flow (``smooth_eps`` inside its square root, in squared
        pixels). Settings published in normalized grid units convert with
        :func:`~torchattacks_deform.normalized_to_pixels`; :meth:`pat` and
        :meth:`multirobustbench` do it for PAT's threat model.

    PAT / MultiRobustBench:
        :meth:`pat` reproduces ``StAdvAttack`` of PAT (Laidlaw et al., 2021,
        ``perceptual_advex.attacks``, on mister_ed's ``FullSpatial`` with ``use_stadv``):
        Linf bound 0.05 in normalized units with ``align_corners=False``
        (``0.05 * W / 2`` px: 0.8 px at 32 px), smoothness weight ``0.0025 / bound`` on
        mister_ed's ``stAdv_norm`` (4 neighbours, replicate padding, ``eps = 1e-10``, in
        normalized units; here converted exactly to pixels: ``tau = 0.0025 / bound * 2 / W``,
        ``smooth_eps = 1e-10 * (W / 2) ** 2``), the unclamped margin loss
        (``kappa=None``), Adam with ``lr = 0.01`` normalized (``0.01 * W / 2`` px), zero
        start, 100 iterations (PAT's CIFAR-10 evaluation, ``num_iterations=100``),
        sampling positions clipped to the image and zero padding (PAT's ``grid_sample``
        defaults). :meth:`multirobustbench` is the same threat model with MultiRobustBench's
        optimizer settings (20 iterations, ``lr = bound / 18``). Two documented
        differences remain: the best iterate is chosen success-first (PAT keeps the
        smallest total loss, and stores the iterate after the step that followed it), and
        Adam's ``eps = 1e-8`` acts on pixel-unit gradients, which changes the steps only
        where :math:`\sqrt{\hat v} \lesssim 10^{-8}`.

    Args:
        model: classifier returning logits.
        tau: weight of the smoothness loss. Default: 0.005. Xiao et al.'s 0.05 (tuned with
            L-BFGS for their MNIST models) makes the zero flow the optimum for every example
            whose clean logit margin is below ``tau`` times the smoothness loss of a fooling
            flow: on the test suite's MNIST SmallCNN (median margin 4.4, fooling flows of
            smoothness about 150) it fools only 25% of the examples, 0.005 fools all.
        steps: Adam steps, ``>= 0``. Default: 50.
        lr: Adam learning rate in pixels, finite and ``>= 0``. Default: 0.1.
        kappa: confidence of the margin loss, finite and ``>= 0``; None never clamps it
            (``float("inf")`` is refused: use None). Default: 0.
        bound: optional Linf flow budget in pixels, enforced by projection. Default: None.
        smooth_eps: constant inside the smoothness square root, finite and ``> 0`` (at 0 the
            gradient of the smoothness loss is NaN at the zero flow). Default: 1e-8.
        smoothness_padding: ``"none"`` or ``"replicate"`` (see
            :func:`~torchattacks_deform.flow_smoothness_loss`). Default: ``"none"``.
        clip_positions: clip every sampling position ``p + v[p]`` to
            ``[-0.5, size - 0.5]`` (the image rectangle of ``align_corners=False``, as PAT's
            clip of the grid to ``[-1, 1]``). Default: False.
        padding_mode: how :func:`~torchattacks_deform.warp` reads outside the image.

    Raises:
        ValueError: a negative, NaN or infinite number, ``smooth_eps = 0``, an unknown
            ``smoothness_padding``.
        TypeError: a non-number argument, a non-int ``steps`` or a non-bool ``clip_positions``.

    Example:
        >>> import torch
        >>> from torchattacks_deform import StAdv, warp
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> atk = StAdv(model, steps=5, bound=0.5)
        >>> flow = atk.get_flow(images, labels)
        >>> bool(flow.abs().max() <= 0.5), torch.equal(atk(images, labels), warp(images, flow).clamp(0, 1))
        (True, True)
        >>> pat = StAdv.pat(model, image_size=32)
        >>> pat.bound, pat.lr, pat.steps, pat.kappa
        (0.8, 0.16, 100, None)
        >>> StAdv.cost({}), StAdv.budget_norm({})
        (50.0, 'Linf')
    """

    info = AttackInfo("optimization", True, "bound")

    def __init__(
        self,
        model: nn.Module,
        tau: float = 0.005,
        steps: int = 50,
        lr: float = 0.1,
        kappa: Optional[float] = 0.0,
        bound: Optional[float] = None,
        smooth_eps: float = 1e-8,
        smoothness_padding: str = "none",
        clip_positions: bool = False,
        padding_mode: str = "border",
    ) -> None:
        tau = check_number(tau, "tau", minimum=0)
        check_number(steps, "steps", integer=True, minimum=0)
        lr = check_number(lr, "lr", minimum=0)
        kappa = check_kappa(kappa)
        bound = check_budget(bound, "bound", allow_none=True)
        smooth_eps = check_number(smooth_eps, "smooth_eps", minimum=0, exclusive_minimum=True)
        check_choice(smoothness_padding, "smoothness_padding", _SMOOTHNESS_PADDINGS)
        check_bool(clip_positions, "clip_positions")
        super().__init__("StAdv", model, padding_mode=padding_mode)
        self.tau = float(tau)
        self.steps = steps
        self.lr = float(lr)
        self.kappa = kappa
        self.bound = None if bound is None else float(bound)
        self.smooth_eps = float(smooth_eps)
        self.smoothness_padding = smoothness_padding
        self.clip_positions = clip_positions

    @classmethod
    def budget_norm(cls, params: Mapping[str, Any]) -> str:
        """``"Linf"``: the budget is the Linf ``bound``."""
        return "Linf"

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """``steps`` forward+backward passes per example (plus one forward)."""
        return float(cls._param(params, "steps"))

    @classmethod
    def pat(
        cls, model: nn.Module, image_size: int, bound: float = 0.05, steps: int = 100, lr: float = 0.01
    ) -> StAdv:
        """PAT's StAdv threat model and optimizer (see the class docstring) for square images.

        Args:
            model: classifier returning logits.
            image_size: width (= height) of the images in pixels.
            bound: Linf bound in PAT's normalized units (``align_corners=False``).
            steps: Adam iterations (PAT evaluates CIFAR-10 with 100, ImageNet-100 with 200).
            lr: Adam learning rate in PAT's normalized units.
        """
        return cls._mister_ed(model, image_size, bound, steps, lr)

    @classmethod
    def multirobustbench(cls, model: nn.Module, image_size: int, bound: float = 0.05) -> StAdv:
        """MultiRobustBench's StAdv: PAT's threat model, 20 iterations, ``lr = bound / 18``.

        MultiRobustBench computes ``lr = bound / (num_iterations - 2)`` from its default
        ``num_iterations=20`` and does not pass ``num_iterations`` on, so PAT's default of
        20 iterations always runs.
        """
        return cls._mister_ed(model, image_size, bound, 20, bound / 18)

    @classmethod
    def _mister_ed(cls, model: nn.Module, image_size: int, bound: float, steps: int, lr: float) -> StAdv:
        check_number(bound, "bound", minimum=0)
        if bound == 0:
            raise ValueError("bound: expected a positive bound (the smoothness weight is 0.0025 / bound), got 0")
        check_number(lr, "lr", minimum=0)
        px = float(normalized_to_pixels(1.0, image_size, align_corners=False))  # px per unit
        return cls(
            model,
            tau=0.0025 / bound / px,
            steps=steps,
            lr=lr * px,
            kappa=None,
            bound=bound * px,
            smooth_eps=1e-10 * px**2,
            smoothness_padding="replicate",
            clip_positions=True,
            padding_mode="zeros",
        )

    def _constrain(self, flow: Tensor) -> Tensor:
        if self.bound is not None:
            flow = project_flow(flow, self.bound, "Linf")
        if self.clip_positions:
            h, w = flow.shape[2], flow.shape[3]
            cols = torch.arange(w, dtype=flow.dtype, device=flow.device).reshape(1, w)
            rows = torch.arange(h, dtype=flow.dtype, device=flow.device).reshape(h, 1)
            lo = torch.stack([(-0.5 - cols).expand(h, w), (-0.5 - rows).expand(h, w)])
            hi = torch.stack([(w - 0.5 - cols).expand(h, w), (h - 0.5 - rows).expand(h, w)])
            flow = torch.maximum(torch.minimum(flow, hi), lo)
        return flow

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        if self.lr > torch.finfo(images.dtype).max:
            raise ValueError(f"lr: expected at most {torch.finfo(images.dtype).max:.3g} (the largest "
                             f"{images.dtype} value, the dtype of the flow), got {self.lr:g}")
        # The flow, Adam's state and the losses are kept in at least float32: in float16,
        # smooth_eps (1e-8) and Adam's eps underflow to 0 and the first step divides by zero.
        # Only the warp and the model run in the images' dtype.
        work = torch.promote_types(images.dtype, torch.float32)
        flow = images.new_zeros(b, 2, h, w, dtype=work).requires_grad_(True)
        optimizer = torch.optim.Adam([flow], lr=self.lr)
        best_flow = torch.zeros_like(flow, requires_grad=False)
        best_loss = images.new_full((b,), float("inf"), dtype=work)
        best_ok = torch.zeros(b, dtype=torch.bool, device=images.device)
        for step in range(self.steps + 1):
            last = step == self.steps
            with torch.set_grad_enabled(not last):
                logits = self.get_logits(self.warp(images, flow.to(images.dtype))).to(work)
                smooth = flow_smoothness_loss(flow, eps=self.smooth_eps, padding=self.smoothness_padding)
                total = margin_loss(logits, labels, self.targeted, self.kappa) + self.tau * smooth
            ok = self.is_successful(logits.detach(), labels)
            loss = total.detach()
            better = (ok & ~best_ok) | ((ok == best_ok) & (loss < best_loss))
            best_flow = torch.where(better.reshape(-1, 1, 1, 1), flow.detach(), best_flow)
            best_loss = torch.where(better, loss, best_loss)
            best_ok = best_ok | ok
            if last:
                break
            (flow.grad,) = torch.autograd.grad(total.sum(), flow)
            optimizer.step()
            with torch.no_grad():
                flow.copy_(self._constrain(flow))
        return best_flow.to(images.dtype)
