"""Settings of a benchmark run: :class:`BenchConfig`, the per-device :data:`SPECS` (torch-free).

Example:
    >>> cfg = BenchConfig.quick_config(sections=("attacks",))
    >>> cfg.quick, cfg.models, spec_for(cfg, "cpu", "smallcnn").repeats
    (True, ('smallcnn',), 2)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

__all__ = [
    "AUTOCAST_DTYPES",
    "FORMAT",
    "SECTIONS",
    "SPECS",
    "STADV_RATE",
    "SUITE_VERSIONS",
    "TRAIN_ROWS",
    "BenchConfig",
    "ModelSpec",
    "spec_for",
]

#: Name of the ``bench.json`` format (2: the ``suite`` section, ``config.autocast_dtype``).
FORMAT = "deform-robust-bench/2"
SECTIONS = ("attacks", "stadv", "es", "suite", "train")
TRAIN_ROWS = ("Standard", "IGR", "FGR", "FGR+RS", "FGR+RS (authors)", "AT-PGD", "FGR+RS+AT-PGD")
#: Attack success rate the StAdv rows are timed to reach.
STADV_RATE = 0.95
#: Values of ``--autocast-dtype`` (mapped to ``torch.bfloat16`` by :func:`benchmarks.common.autocast_dtype`).
AUTOCAST_DTYPES = ("bf16",)
#: Versions of :class:`~torchattacks_deform.FlowAutoAttack` the suite row may time.
SUITE_VERSIONS = ("standard", "fast")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the benchmark and the batch sizes / repetitions used for it.

    Attributes:
        arch: :func:`fgr_defense.models.build_model` name.
        channels, size: input channels and height = width.
        dataset: preset dataset (``build_defense``'s budgets and lambdas; MNIST-5k images).
        attack_batch: images per attack call.
        train_batch: images per training step.
        pgd_steps: steps of the PGD rows.
        repeats: timed rounds.
    """

    arch: str
    channels: int
    size: int
    dataset: str
    attack_batch: int
    train_batch: int
    pgd_steps: int
    repeats: int


#: Settings per device kind; the CPU ones take about 4-5 minutes on 2 cores (9 rounds per model: medians robust to load).
SPECS: dict[str, dict[str, ModelSpec]] = {
    "cpu": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 64, 64, 10, 9),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 16, 16, 5, 9),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 8, 8, 5, 9),
    },
    "cuda": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 256, 256, 10, 15),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 256, 128, 10, 15),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 256, 128, 10, 15),
    },
    "quick": {
        "smallcnn": ModelSpec("smallcnn", 1, 28, "mnist5k", 8, 8, 2, 2),
        "vgg11": ModelSpec("vgg11", 3, 32, "cifar10", 2, 2, 1, 2),
        "resnet18": ModelSpec("resnet18", 3, 32, "cifar10", 2, 2, 1, 2),
    },
}


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass
class BenchConfig:
    """Settings of one benchmark run.

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        quick: tiny batches and steps (smoke test; the numbers mean little).
        models: which of ``smallcnn``, ``vgg11``, ``resnet18``.
        sections: which of :data:`SECTIONS`.
        repeats: timed rounds (default: per model, see :data:`SPECS`).
        warmup: untimed rounds before the timed ones.
        threads: ``torch.set_num_threads`` for the run (None: leave torch's default).
        seed: seed of the data, the models and the random attacks.
        autocast_dtype: ``"bf16"`` runs the models under ``torch.autocast(dtype=torch.bfloat16)``
            (attacks, references and training steps); None: float32.
        channels_last: channels-last inputs and models.
        stadv_images, stadv_max_steps: StAdv rows' batch and step limit of the probe.
        es_images: FlowES rows' batch (population 20, 25 steps; quick: 8 and 10).
        suite_images, suite_eps, suite_version: the suite row's batch of correctly classified
            images, flow budget (pixels, Linf) and :class:`~torchattacks_deform.FlowAutoAttack`
            version.
        train_epochs: epochs of the standard SmallCNN the StAdv/ES/suite rows attack.
        out: folder of ``bench.json`` and ``bench.md`` (None: write nothing).
        command: the command line recorded in the outputs.
    """

    device: str = "auto"
    quick: bool = False
    models: tuple[str, ...] = ("smallcnn", "vgg11", "resnet18")
    sections: tuple[str, ...] = SECTIONS
    repeats: Optional[int] = None
    warmup: int = 1
    threads: Optional[int] = None
    seed: int = 0
    autocast_dtype: Optional[str] = None
    channels_last: bool = False
    stadv_images: int = 64
    stadv_max_steps: int = 200
    es_images: int = 32
    suite_images: int = 8
    suite_eps: float = 0.5
    suite_version: str = "standard"
    train_epochs: int = 2
    out: Optional[str] = "results/bench"
    command: str = "python -m benchmarks"

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in SPECS["cpu"]]
        if unknown or not self.models:
            raise ValueError(f"models: expected a non-empty subset of {sorted(SPECS['cpu'])}, got {list(self.models)}")
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise ValueError(f"sections: expected a non-empty subset of {list(SECTIONS)}, got {list(self.sections)}")
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        for name in ("stadv_images", "stadv_max_steps", "es_images", "suite_images", "train_epochs"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected a non-negative int, got {self.warmup!r}")
        if self.autocast_dtype not in (None, *AUTOCAST_DTYPES):
            raise ValueError(f"autocast_dtype: expected None or one of {list(AUTOCAST_DTYPES)}, "
                             f"got {self.autocast_dtype!r}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last: expected a bool, got {self.channels_last!r}")
        eps = self.suite_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
            raise ValueError(f"suite_eps: expected a finite number > 0 (pixels), got {eps!r}")
        if self.suite_version not in SUITE_VERSIONS:
            raise ValueError(f"suite_version: expected one of {list(SUITE_VERSIONS)}, got {self.suite_version!r}")

    @classmethod
    def quick_config(cls, **kwargs: Any) -> BenchConfig:
        """The smoke-test configuration: SmallCNN only, tiny batches, two rounds, the fast suite."""
        base: dict[str, Any] = {"quick": True, "models": ("smallcnn",), "stadv_images": 16,
                                "stadv_max_steps": 40, "es_images": 8,
                                "suite_version": "fast", "train_epochs": 1, "warmup": 1}
        base.update(kwargs)
        return cls(**base)


def spec_for(cfg: BenchConfig, device_type: str, arch: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``arch`` for this run (quick, CUDA or CPU; ``cfg.repeats`` applied)."""
    spec = SPECS["quick" if cfg.quick else ("cuda" if device_type == "cuda" else "cpu")][arch]
    return replace(spec, repeats=cfg.repeats) if cfg.repeats is not None else spec
