"""Names and fixed facts that the command line needs before ``torch`` is imported.

This module imports nothing but the standard library, so that building the argument parser
(``python -m fgr_defense --help``) stays fast. :mod:`fgr_defense.data`,
:mod:`fgr_defense.models`, :mod:`fgr_defense.presets` and :mod:`fgr_defense.regularizers`
import their name lists from here; a test checks that they agree with what those modules build.

Example:
    >>> DATASETS["cifar10"]
    {'channels': 3, 'size': 32, 'num_classes': 10}
    >>> "FGR+RS" in DEFENSES, VARIANTS, PIPELINES
    (True, ('paper', 'authors'), ('paper', 'authors'))
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "DEFENSES",
    "MAX_LR",
    "MAX_PENALTY",
    "MODEL_NAMES",
    "PIPELINES",
    "SCHEDULES",
    "TRAIN_MODES",
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

#: The paper's defenses, in its order.
DEFENSES: tuple[str, ...] = ("Standard", "AT-FGSM", "AT-PGD", "IGR", "FGR", "FGR+RS", "FGR+RS+AT-PGD")

#: Training schedules by name (:func:`fgr_defense.presets.get_schedule`).
SCHEDULES: tuple[str, ...] = ("paper", "fast", "authors")

#: FGR/FGR+RS variants: ``"paper"`` is eq. (16) as printed, ``"authors"`` the authors' code.
VARIANTS: tuple[str, ...] = ("paper", "authors")

#: Data pipelines of :func:`fgr_defense.data.get_dataset`: ``"paper"`` (pad-and-crop, test
#: images untouched) or ``"authors"`` (the authors' resize-then-crop, test images resized too).
PIPELINES: tuple[str, ...] = ("paper", "authors")

#: Modes of :func:`fgr_defense.spec.train_from_spec`.
TRAIN_MODES: tuple[str, ...] = ("new", "resume", "auto")

#: Largest learning rate a schedule accepts: above it no optimizer here converges, and values
#: such as 1e300 only overflow to NaN in the first step.
MAX_LR: float = 10.0

#: Largest regularizer weight or paper lambda accepted: the paper's largest lambda is in the
#: thousands; values such as 1e300 only overflow the loss to inf in the first step.
MAX_PENALTY: float = 1e7
