r"""The paper's numbers in this package's convention: lambda -> ``weight``, sigma -> pixels.

Convention:
    This package's penalty is :math:`R = \frac{1}{B}\sum_b \|g_b\|_q^2` with :math:`g_b` each
    example's gradient w.r.t. its flow in **pixels** (or its input, for IGR), so ``weight``
    does not depend on the batch size (:mod:`fgr_defense.regularizers`).

    **The paper's lambda.** The authors' code (``regularizers/fgr.py``) takes the gradient
    ``gd`` of the batch-*mean* cross-entropy w.r.t. a flow ``u`` of shape ``(B, H, W, 2)`` in
    normalized ``align_corners=True`` units and reduces it as
    ``gd.pow(2).sum(dim=(1, 2, 3)).mean()``: each example's squared norm, *averaged* over the
    batch. With ``u_x = v_x * 2/(W-1)`` (pixels ``v``),
    :math:`\partial L/\partial u_x = \partial L/\partial v_x \cdot (W-1)/2` (``y`` uses
    ``H``), and the batch mean divides each example's gradient by ``B``, so example ``b``'s
    gradient in their units is :math:`g_b (W-1)/(2B)` and their penalty is

    .. math::
        \frac{1}{B}\sum_b \Big\| \frac{g_b}{B} \frac{W-1}{2} \Big\|_2^2
        = \Big(\frac{W-1}{2}\Big)^2 \frac{1}{B^2} \cdot \frac{1}{B}\sum_b \|g_b\|_2^2
        = \Big(\frac{W-1}{2}\Big)^2 \frac{R}{B^2} ,

    i.e. ``weight = lam * ((W - 1) / 2) ** 2 / B ** 2`` (square images, ``H == W``). At
    ``B = 256``, ``W = 32``: lambda 100 is weight 0.37, lambda 300 is 1.10 (4.40 at the
    authors' ``B = 128``). The authors publish no IGR code; by analogy (gradient of the
    batch-mean loss w.r.t. the input, the same reduction, no pixel factor) we use
    ``weight = lam / B ** 2``. :func:`paper_lambda_to_weight` does this conversion;
    :meth:`~fgr_defense.regularizers.FGR.from_paper` and
    :meth:`~fgr_defense.regularizers.IGR.from_paper` build regularizers from the paper's
    numbers (``lam``, batch size, image size, ``sigma`` = 0.01 normalized).

    **The paper's sigma** (FGR+RS's random start, 0.01) is in the same normalized units:
    ``sigma_px = sigma * (W - 1) / 2`` (:func:`paper_sigma_to_pixels`).
"""

from __future__ import annotations

from typing import Any, Union

from torchattacks_deform.flow import normalized_to_pixels
from torchattacks_deform.validation import check_choice, check_number

from .constants import MAX_PENALTY

__all__ = ["ImageSize", "check_penalty", "paper_lambda_to_weight", "paper_sigma_to_pixels"]

ImageSize = Union[int, "tuple[int, int]"]


def _non_negative(value: Any, name: str) -> float:
    return float(check_number(value, name, minimum=0))


def check_penalty(value: Any, name: str) -> float:
    """The one rule for a penalty's size (a regularizer's ``weight``, the paper's ``lam``): finite, in [0, 1e7].

    Example:
        >>> check_penalty(400, "lam")
        400.0
        >>> check_penalty(1e300, "weight")
        Traceback (most recent call last):
        ...
        ValueError: weight: expected a finite number in [0, 1e+07], got 1e+300
    """
    return float(check_number(value, name, minimum=0, maximum=MAX_PENALTY))


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

    ``kind="flow"`` (FGR, FGR+RS): ``weight = lam * ((W - 1) / 2) ** 2 / batch_size ** 2``;
    ``kind="input"`` (IGR): ``weight = lam / batch_size ** 2``.

    Convention:
        See the module docstring for the derivation: the authors differentiate the
        batch-*mean* loss (each example's gradient carries ``1/B``) w.r.t. a flow in
        normalized ``align_corners=True`` units (a factor ``(W-1)/2`` per pixel gradient),
        square it and average the per-example squared norms over the batch; we average the
        squared norms of per-example pixel gradients. IGR: the authors publish no IGR code;
        the same reduction is assumed by analogy.

    Args:
        lam: the paper's lambda (e.g. FGR's 100, 400, 500, 1000; IGR's 1000 ... 7000).
        batch_size: the batch size the lambda was tuned for (the paper: 256).
        image_size: W of square images (or ``(H, W)`` with ``H == W``); needed for flows.
        kind: ``"flow"`` or ``"input"``.

    Example:
        >>> paper_lambda_to_weight(100, 256, 32)  # CIFAR: 100 * 15.5**2 / 256**2
        0.3665924072265625
        >>> round(paper_lambda_to_weight(300, 128, 32), 2)  # the authors' batch size
        4.4
        >>> paper_lambda_to_weight(1000, 256, kind="input")  # 1000 / 256**2
        0.0152587890625
    """
    lam = check_penalty(lam, "lam")
    batch_size = check_number(batch_size, "batch_size", integer=True, minimum=1)
    check_choice(kind, "kind", ("flow", "input"))
    if kind == "input":
        return lam / batch_size**2
    if image_size is None:
        raise ValueError("image_size: required for kind='flow' (the pixel/normalized factor (W-1)/2)")
    w = _square_size(image_size)
    return lam * ((w - 1) / 2.0) ** 2 / batch_size**2


def paper_sigma_to_pixels(sigma_normalized: float, image_size: ImageSize) -> float:
    """The paper's random-start std (normalized ``align_corners=True`` units) in pixels.

    Example:
        >>> round(paper_sigma_to_pixels(0.01, 28), 6)  # the paper's 0.01 on MNIST
        0.135
    """
    sigma_normalized = _non_negative(sigma_normalized, "sigma_normalized")
    return float(normalized_to_pixels(sigma_normalized, _square_size(image_size), align_corners=True))
