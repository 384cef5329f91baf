"""Names and fixed facts that the command line needs before ``torch`` is imported.

This module imports nothing but the standard library, so that building the argument parser
(``deform-robust --help``) stays fast. :mod:`fgr_defense.data`,
:mod:`fgr_defense.models`, :mod:`fgr_defense.defenses` and :mod:`fgr_defense.regularizers`
import their name lists from here; a test checks that they agree with what those modules build.

Example:
    >>> DATASETS["cifar10"]
    {'channels': 3, 'size': 32, 'num_classes': 10}
    >>> "FGR+RS" in DEFENSES, VARIANTS, PIPELINES
    (True, ('paper', 'authors'), ('paper', 'authors'))
"""

from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = [
    "DATASETS",
    "DEFENSES",
    "DEFENSE_FACTS",
    "REFERENCE_DEFENSE",
    "DefenseFacts",
    "MAX_LR",
    "MAX_PENALTY",
    "MODEL_NAMES",
    "PIPELINES",
    "SCHEDULES",
    "VARIANTS",
]

#: Channels, image size and number of classes of each dataset name.
DATASETS: dict[str, dict[str, int]] = {
    "mnist5k": {"channels": 1, "size": 28, "num_classes": 10},
    "mnist": {"channels": 1, "size": 28, "num_classes": 10},
    "cifar10": {"channels": 3, "size": 32, "num_classes": 10},
    "cifar100": {"channels": 3, "size": 32, "num_classes": 100},
}

#: Model names of :func:`fgr_defense.models.build_model`.
MODEL_NAMES: tuple[str, ...] = ("smallcnn", "smallcnn16", "vgg11", "resnet18")



class DefenseFacts(NamedTuple):
    """What a defense is made of, and its lambdas in the paper (authors' convention)."""

    regularizer: Optional[str]  #: ``"input"`` (IGR), ``"flow"`` (the FGR family) or None
    adversarial: Optional[str]  #: the adversarial-training attack, ``"FGSM"`` or ``"PGD"``, or None
    random_start: bool  #: FGR+RS's random start
    paper_lambdas: tuple[float, ...]  #: the paper's sweep (the smallest is the default lambda)

    @property
    def default_lambda(self) -> Optional[float]:
        """The lambda used when neither ``lam`` nor ``weight`` is given: the smallest of the paper's sweep."""
        return min(self.paper_lambdas) if self.paper_lambdas else None


_IGR_LAMBDAS = (1000.0, 3000.0, 5000.0, 7000.0)
_FGR_LAMBDAS = (100.0, 400.0, 500.0, 1000.0)

#: The paper's defenses, in its order, and what each is made of: the one table of defense facts
#: (:func:`fgr_defense.defenses.build_defense`, ``TrainSpec``, the harness's presets and reports read it).
DEFENSE_FACTS: dict[str, DefenseFacts] = {
    "Standard": DefenseFacts(None, None, False, ()),
    "AT-FGSM": DefenseFacts(None, "FGSM", False, ()),
    "AT-PGD": DefenseFacts(None, "PGD", False, ()),
    "IGR": DefenseFacts("input", None, False, _IGR_LAMBDAS),
    "FGR": DefenseFacts("flow", None, False, _FGR_LAMBDAS),
    "FGR+RS": DefenseFacts("flow", None, True, _FGR_LAMBDAS),
    "FGR+RS+AT-PGD": DefenseFacts("flow", "PGD", True, _FGR_LAMBDAS),
}

#: The paper's defenses, in its order.
DEFENSES: tuple[str, ...] = tuple(DEFENSE_FACTS)

#: The reference defense of the matched (Table 1) comparisons and reports: the paper's baseline.
REFERENCE_DEFENSE = "AT-PGD"

#: Training schedules by name (:func:`fgr_defense.defenses.get_schedule`).
SCHEDULES: tuple[str, ...] = ("paper", "fast", "authors")

#: FGR/FGR+RS variants: ``"paper"`` is eq. (16) as printed, ``"authors"`` the authors' code.
VARIANTS: tuple[str, ...] = ("paper", "authors")

#: Data pipelines of :func:`fgr_defense.data.get_dataset`: ``"paper"`` (pad-and-crop, test
#: images untouched) or ``"authors"`` (the authors' resize-then-crop, test images resized too).
PIPELINES: tuple[str, ...] = ("paper", "authors")

#: Largest learning rate a schedule accepts: above it no optimizer here converges, and values
#: such as 1e300 only overflow to NaN in the first step.
MAX_LR: float = 10.0

#: Largest regularizer weight or paper lambda accepted: the paper's largest lambda is in the
#: thousands; values such as 1e300 only overflow the loss to inf in the first step.
MAX_PENALTY: float = 1e7
