"""The paper's seven defenses and training schedules, built by name.

Defenses (Section "Defenses" of the paper): ``Standard``, ``AT-FGSM``, ``AT-PGD``, ``IGR``,
``FGR``, ``FGR+RS``, ``FGR+RS+AT-PGD``.

Convention:
    - The paper's lambdas (IGR: 1000, 3000, 5000, 7000; FGR: 100, 400, 500, 1000) are in the
      authors' convention (gradient of the batch-mean loss, flows in normalized units,
      per-example squared norms averaged over the batch). They are converted **explicitly**
      by :func:`~fgr_defense.regularizers.paper_lambda_to_weight` with ``lam_batch_size``
      (the batch size the lambda was tuned with, the paper's 256) into this package's
      per-example ``weight``: ``lam * ((W - 1) / 2) ** 2 / B ** 2`` for the FGR family
      (lambda 100 is weight 0.28 on 28x28 and 0.37 on 32x32 at ``B = 256``) and
      ``lam / B ** 2`` for IGR (by analogy: the authors publish no IGR code). Pass
      ``weight=`` to skip the conversion. Both end up in ``Defense.config``.
    - FGR+RS's sigma is the paper's 0.01 normalized (``align_corners=True``), i.e.
      ``0.01 * (W - 1) / 2`` pixels (0.135 px on 28x28, 0.155 px on 32x32).
    - Adversarial training uses L-inf ``eps`` 0.1 (MNIST) / 0.01 (CIFAR) on ``[0, 1]`` pixels;
      PGD with 7 steps, step size ``alpha = 2.5 * eps / steps`` (Madry et al.'s rule; the
      paper does not give it) and a random start (torchattacks' default).
    - Schedules: ``"paper"`` (SGD momentum 0.9, weight decay 5e-4, batch 256, lr 0.1, x0.1 every
      10 epochs for 30 epochs on MNIST; at epochs 40 and 60 of 80 on CIFAR), ``"authors"``
      (their public code's CIFAR settings, ``utils/settings.py``: SGD momentum 0.9, weight
      decay 5e-4, batch 128, lr 0.01, x0.1 at epochs 40 and 60 of 80; CIFAR only) and
      ``"fast"`` (Adam, lr 1e-3, batch 64, 8 epochs: MNIST-5k + SmallCNN on a CPU in about a
      minute per defense). A custom :class:`Schedule` can be built directly.

Note:
    The paper's lambdas were tuned for VGG-11/ResNet-18 on the full datasets with the paper's
    schedule; whether the converted values suit MNIST-5k, the SmallCNN or the ``"fast"``
    schedule is an empirical question. Measurements of the converted lambda grids are in
    ``results/mnist5k/report.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchattacks_deform.validation import check_budget, check_choice, check_number

from .constants import DATASETS, DEFENSE_FACTS, DEFENSES, SCHEDULES, VARIANTS
from .data import dataset_info
from .paper import check_penalty
from .regularizers import (
    FGR,
    IGR,
    GradientRegularizer,
    paper_lambda_to_weight,
    paper_sigma_to_pixels,
)
from .schedules import Schedule, get_schedule

__all__ = [
    "AT_EPS",
    "DEFAULT_LAMBDA",
    "DEFENSES",
    "PAPER_BATCH_SIZE",
    "PAPER_LAMBDAS",
    "PAPER_SIGMA_NORMALIZED",
    "PGD_STEPS",
    "SCHEDULES",
    "Defense",
    "Schedule",
    "build_defense",
    "check_defense_args",
    "get_schedule",
    "paper_weight",
    "resolve_defense_name",
]

logger = logging.getLogger(__name__)

#: The lambdas of the paper's sweeps (authors' convention; :data:`~fgr_defense.constants.DEFENSE_FACTS`);
#: FGR+RS (+AT-PGD) use FGR's.
PAPER_LAMBDAS: dict[str, tuple[float, ...]] = {k: DEFENSE_FACTS[k].paper_lambdas for k in ("IGR", "FGR")}
#: Default lambda when neither ``lam`` nor ``weight`` is given: the smallest of each sweep.
DEFAULT_LAMBDA: dict[str, float] = {k: float(DEFENSE_FACTS[k].default_lambda or 0) for k in ("IGR", "FGR")}
#: The paper's batch size, which its lambdas refer to.
PAPER_BATCH_SIZE = 256
#: FGR+RS's random-start std, normalized ``align_corners=True`` units.
PAPER_SIGMA_NORMALIZED = 0.01
#: L-inf budgets of adversarial training.
AT_EPS: dict[str, float] = {"mnist": 0.1, "mnist5k": 0.1, "cifar10": 0.01, "cifar100": 0.01}
#: PGD iterations of adversarial training, and the step-size rule alpha = factor * eps / steps.
PGD_STEPS = 7
PGD_ALPHA_FACTOR = 2.5


def resolve_defense_name(name: str) -> str:
    """The canonical spelling of a defense name (case-insensitive; ``_`` accepted for ``-``).

    Raises:
        ValueError: unknown name (the message lists the valid names).

    Example:
        >>> resolve_defense_name("fgr+rs")
        'FGR+RS'
        >>> resolve_defense_name("FGR-RS")
        Traceback (most recent call last):
        ...
        ValueError: defense: expected one of ['Standard', 'AT-FGSM', 'AT-PGD', 'IGR', 'FGR', 'FGR+RS', 'FGR+RS+AT-PGD'], got 'FGR-RS'
    """
    if isinstance(name, str):
        key = name.strip().upper().replace("_", "-")
        for valid in DEFENSES:
            if valid.upper() == key:
                return valid
    raise ValueError(f"defense: expected one of {list(DEFENSES)}, got {name!r}")


@dataclass
class Defense:
    """A built defense: pass ``regularizer`` and ``adversary`` to :class:`~fgr_defense.trainer.Trainer`.

    Attributes:
        name: canonical defense name (one of :data:`DEFENSES`).
        regularizer: an ``IGR``/``FGR`` instance or None.
        adversary: a ``torchattacks`` attack on the model, or None.
        config: JSON-able settings (``lam``, ``lam_batch_size``, ``weight``, ``sigma_px``,
            ``variant``, ``eps``, ``steps``, ``alpha``, ``dataset``), stored in checkpoints.
    """

    name: str
    regularizer: GradientRegularizer | None
    adversary: Any | None
    config: dict[str, Any] = field(default_factory=dict)

    def trainer_kwargs(self) -> dict[str, Any]:
        """``{"regularizer": ..., "adversary": ...}`` for ``Trainer(model, opt, **kwargs)``."""
        return {"regularizer": self.regularizer, "adversary": self.adversary}


def paper_weight(canonical: str, lam: float, lam_batch_size: int, size: int) -> float:
    """The per-example weight of a regularized defense for the paper's ``lam``.

    IGR regularizes input gradients, the FGR family flow gradients
    (:func:`~fgr_defense.regularizers.paper_lambda_to_weight` with ``kind`` "input" or "flow").
    ``canonical``: a canonical defense name (:func:`resolve_defense_name`).

    Example:
        >>> round(paper_weight("FGR+RS", 300, 256, 32), 2), paper_weight("IGR", 1000, 256, 28) == 1000 / 256**2
        (1.1, True)
    """
    kind = DEFENSE_FACTS[canonical].regularizer
    if kind is None:
        raise ValueError(f"defense: {canonical!r} has no regularizer, so no weight")
    return float(paper_lambda_to_weight(lam, lam_batch_size, size, kind=kind))


def _check_dataset(dataset: str) -> dict[str, int]:
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {dataset!r}")
    return dataset_info(dataset)


def check_defense_args(
    name: str,
    *,
    lam: float | None = None,
    weight: float | None = None,
    lam_batch_size: int = PAPER_BATCH_SIZE,
    sigma: float | None = None,
    variant: str = "paper",
    eps: float | None = None,
) -> str:
    """Check the settings of a defense without building it; returns its canonical name.

    The checks of :func:`build_defense` (which calls this), usable before any model exists.

    Raises:
        ValueError, TypeError: unknown name, both ``lam`` and ``weight``, a parameter the
            defense does not take, negative or non-finite numbers (the message names it).

    Example:
        >>> check_defense_args("fgr+rs", lam=100)
        'FGR+RS'
        >>> check_defense_args("FGR", lam=float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: lam: expected a finite number in [0, 1e+07], got nan
    """
    canonical = resolve_defense_name(name)
    facts = DEFENSE_FACTS[canonical]
    uses_reg, uses_at, uses_rs = facts.regularizer is not None, facts.adversarial is not None, facts.random_start
    if lam is not None:
        check_penalty(lam, "lam")
    if weight is not None:
        check_penalty(weight, "weight")
    check_number(lam_batch_size, "lam_batch_size", integer=True, minimum=1)
    check_budget(sigma, "sigma", allow_none=True)
    check_budget(eps, "eps", allow_none=True)
    check_choice(variant, "variant", VARIANTS)
    if not uses_reg and (lam is not None or weight is not None):
        raise ValueError(f"lam/weight: defense {canonical!r} has no regularizer; got lam={lam!r}, weight={weight!r}")
    if lam is not None and weight is not None:
        raise ValueError(f"lam, weight: give one of them (lam is converted to weight), got lam={lam!r}, weight={weight!r}")
    if not uses_rs and sigma is not None:
        raise ValueError(f"sigma: defense {canonical!r} has no random start; use 'FGR+RS' (got sigma={sigma!r})")
    if not uses_at and eps is not None:
        raise ValueError(f"eps: defense {canonical!r} has no adversarial training; got eps={eps!r}")
    if variant != "paper" and facts.regularizer != "flow":
        raise ValueError(f"variant: only the FGR defenses have variants; got {variant!r} for {canonical!r}")
    return canonical


def build_defense(
    name: str,
    model: nn.Module,
    dataset: str = "mnist5k",
    *,
    lam: float | None = None,
    weight: float | None = None,
    lam_batch_size: int = PAPER_BATCH_SIZE,
    sigma: float | None = None,
    variant: str = "paper",
    eps: float | None = None,
) -> Defense:
    """Build one of the paper's defenses for ``model`` with the paper's hyperparameters.

    Args:
        name: one of :data:`DEFENSES` (case-insensitive).
        model: the model being trained (the adversary attacks it; pass the bare module).
        dataset: ``"mnist5k"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"`` (eps, image size).
        lam: the paper's lambda (authors' convention), converted to ``weight``; default
            :data:`DEFAULT_LAMBDA`. Only for IGR and the FGR family.
        weight: this package's per-example weight, used as is (instead of ``lam``).
        lam_batch_size: the batch size ``lam`` refers to (the paper's 256).
        sigma: FGR+RS random-start std in **pixels**; default the paper's 0.01 normalized.
        variant: ``"paper"`` (eq. (16)) or ``"authors"`` (their code); FGR family only.
        eps: L-inf budget of adversarial training; default :data:`AT_EPS` of the dataset.

    Returns:
        :class:`Defense`.

    Raises:
        ValueError: unknown name or dataset, both ``lam`` and ``weight``, a parameter the
            defense does not take, negative or non-finite values (:func:`check_defense_args`).

    Example:
        >>> from fgr_defense.models import SmallCNN
        >>> d = build_defense("FGR+RS", SmallCNN(), "mnist5k", lam=100)  # 100 * 13.5**2 / 256**2
        >>> d.regularizer
        FGR(weight=0.2780914306640625, sigma=0.135, q=2.0, variant='paper', padding_mode='border')
        >>> build_defense("AT-PGD", SmallCNN(), "cifar10").config["eps"]
        0.01
    """
    canonical = check_defense_args(name, lam=lam, weight=weight, lam_batch_size=lam_batch_size, sigma=sigma,
                                   variant=variant, eps=eps)
    info = _check_dataset(dataset)
    size = info["size"]
    facts = DEFENSE_FACTS[canonical]
    config: dict[str, Any] = {"defense": canonical, "dataset": dataset}

    regularizer: GradientRegularizer | None = None
    if facts.regularizer is not None:
        if weight is None:
            lam = float(lam if lam is not None else facts.default_lambda or 0.0)  # every regularized defense has one
            weight = paper_weight(canonical, lam, lam_batch_size, size)
            config.update({"lam": float(lam), "lam_batch_size": lam_batch_size})
            logger.info("%s: paper lambda %g (batch %d, %dx%d) -> per-example weight %.6g",
                        canonical, lam, lam_batch_size, size, size, weight)
        if facts.regularizer == "input":
            regularizer = IGR(weight)
        else:
            sigma_px = 0.0
            if facts.random_start:
                sigma_px = paper_sigma_to_pixels(PAPER_SIGMA_NORMALIZED, size) if sigma is None else sigma
            regularizer = FGR(weight, sigma=sigma_px, variant=variant)
            config.update({"sigma_px": regularizer.sigma, "variant": variant})
        config["weight"] = regularizer.weight

    adversary: Any | None = None
    if facts.adversarial is not None:
        # torchattacks (and its scipy): only for adversarial training
        import torchattacks

        eps = AT_EPS[dataset] if eps is None else eps
        config["eps"] = float(eps)
        if facts.adversarial == "FGSM":
            adversary = torchattacks.FGSM(model, eps=float(eps))
        else:
            alpha = PGD_ALPHA_FACTOR * float(eps) / PGD_STEPS
            adversary = torchattacks.PGD(model, eps=float(eps), alpha=alpha, steps=PGD_STEPS, random_start=True)
            config.update({"steps": PGD_STEPS, "alpha": alpha})
    return Defense(canonical, regularizer, adversary, config)
