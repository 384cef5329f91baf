"""What :func:`~torchattacks_deform.evaluate_robustness` returns: one report per budget, and the curve over budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .flow import warp

__all__ = ["WORST", "RobustnessCurve", "RobustnessReport", "fraction"]


def fraction(mask: Tensor) -> float:
    """The fraction of True in a bool mask, as count / n in float64 (the harness's rule; 0.0 for none).

    Example:
        >>> fraction(torch.tensor([True, False, False]))
        0.3333333333333333
    """
    n = int(mask.numel())
    return int(mask.sum()) / n if n else 0.0

#: The name of the per-example worst case in :meth:`RobustnessReport.adversarial`.
WORST = "worst"
#: Per-class lines of ``str(report)``: every class up to this many, else the lowest ones.
_CLASSES_SHOWN = 10


def _suite(version: str) -> str:
    """The header's words for the suite that ran: ``"FlowAutoAttack 'standard', "``, or nothing for custom attacks."""
    return "" if version == "custom" else f"FlowAutoAttack {version!r}, "


@dataclass
class RobustnessReport:
    """What :func:`evaluate_robustness` found. Accuracies are fractions of all ``n`` examples.

    Attributes:
        n: number of examples.
        clean_accuracy: fraction classified correctly without attack.
        robust_accuracy: per attack name, the fraction still correct under that attack: the
            attack alone (``cascade=False``), or cumulatively under it and every attack before
            it (``cascade=True``).
        worst_case_accuracy: fraction correct under every attack (the per-example worst case).
        clean_correct: ``(N,)`` bool, correct without attack.
        success: per attack, ``(N,)`` bool: the attack fooled the example (in the cascade:
            this attack fooled it, the earlier ones had not).
        robust: ``(N,)`` bool, correct under every attack.
        flows: ``(N, 2, H, W)`` worst-case flows in pixels on the CPU (the first successful
            flow attack's, in attack order; zeros for robust and clean-misclassified examples,
            and for examples only a pixel-space torchattacks attack fooled), or None.
        time_s: seconds per attack.
        queries: per flow attack, the mean number of images the model classified per attacked
            example (forwards, with or without a backward; for FlowES, its queries).
        eps, norm, cascade: the settings.
        suite: the :class:`~torchattacks_deform.FlowAutoAttack` version whose members ran
            (``"standard"``, ``"fast"``, ``"legacy"``), or ``"custom"`` for attacks the caller
            built.
        attacked: per attack, the number of examples it ran on.
        labels: ``(N,)`` int64 labels on the CPU (what :attr:`per_class` counts), or None.
        seed: the seed of the attacks' randomness (``evaluate_robustness(seed=...)``), or None.
        images: ``(N, C, H, W)`` clean images on the CPU (with ``return_flows``), from which
            :meth:`adversarial` recomputes the adversarial images; else None.
        attack_flows: per flow attack (``cascade=False``), its ``(N, 2, H, W)`` flows in
            pixels on the CPU (zeros for the clean-misclassified examples it did not attack).
            In a cascade, each member's flow is ``flows`` where it fooled the example.
        pixel_adversarials: per pixel-space torchattacks attack, its ``(N, C, H, W)`` images
            (clean images where it did not run).
        padding_modes: per flow attack, the ``padding_mode`` its warp used.

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowFGSM, evaluate_robustness
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        >>> images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
        >>> report = evaluate_robustness(model, images, labels, eps=1.0,
        ...                              attacks={"fgsm": FlowFGSM(model, eps=1.0)}, seed=0)
        >>> report.adversarial("fgsm").shape, report.adversarial("worst").shape
        (torch.Size([6, 1, 4, 4]), torch.Size([6, 1, 4, 4]))
        >>> sorted(report.per_class), sorted(report.per_class[0])
        ([0, 1, 2, 3], ['clean_accuracy', 'n', 'worst_case_accuracy'])
    """

    n: int
    clean_accuracy: float
    robust_accuracy: dict[str, float]
    worst_case_accuracy: float
    clean_correct: Tensor
    success: dict[str, Tensor]
    robust: Tensor
    flows: Optional[Tensor]
    time_s: dict[str, float]
    queries: dict[str, float]
    eps: float
    norm: str
    cascade: bool
    attacked: dict[str, int] = field(default_factory=dict)
    labels: Optional[Tensor] = None
    seed: Optional[int] = None
    images: Optional[Tensor] = field(default=None, repr=False)
    attack_flows: dict[str, Tensor] = field(default_factory=dict, repr=False)
    pixel_adversarials: dict[str, Tensor] = field(default_factory=dict, repr=False)
    padding_modes: dict[str, str] = field(default_factory=dict, repr=False)
    suite: str = "custom"

    @property
    def per_attack(self) -> str:
        """What the per-attack numbers mean: ``"independent"`` or ``"cumulative"`` (cascade)."""
        return "cumulative" if self.cascade else "independent"

    @property
    def per_class(self) -> dict[int, dict[str, Any]]:
        """Per class present in the labels: ``{"n", "clean_accuracy", "worst_case_accuracy"}``.

        Accuracies are fractions of that class's examples; ``{}`` without :attr:`labels`.
        """
        if self.labels is None:
            return {}
        out: dict[int, dict[str, Any]] = {}
        for c in torch.unique(self.labels).tolist():
            mask = self.labels == c
            out[int(c)] = {"n": int(mask.sum()), "clean_accuracy": fraction(self.clean_correct[mask]),
                           "worst_case_accuracy": fraction(self.robust[mask])}
        return out

    @property
    def adv_images(self) -> dict[str, Tensor]:
        """Per attack, its ``(N, C, H, W)`` adversarial images (see :meth:`adversarial`).

        Recomputed from the stored flows at each access (all attacks at once): keep the result.
        """
        return {name: self.adversarial(name) for name in self.robust_accuracy}

    def adversarial(self, name: str = WORST) -> Tensor:
        """The ``(N, C, H, W)`` adversarial images of one attack, or the per-example worst case.

        ``name`` is an attack's name or ``"worst"``. For an attack: its images on every example
        it attacked (in a cascade: only where it fooled the example; the cascade keeps no
        failed tries), the clean image elsewhere. ``"worst"``: per example, the image of the
        first attack (in attack order) that fooled the model, the clean image where none did.
        Flow attacks' images are recomputed from the stored flows with
        :func:`~torchattacks_deform.warp` and clamped to ``[0, 1]``, as the attack applied them.

        Raises:
            ValueError: the report keeps no images (``return_flows=False``), or ``name`` is
                neither ``"worst"`` nor an attack of the report.
        """
        if name != WORST and name not in self.success:
            raise ValueError(f"name: expected {WORST!r} or one of the report's attacks {list(self.success)}, "
                             f"got {name!r}")
        if self.images is None:
            raise ValueError("adversarial: expected a report with images, got one without "
                             "(evaluate_robustness(..., return_flows=False) keeps none)")
        out = self.images.clone()
        if name == WORST:
            done = torch.zeros(self.n, dtype=torch.bool)
            for attack in self.robust_accuracy:
                mask = self.success[attack] & ~done
                if bool(mask.any()):
                    out[mask] = self._adversarial_at(attack, mask)
                    done |= mask
            return out
        mask = self.success[name] if self.cascade else self.clean_correct
        if bool(mask.any()):
            out[mask] = self._adversarial_at(name, mask)
        return out

    def _adversarial_at(self, name: str, mask: Tensor) -> Tensor:
        """Adversarial images of attack ``name`` at the examples of ``mask`` (which it attacked)."""
        assert self.images is not None
        if name in self.pixel_adversarials:
            return self.pixel_adversarials[name][mask]
        flow = self.attack_flows.get(name, self.flows)
        if flow is None:
            raise ValueError(f"adversarial: the report keeps no flows of {name!r}")
        images = self.images[mask]
        return warp(images, flow[mask].to(images.dtype),
                    padding_mode=self.padding_modes.get(name, "border")).clamp(0, 1)

    def _per_class_line(self) -> Optional[str]:
        classes = self.per_class
        if not classes:
            return None
        shown = sorted(classes.items())
        label = "per class, clean -> worst case %"
        if len(shown) > _CLASSES_SHOWN:
            shown = sorted(shown, key=lambda kv: (kv[1]["worst_case_accuracy"], kv[0]))[:_CLASSES_SHOWN // 2]
            label += f" ({len(shown)} lowest of {len(classes)} classes; all in report.per_class)"
        cells = [f"{c}: {100 * v['clean_accuracy']:.0f} -> {100 * v['worst_case_accuracy']:.0f}" for c, v in shown]
        return f"  {label}: {', '.join(cells)}"

    def __str__(self) -> str:
        how = ("cascade, per-attack accuracies cumulative" if self.cascade
               else "attacks run independently")
        rows = [("clean", self.clean_accuracy), *self.robust_accuracy.items(), ("worst case", self.worst_case_accuracy)]
        width = max(len(name) for name, _ in rows)
        lines = [f"Flow robustness: {self.n} examples, {self.norm} eps = {self.eps:g} px, {_suite(self.suite)}{how}"]
        for name, acc in rows:
            extra = f"  ({self.time_s[name]:.1f} s)" if name in self.time_s else ""
            lines.append(f"  {name:<{width}}  {100 * acc:5.1f}%{extra}")
        per_class = self._per_class_line()
        if per_class is not None:
            lines.append(per_class)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as plain Python values (JSON-able; per-example tensors become counts).

        ``per_class`` is keyed by the class index as a string (JSON object keys are strings).
        """
        return {
            "n": self.n, "eps": self.eps, "norm": self.norm, "cascade": self.cascade, "seed": self.seed,
            "suite": self.suite,
            "per_attack": self.per_attack, "attacks": list(self.robust_accuracy),
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": dict(self.robust_accuracy),
            "worst_case_accuracy": self.worst_case_accuracy,
            "clean_correct": int(self.clean_correct.sum()), "robust": int(self.robust.sum()),
            "fooled": {k: int(v.sum()) for k, v in self.success.items()},
            "attacked": dict(self.attacked), "time_s": dict(self.time_s), "queries": dict(self.queries),
            "per_class": {str(c): v for c, v in self.per_class.items()},
        }


class RobustnessCurve(Mapping[float, RobustnessReport]):
    """One :class:`RobustnessReport` per budget: what ``evaluate_robustness(eps=[...])`` returns.

    A read-only mapping ``eps -> report`` in the order of the budgets given (``curve[0.5]``,
    ``list(curve)``, ``curve.values()``); ``print(curve)`` gives one row per budget.

    Example:
        >>> import torch
        >>> from torchattacks_deform import evaluate_robustness
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        >>> images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
        >>> curve = evaluate_robustness(model, images, labels, eps=[0.25, 1.0], attacks="fast", seed=0)
        >>> list(curve), curve[1.0].eps
        ([0.25, 1.0], 1.0)
        >>> print(curve)  # doctest: +ELLIPSIS
        Flow robustness: 6 examples, Linf budgets in px, FlowAutoAttack 'fast', attacks run independently
          eps   clean %  FlowAPGD-CE %  FlowAPGD-T %  StAdv %  FlowSquare %  worst case %
          0.25  ...
          1     ...
    """

    def __init__(self, reports: Sequence[RobustnessReport]) -> None:
        self._reports = {float(r.eps): r for r in reports}

    def __getitem__(self, eps: float) -> RobustnessReport:
        try:
            return self._reports[float(eps)]
        except (KeyError, TypeError, ValueError):
            raise KeyError(f"eps: expected one of the budgets {list(self._reports)}, got {eps!r}") from None

    def __iter__(self) -> Iterator[float]:
        return iter(self._reports)

    def __len__(self) -> int:
        return len(self._reports)

    def __repr__(self) -> str:
        return f"RobustnessCurve(eps={list(self._reports)})"

    def __str__(self) -> str:
        reports = list(self._reports.values())
        first = reports[0]
        how = "cascade, per-attack accuracies cumulative" if first.cascade else "attacks run independently"
        names = list(first.robust_accuracy)
        header = ["eps", "clean %", *[f"{a} %" for a in names], "worst case %"]
        rows = [[f"{r.eps:g}", f"{100 * r.clean_accuracy:.1f}",
                 *[f"{100 * r.robust_accuracy[a]:.1f}" if a in r.robust_accuracy else "-" for a in names],
                 f"{100 * r.worst_case_accuracy:.1f}"] for r in reports]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines = [f"Flow robustness: {first.n} examples, {first.norm} budgets in px, {_suite(first.suite)}{how}",
                 "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``{"eps": [budgets], "reports": [report.to_dict() per budget]}`` (JSON-able)."""
        return {"eps": list(self._reports), "reports": [r.to_dict() for r in self._reports.values()]}
