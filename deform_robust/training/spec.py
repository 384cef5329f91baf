"""What one training run is: :class:`TrainSpec` (validated, JSON-able), its identity, and :class:`TrainResult`.

Harness code (timm keeps it in ``train.py``, beside the library): :func:`~deform_robust.training.run.train_from_spec`
builds the data, model, defense and schedule that a spec names from :mod:`fgr_defense` and trains
with :class:`~fgr_defense.trainer.Trainer` into an output folder. The ``train`` command, the
experiment harness (``eval/``), the benchmarks and the tests all go through it.

Convention:
    **Identity.** The fields that determine the trained weights form the spec's identity
    (:meth:`TrainSpec.identity`): dataset, model, defense and its parameters, the schedule
    (without its epoch count), data pipeline, augmentation, ``limit``, ``seed``,
    ``grad_clip``, ``keep_best`` (plus ``val_limit`` when ``keep_best`` selects by it) and
    ``data_root``. The identity is stored in the checkpoint's ``meta["identity"]`` (the
    whole spec in ``meta["spec"]``). ``epochs`` is the target: a run can be continued to more
    epochs. The runtime options (``device``, ``workers``, ``progress``,
    ``checkpoint_every``, ``download``, ``validation``, ``val_batch_size``, and ``val_limit``
    without ``keep_best``) are not part of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Union

from fgr_defense.constants import DATASETS, DEFENSE_FACTS, MAX_LR, MODEL_NAMES, PIPELINES, SCHEDULES
from fgr_defense.defenses import (
    PAPER_BATCH_SIZE,
    Schedule,
    check_defense_args,
    get_schedule,
    resolve_defense_name,
)
from fgr_defense.naming import slugify
from torchattacks_deform.validation import check_bool, check_choice, check_number

__all__ = ["IDENTITY_FIELDS", "RUNTIME_FIELDS", "TrainResult", "TrainSpec", "default_out_dir",
           "identity_differences"]


#: Fields of :class:`TrainSpec` that determine the weights (see the module docstring).
IDENTITY_FIELDS = ("dataset", "model", "defense", "weight", "lam", "lam_batch_size", "sigma", "variant", "eps",
                   "schedule", "batch_size", "lr", "pipeline", "augment", "limit", "seed", "grad_clip",
                   "keep_best", "data_root")
#: Fields of :class:`TrainSpec` that do not change the weights.
RUNTIME_FIELDS = ("epochs", "download", "device", "workers", "progress", "checkpoint_every", "validation",
                  "val_limit", "val_batch_size")

ScheduleSpec = Union[str, Schedule]


@dataclass(frozen=True)
class TrainSpec:
    """Everything that defines one training run (validated on construction, JSON-able).

    Attributes:
        dataset: one of :data:`~fgr_defense.constants.DATASETS`.
        model: ``"smallcnn"``, ``"vgg11"`` or ``"resnet18"``.
        defense: one of the paper's defenses (case-insensitive; stored canonical).
        weight: this package's penalty weight, or None to convert ``lam``.
        lam: the paper's lambda (authors' convention); default :data:`~fgr_defense.defenses.DEFAULT_LAMBDA`
            for regularized defenses when ``weight`` is None.
        lam_batch_size: the batch size ``lam`` refers to (the paper's 256).
        sigma: FGR+RS random start in pixels (None: the paper's 0.01 normalized).
        variant: ``"paper"`` or ``"authors"`` (FGR defenses).
        eps: L-inf budget of adversarial training (None: the paper's).
        schedule: a schedule name (``"paper"``, ``"fast"``, ``"authors"``) or a custom
            :class:`~fgr_defense.defenses.Schedule` (a dict is converted).
        epochs, batch_size, lr: overrides of the schedule's values (None: keep).
        pipeline: data pipeline, ``"paper"`` or ``"authors"`` (:func:`~fgr_defense.data.get_dataset`).
        augment: training augmentation of the pipeline.
        limit: train on the first ``limit`` training images only.
        seed: seed of the initialization and of all training randomness (int >= 0).
        grad_clip: clip the gradient norm (None: no clipping).
        keep_best: also keep ``best.pt``, the epoch of best validation accuracy; the result's
            ``checkpoint`` is then ``best.pt``.
        data_root: torchvision data folder (needed except for ``mnist5k``).
        download: let torchvision download a missing dataset (runtime).
        device: ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (runtime; checked by
            :func:`~fgr_defense.device.resolve_device` when training starts).
        workers: DataLoader workers (runtime).
        progress: progress bar (runtime).
        checkpoint_every: also checkpoint every N optimizer steps (runtime).
        validation: evaluate on the test split after every epoch (runtime; required by
            ``keep_best``).
        val_limit: evaluate on the first ``val_limit`` test images only.
        val_batch_size: batch size of the evaluation (runtime).

    Raises:
        TypeError, ValueError: a field out of range or inconsistent (the message names it).

    Example:
        >>> spec = TrainSpec(defense="fgr+rs", weight=5.0, epochs=1, limit=64, device="cpu")
        >>> spec.defense, spec.training_schedule().epochs
        ('FGR+RS', 1)
        >>> TrainSpec.from_dict(spec.to_dict()) == spec
        True
        >>> TrainSpec(val_limit=0)
        Traceback (most recent call last):
        ...
        ValueError: val_limit: expected an int >= 1, got 0
    """

    dataset: str = "mnist5k"
    model: str = "smallcnn"
    defense: str = "Standard"
    weight: float | None = None
    lam: float | None = None
    lam_batch_size: int = PAPER_BATCH_SIZE
    sigma: float | None = None
    variant: str = "paper"
    eps: float | None = None
    schedule: ScheduleSpec = "fast"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    pipeline: str = "paper"
    augment: bool = True
    limit: int | None = None
    seed: int = 0
    grad_clip: float | None = None
    keep_best: bool = False
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    workers: int = 0
    progress: bool = True
    checkpoint_every: int | None = None
    validation: bool = True
    val_limit: int | None = None
    val_batch_size: int = field(default=512)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_choice(self.dataset, "dataset", tuple(DATASETS))
        check_choice(self.model, "model", MODEL_NAMES)
        for name in ("weight", "lam", "sigma", "eps"):  # ints are fine; store floats
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                set_(self, name, float(value))
        defense = check_defense_args(self.defense, lam=self.lam, weight=self.weight,
                                     lam_batch_size=self.lam_batch_size, sigma=self.sigma, variant=self.variant,
                                     eps=self.eps)
        set_(self, "defense", defense)
        if self.weight is None and self.lam is None and DEFENSE_FACTS[defense].default_lambda is not None:
            set_(self, "lam", DEFENSE_FACTS[defense].default_lambda)
        if isinstance(self.schedule, Mapping):
            set_(self, "schedule", Schedule.from_dict(self.schedule))
        elif not isinstance(self.schedule, Schedule):
            check_choice(self.schedule, "schedule", SCHEDULES)
        check_number(self.epochs, "epochs", integer=True, minimum=1, allow_none=True)
        check_number(self.batch_size, "batch_size", integer=True, minimum=1, allow_none=True)
        check_number(self.lr, "lr", minimum=0, exclusive_minimum=True, maximum=MAX_LR, allow_none=True)
        check_choice(self.pipeline, "pipeline", PIPELINES)
        for name in ("augment", "keep_best", "download", "progress", "validation"):
            check_bool(getattr(self, name), name)
        check_number(self.limit, "limit", integer=True, minimum=1, allow_none=True)
        check_number(self.seed, "seed", integer=True, minimum=0)
        check_number(self.grad_clip, "grad_clip", minimum=0, exclusive_minimum=True, allow_none=True)
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, os.PathLike)):
                raise TypeError(f"data_root: expected a folder path or None, got {type(self.data_root).__name__}")
            set_(self, "data_root", os.fspath(self.data_root))
        elif self.dataset != "mnist5k":
            raise ValueError(f"data_root: dataset {self.dataset!r} loads from a local torchvision folder; pass "
                             "data_root (--data-root DIR, with --download to fetch it there), or use 'mnist5k'")
        if self.device is None:
            set_(self, "device", "auto")
        elif not isinstance(self.device, str):
            raise TypeError(f"device: expected a str such as 'auto', 'cpu' or 'cuda:0', got {self.device!r}")
        check_number(self.workers, "workers", integer=True, minimum=0)
        check_number(self.checkpoint_every, "checkpoint_every", integer=True, minimum=1, allow_none=True)
        check_number(self.val_limit, "val_limit", integer=True, minimum=1, allow_none=True)
        check_number(self.val_batch_size, "val_batch_size", integer=True, minimum=1)
        if self.val_limit is not None and not self.validation:
            raise ValueError("val_limit: set, but validation is off (--no-val); drop one of them")
        if self.keep_best and not self.validation:
            raise ValueError("keep_best: selects best.pt by validation accuracy, but validation is off (--no-val)")
        self.training_schedule()  # the schedule exists for the dataset and the overrides are valid

    # ------------------------------------------------------------------ derived
    def training_schedule(self) -> Schedule:
        """The schedule: the named one for the dataset (or the custom one) with the overrides applied."""
        base = self.schedule if isinstance(self.schedule, Schedule) else get_schedule(self.schedule, self.dataset)
        changes = {k: getattr(self, k) for k in ("epochs", "batch_size", "lr") if getattr(self, k) is not None}
        return base.replace(**changes) if changes else base

    def defense_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~fgr_defense.defenses.build_defense` (after the name and model)."""
        kw: dict[str, Any] = {"weight": self.weight, "lam": self.lam, "sigma": self.sigma, "variant": self.variant,
                              "eps": self.eps}
        if self.lam is not None:
            kw["lam_batch_size"] = self.lam_batch_size
        return kw

    def identity(self) -> dict[str, Any]:
        """The JSON-able settings that determine the weights (module docstring).

        Example:
            >>> a = TrainSpec(epochs=1, device="cpu", workers=2)
            >>> a.identity() == TrainSpec(epochs=3).identity()  # epochs and runtime options excluded
            True
            >>> a.identity() == TrainSpec(epochs=1, limit=64).identity()
            False
        """
        schedule = self.training_schedule().to_dict()
        del schedule["name"], schedule["epochs"]
        ident: dict[str, Any] = {k: getattr(self, k) for k in IDENTITY_FIELDS
                                 if k not in ("schedule", "batch_size", "lr")}
        ident["schedule"] = schedule
        if self.lam is None:
            ident["lam_batch_size"] = None
        if self.keep_best:
            ident["val_limit"] = self.val_limit
        return json.loads(json.dumps(ident))

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-able (a custom schedule as a dict)."""
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict() if isinstance(self.schedule, Schedule) else self.schedule
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSpec:
        """The inverse of :meth:`to_dict`; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise TypeError(f"spec: expected a dict of TrainSpec fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"spec: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_from_spec` returns.

    Attributes:
        checkpoint: the checkpoint to evaluate: ``out_dir/best.pt`` with ``keep_best``, else
            ``out_dir/model.pt``.
        model_path: ``out_dir/model.pt`` (the last epoch, with the trainer state).
        out_dir: the run's folder.
        history: one record per epoch (see :mod:`fgr_defense.trainer`).
        wall_s: seconds this call took.
        train_s: seconds spent training over all calls (the history's ``time_s``).
        cached: True when nothing was trained (a complete run was reused).
        spec: the spec.
    """

    checkpoint: Path
    model_path: Path
    out_dir: Path
    history: list[dict[str, Any]]
    wall_s: float
    train_s: float
    cached: bool
    spec: TrainSpec


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``["limit: stored 64, given 65", ...]`` for every setting that differs.

    Example:
        >>> identity_differences({"limit": 64, "seed": 0}, {"limit": 65, "seed": 0})
        ['limit: stored 64, given 65']
    """
    a, b = _flatten(stored), _flatten(given)
    return [f"{k}: stored {a.get(k)!r}, given {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def default_out_dir(
    dataset: str,
    model: str,
    defense: str,
    lam: float | None = None,
    root: str | Path = "results/train",
    weight: float | None = None,
) -> Path:
    """``<root>/<slug>``, the slug (:func:`~fgr_defense.naming.slugify`) of ``<dataset>-<model>-<defense>[-lam<lam>][-w<weight>]``.

    Example:
        >>> default_out_dir("mnist5k", "smallcnn", "FGR+RS+AT-PGD").as_posix()
        'results/train/mnist5k-smallcnn-fgr-rs-at-pgd'
        >>> default_out_dir("mnist5k", "smallcnn", "IGR", lam=1000).as_posix()
        'results/train/mnist5k-smallcnn-igr-lam1000'
        >>> default_out_dir("mnist5k", "smallcnn", "FGR", weight=20).as_posix()
        'results/train/mnist5k-smallcnn-fgr-w20'
    """
    suffix = f"-lam{lam:g}" if lam is not None else ""
    suffix += f"-w{weight:g}" if weight is not None else ""
    return Path(root) / slugify(f"{dataset}-{model}-{resolve_defense_name(defense)}{suffix}")
