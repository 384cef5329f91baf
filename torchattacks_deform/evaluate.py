"""evaluate_robustness: from a model and labelled images to robust accuracies under flow attacks."""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union, overload

import torch
from torch import Tensor, nn

from ._base import FlowAttack, check_model_dtype
from ._compat import TorchattacksAttack
from ._data import batches
from .autoattack import VERSIONS, FlowAutoAttack, _member_names, version_members
from .flow import NORMS, warp
from .modes import preserve_modes
from .validation import check_bool, check_budget, check_choice, check_labels, check_number

__all__ = ["WORST", "RobustnessCurve", "RobustnessReport", "evaluate_robustness"]

logger = logging.getLogger(__name__)

AttacksArg = Union[str, Sequence[FlowAttack], Mapping[str, FlowAttack]]

#: The name of the per-example worst case in :meth:`RobustnessReport.adversarial`.
WORST = "worst"
#: Per-class lines of ``str(report)``: every class up to this many, else the lowest ones.
_CLASSES_SHOWN = 10


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
            out[int(c)] = {"n": int(mask.sum()), "clean_accuracy": float(self.clean_correct[mask].float().mean()),
                           "worst_case_accuracy": float(self.robust[mask].float().mean())}
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
        lines = [f"Flow robustness: {self.n} examples, {self.norm} eps = {self.eps:g} px, {how}"]
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
        Flow robustness: 6 examples, Linf budgets in px, attacks run independently
          eps   clean %  FlowPGD-CE %  FlowPGD-margin %  StAdv %  FlowES %  worst case %
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
        lines = [f"Flow robustness: {first.n} examples, {first.norm} budgets in px, {how}",
                 "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``{"eps": [budgets], "reports": [report.to_dict() per budget]}`` (JSON-able)."""
        return {"eps": list(self._reports), "reports": [r.to_dict() for r in self._reports.values()]}


def _build(model: nn.Module, attacks: Any, eps: float, norm: str, cascade: bool) -> tuple[list[str], list[Any]]:
    """Names and attack objects: FlowAttack instances, and (``cascade=False``) torchattacks' own."""
    if isinstance(attacks, str):
        check_choice(attacks, "attacks", VERSIONS[:3])
        specs = version_members(attacks, eps, norm)
        return [n for n, _, _ in specs], [cls(model, **kwargs) for _, cls, kwargs in specs]
    if isinstance(attacks, Mapping):
        names, members = [str(k) for k in attacks], list(attacks.values())
        where = [f"attacks[{k!r}]" for k in attacks]
    elif isinstance(attacks, (list, tuple)):
        members, names = list(attacks), []
        where = [f"attacks[{i}]" for i in range(len(members))]
    else:
        raise TypeError(f"attacks: expected 'standard', 'fast', 'apgd', a list of FlowAttack instances or a "
                        f"dict "
                        f"name -> attack, got {type(attacks).__name__}")
    if not members:
        raise ValueError("attacks: expected at least one attack, got none")
    for label, atk in zip(where, members):
        if not isinstance(atk, TorchattacksAttack):
            raise TypeError(f"{label}: expected a FlowAttack (or a torchattacks Attack) instance, got "
                            f"{type(atk).__name__}")
        if cascade and not isinstance(atk, FlowAttack):
            raise TypeError(f"{label}: cascade=True runs a FlowAutoAttack, expected a FlowAttack, got "
                            f"{type(atk).__name__}")
        if atk.model is not model:
            raise ValueError(f"{label}: expected an attack on the evaluated model, got one on another model")
        if atk.targeted:
            raise ValueError(f"{label}: expected an untargeted attack, got mode {atk.attack_mode!r}")
        if atk.normalization_used is not None:
            raise ValueError(f"{label}: expected no set_normalization_used (evaluate_robustness passes [0, 1] "
                             "images to the model: put the normalization inside the model)")
        if isinstance(atk, FlowAttack):  # the report says eps: every flow attack must attack at eps
            atk.require_budget(eps, norm, label)
    return (names or _member_names(members)), members


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(images)
    FlowAttack._check_logits(logits, images.shape[0])
    return logits  # type: ignore[no-any-return]


@contextlib.contextmanager
def _seeded(seed: Optional[int], device: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s, on CUDA) with ``seed``; restore them on exit.

    None: no seeding, the caller's generators are used and advanced as usual.
    """
    if seed is None:
        yield
        return
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.random.default_generator.manual_seed(seed)
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _budget_list(eps: Sequence[Any]) -> list[float]:
    if not eps:
        raise ValueError("eps: expected a budget or a non-empty list of budgets, got an empty "
                         f"{type(eps).__name__}")
    budgets = [float(check_budget(e, f"eps[{i}]")) for i, e in enumerate(eps)]
    repeated = sorted({e for e in budgets if budgets.count(e) > 1})
    if repeated:
        raise ValueError(f"eps: expected distinct budgets, got {repeated[0]:g} more than once")
    return budgets


@overload
def evaluate_robustness(
    model: nn.Module, images: Any, labels: Any = ..., *, eps: float = ..., norm: str = ...,
    attacks: AttacksArg = ..., cascade: bool = ..., batch_size: int = ...,
    device: Union[str, torch.device, None] = ..., return_flows: bool = ..., progress: Optional[bool] = ...,
    seed: Optional[int] = ...,
) -> RobustnessReport: ...


@overload
def evaluate_robustness(
    model: nn.Module, images: Any, labels: Any = ..., *, eps: Sequence[float], norm: str = ...,
    attacks: AttacksArg = ..., cascade: bool = ..., batch_size: int = ...,
    device: Union[str, torch.device, None] = ..., return_flows: bool = ..., progress: Optional[bool] = ...,
    seed: Optional[int] = ...,
) -> RobustnessCurve: ...


def evaluate_robustness(
    model: nn.Module,
    images: Any,
    labels: Any = None,
    *,
    eps: Union[float, Sequence[float]] = 0.5,
    norm: str = "Linf",
    attacks: AttacksArg = "standard",
    cascade: bool = False,
    batch_size: int = 256,
    device: Union[str, torch.device, None] = None,
    return_flows: bool = True,
    progress: Optional[bool] = None,
    seed: Optional[int] = None,
) -> Union[RobustnessReport, RobustnessCurve]:
    """Robust accuracy of ``model`` under flow attacks, in one call.

    Every clean-correct example is attacked. With ``cascade=False`` (default) every attack runs
    independently on all of them, so each attack's robust accuracy is that attack alone; an
    example is robust in the worst case only if no attack fooled it. With ``cascade=True`` the
    attacks run as a :class:`~torchattacks_deform.FlowAutoAttack` (each only on the examples
    the previous ones did not fool: cheaper, same worst case up to randomness; the per-attack
    numbers are then cumulative, ``report.per_attack == "cumulative"``).

    Convention:
        ``eps`` is in **pixels** of displacement, in ``norm`` (see
        :mod:`torchattacks_deform.flow`). The model takes ``[0, 1]`` images (RobustBench models
        do; put any normalization inside the model).

    Args:
        model: any classifier ``nn.Module`` returning logits ``(B, K)``; its mode and its
            parameters' ``.grad`` are left as they were.
        images: float tensor or numpy array ``(N, C, H, W)`` in ``[0, 1]`` (integer images are
            refused: divide by 255), or a DataLoader / iterable of ``(images, labels)`` batches.
        labels: ``(N,)`` integer class indices (tensor or array); None with a DataLoader.
        eps: budget in pixels, finite and ``>= 0``; or a list/tuple of distinct budgets: then
            the evaluation runs once per budget (with ``attacks`` a version name,
            built at each budget) and a :class:`RobustnessCurve` (``{eps: report}``) comes back.
        norm: ``"Linf"`` or ``"L2"`` (the ``"L2"`` versions have no StAdv and FlowES).
        attacks: ``"standard"``, ``"fast"`` or ``"apgd"`` (the members of that
            :class:`~torchattacks_deform.FlowAutoAttack` version, built from ``eps`` and
            ``norm``), a list of :class:`~torchattacks_deform.FlowAttack` instances on
            ``model`` whose budget is ``eps`` in ``norm``, or a dict name -> attack. With
            ``cascade=False`` pixel-space torchattacks
            attacks (``torchattacks.PGD(model, ...)``) count too (no flow, no query count).
        cascade: run the attacks as a cascade (see above).
        batch_size: examples per batch (larger DataLoader batches are split).
        device: where to run; default: the device of the model's parameters, else CPU.
        return_flows: keep the worst-case flows, each attack's flows and the clean images (on
            CPU) in the report, from which ``report.adversarial(name)`` and
            ``report.adv_images`` recompute the adversarial images; False keeps none of them.
        progress: a tqdm bar over batches and attacks with the running worst-case robust
            accuracy, elapsed time and ETA: True always, False never, None (default) when
            stderr is a terminal.
        seed: an int in ``[0, 2**64)`` seeds the attacks' randomness (random starts, FlowES's
            noise, a shuffling DataLoader) on the CPU and the CUDA device used, so that two
            calls with the same seed give the same results; the caller's random state is left
            as it was. With a list of budgets each budget starts from ``seed``. None (default):
            the global generators are used (and advanced), as by any torch code.

    Returns:
        A :class:`RobustnessReport` (a :class:`RobustnessCurve` for a list of budgets);
        ``print(report)`` gives a short table.

    Raises:
        TypeError, ValueError: bad arguments, naming them (``images``, ``labels``, ``attacks``,
            ...), or a model output that is not finite ``(B, K)`` logits.

    Example:
        >>> import torch
        >>> from torchattacks_deform import evaluate_robustness
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
        >>> images, labels = torch.rand(8, 1, 8, 8), torch.randint(0, 4, (8,))
        >>> report = evaluate_robustness(model, images, labels, eps=0.5, attacks="fast")
        >>> print(report)
        Flow robustness: 8 examples, Linf eps = 0.5 px, attacks run independently
          clean           ...%
          FlowPGD-CE      ...% (... s)
          FlowPGD-margin  ...% (... s)
          StAdv           ...% (... s)
          FlowES          ...% (... s)
          worst case      ...%
          per class, clean -> worst case %: 0: ... -> ...
        >>> report.worst_case_accuracy <= min(report.robust_accuracy.values()) <= report.clean_accuracy
        True
        >>> report.adversarial("worst").shape  # the first successful attack's image per example
        torch.Size([8, 1, 8, 8])
        >>> again = evaluate_robustness(model, images, labels, eps=0.5, attacks="fast", seed=1)
        >>> again.seed, again.robust_accuracy == evaluate_robustness(
        ...     model, images, labels, eps=0.5, attacks="fast", seed=1).robust_accuracy
        (1, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_number(seed, "seed", integer=True, minimum=0, allow_none=True)
    if seed is not None and seed >= 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64) (torch's seed range), got {seed}")
    if isinstance(eps, (list, tuple)):
        budgets = _budget_list(eps)
        if not isinstance(attacks, str):
            raise ValueError(f"attacks: with a list of budgets, expected 'standard', 'fast' or 'apgd' (built at each "
                             f"budget; an attack instance has one budget), got {type(attacks).__name__}")
        if isinstance(images, collections.abc.Iterator):
            raise TypeError(f"images: with a list of budgets the data is read once per budget, expected a "
                            f"tensor, an array or a DataLoader, got a one-shot iterator "
                            f"({type(images).__name__})")
        return RobustnessCurve([
            evaluate_robustness(model, images, labels, eps=e, norm=norm, attacks=attacks, cascade=cascade,
                                batch_size=batch_size, device=device, return_flows=return_flows,
                                progress=progress, seed=seed)
            for e in budgets])
    eps = float(check_budget(eps, "eps"))
    check_choice(norm, "norm", NORMS)
    check_bool(cascade, "cascade")
    check_number(batch_size, "batch_size", integer=True, minimum=1)
    check_bool(return_flows, "return_flows")
    if progress is not None:
        check_bool(progress, "progress")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    names, members = _build(model, attacks, eps, norm, cascade)
    data, n_batches = batches(images, labels, batch_size)
    suite = None
    if cascade:
        suite = FlowAutoAttack(model, eps=eps, norm=norm, version="custom", attacks=members,
                               padding_mode=members[0].padding_mode)
        suite.names = names
    acc = _Accumulator(names, return_flows)
    # each module's own mode comes back (a frozen batch norm stays frozen); so does the RNG state
    with preserve_modes(model), _seeded(seed, device):
        model.eval()
        with _progress_bar(n_batches, len(names), progress, eps) as bar:
            for x, y in data:
                x, y = x.to(device), y.to(device)
                if suite is not None:
                    acc.add_cascade(suite, x, y)
                    bar.update(len(names))
                else:
                    acc.add_independent(model, names, members, x, y, bar)
                bar.set_postfix_str(f"worst-case robust {100 * acc.running_robust():.1f}% of {acc.seen()}")
    report = acc.report(eps, norm, cascade, seed)
    logger.info("evaluate_robustness: %d examples, %s eps %g px: clean %.2f%%, worst case %.2f%%", report.n,
                report.norm, report.eps, 100 * report.clean_accuracy, 100 * report.worst_case_accuracy)
    logger.debug("evaluate_robustness: %s", report.to_dict())
    return report


def _progress_bar(n_batches: Optional[int], n_attacks: int, progress: Optional[bool], eps: float) -> Any:
    """A tqdm bar over (batch, attack) pairs: shown on a terminal (``progress=None``), always, or never."""
    from tqdm.auto import tqdm

    return tqdm(total=None if n_batches is None else n_batches * n_attacks, desc=f"evaluate_robustness {eps:g} px",
                unit="attack x batch", disable=None if progress is None else not progress, leave=False)


class _Accumulator:
    """Per-batch results of :func:`evaluate_robustness`, concatenated into the report."""

    def __init__(self, names: list[str], keep_flows: bool) -> None:
        self.names, self.keep_flows = names, keep_flows
        self.clean: list[Tensor] = []
        self.success: dict[str, list[Tensor]] = {n: [] for n in names}
        self.flows: list[Tensor] = []
        self.time_s = dict.fromkeys(names, 0.0)
        self.queries: dict[str, int] = {}  # flow attacks only (counted by FlowAttack.query_count)
        self.attacked = dict.fromkeys(names, 0)
        self.shape: Optional[tuple[int, ...]] = None
        self.labels: list[Tensor] = []
        self.images: list[Tensor] = []  # with keep_flows: what the adversarial images are recomputed from
        self.attack_flows: dict[str, list[Tensor]] = {}  # per flow attack (independent runs)
        self.pixel_adv: dict[str, list[Tensor]] = {}  # per pixel-space attack (independent runs)
        self.padding_modes: dict[str, str] = {}

    def _check_shape(self, x: Tensor) -> None:
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images: expected every batch of shape (*, {', '.join(map(str, self.shape))}) like "
                             f"the first, got {tuple(x.shape)}")

    def seen(self) -> int:
        """Examples accumulated so far."""
        return sum(int(c.numel()) for c in self.clean)

    def running_robust(self) -> float:
        """Worst-case robust accuracy of the examples accumulated so far (0 before any)."""
        if not self.clean:
            return 0.0
        fooled = torch.zeros(self.seen(), dtype=torch.bool)
        for name in self.names:
            if self.success[name]:
                fooled |= torch.cat(self.success[name])
        return float((torch.cat(self.clean) & ~fooled).float().mean())

    def add_independent(self, model: nn.Module, names: list[str], members: list[Any], x: Tensor,
                        y: Tensor, bar: Any = None) -> None:
        self._check_shape(x)
        check_model_dtype(model, x)
        logits = _logits(model, x)
        check_labels(y, x.shape[0], num_classes=int(logits.shape[1]))
        correct = logits.argmax(dim=1) == y
        idx = correct.nonzero().squeeze(1)
        worst = x.new_zeros(x.shape[0], 2, *x.shape[2:])
        has_flow = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for name, atk in zip(names, members):
            if bar is not None:
                bar.set_postfix_str(f"{name} on {int(idx.numel())} examples")
            success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            if idx.numel():
                start = time.perf_counter()
                if isinstance(atk, FlowAttack):
                    queries = atk.query_count
                    flow = atk.get_flow(x[idx], y[idx]).to(x.dtype)
                    adv = atk.apply_flow(x[idx], flow)
                    self.queries[name] = self.queries.get(name, 0) + atk.query_count - queries
                else:  # a pixel-space torchattacks attack: images only, no flow
                    adv = atk(x[idx], y[idx])
                fooled = _logits(model, adv).argmax(dim=1) != y[idx]
                success[idx] = fooled
                if isinstance(atk, FlowAttack):
                    first = fooled & ~has_flow[idx]
                    worst[idx[first]] = flow[first]
                    has_flow[idx[first]] = True
                self.time_s[name] += time.perf_counter() - start
                self.attacked[name] += int(idx.numel())
                if self.keep_flows:
                    self._keep_attack(name, atk, x, idx, flow if isinstance(atk, FlowAttack) else adv)
            elif self.keep_flows:
                self._keep_attack(name, atk, x, idx, None)
            self.success[name].append(success.cpu())
            if bar is not None:
                bar.update(1)
        self.clean.append(correct.cpu())
        self.labels.append(y.cpu())
        if self.keep_flows:
            self.flows.append(worst.cpu())
            self.images.append(x.cpu())

    def _keep_attack(self, name: str, atk: Any, x: Tensor, idx: Tensor, found: Optional[Tensor]) -> None:
        """Keep one batch of an attack's flows (flow attacks) or images (pixel-space attacks)."""
        if isinstance(atk, FlowAttack):
            self.padding_modes[name] = atk.padding_mode
            full = x.new_zeros(x.shape[0], 2, *x.shape[2:])
            target = self.attack_flows.setdefault(name, [])
        else:
            full = x.detach().clone()
            target = self.pixel_adv.setdefault(name, [])
        if found is not None:
            full[idx] = found.detach().to(full.dtype)
        target.append(full.cpu())

    def add_cascade(self, suite: FlowAutoAttack, x: Tensor, y: Tensor) -> None:
        self._check_shape(x)
        flow = suite.get_flow(x, y)
        if suite.last_success is None or suite.last_clean_correct is None:  # pragma: no cover - set by get_flow
            raise RuntimeError("FlowAutoAttack.get_flow did not record its results")
        for i, (name, entry) in enumerate(zip(self.names, suite.last_report)):
            self.success[name].append((suite.last_success == i).cpu())
            self.time_s[name] += float(entry["time_s"])
            self.queries[name] = self.queries.get(name, 0) + int(entry["queries"])
            self.attacked[name] += int(entry["attacked"])
        self.clean.append(suite.last_clean_correct.cpu())
        self.labels.append(y.cpu())
        if self.keep_flows:
            self.flows.append(flow.cpu())
            self.images.append(x.cpu())
            self.padding_modes.update(dict.fromkeys(self.names, suite.padding_mode))

    def report(self, eps: float, norm: str, cascade: bool, seed: Optional[int] = None) -> RobustnessReport:
        if not self.clean:
            raise ValueError("images: expected at least one example, got an empty DataLoader or iterable")
        clean = torch.cat(self.clean)
        n = int(clean.numel())
        success = {k: torch.cat(v) for k, v in self.success.items()}
        robust_acc: dict[str, float] = {}
        fooled_so_far = torch.zeros(n, dtype=torch.bool)
        for name in self.names:
            fooled_so_far = fooled_so_far | success[name]
            still = clean & ~(fooled_so_far if cascade else success[name])
            robust_acc[name] = float(still.float().mean())
        robust = clean & ~fooled_so_far
        queries = {k: (q / self.attacked[k] if self.attacked[k] else 0.0) for k, q in self.queries.items()}
        return RobustnessReport(
            n=n, clean_accuracy=float(clean.float().mean()), robust_accuracy=robust_acc,
            worst_case_accuracy=float(robust.float().mean()), clean_correct=clean, success=success,
            robust=robust, flows=torch.cat(self.flows) if self.keep_flows else None, time_s=dict(self.time_s),
            queries=queries, eps=eps, norm=norm, cascade=cascade, attacked=dict(self.attacked),
            labels=torch.cat(self.labels), seed=seed,
            images=torch.cat(self.images) if self.keep_flows else None,
            attack_flows={k: torch.cat(v) for k, v in self.attack_flows.items()},
            pixel_adversarials={k: torch.cat(v) for k, v in self.pixel_adv.items()},
            padding_modes=dict(self.padding_modes),
        )
