"""evaluate_robustness: from a model and labelled images to robust accuracies under flow attacks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._base import FlowAttack, check_model_dtype
from ._compat import TorchattacksAttack
from ._data import batches
from .autoattack import FlowAutoAttack, _member_names, version_members
from .flow import NORMS
from .modes import preserve_modes
from .validation import check_bool, check_budget, check_choice, check_labels, check_number

__all__ = ["RobustnessReport", "evaluate_robustness"]

logger = logging.getLogger(__name__)

AttacksArg = Union[str, Sequence[FlowAttack], Mapping[str, FlowAttack]]


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

    @property
    def per_attack(self) -> str:
        """What the per-attack numbers mean: ``"independent"`` or ``"cumulative"`` (cascade)."""
        return "cumulative" if self.cascade else "independent"

    def __str__(self) -> str:
        how = ("cascade, per-attack accuracies cumulative" if self.cascade
               else "attacks run independently")
        rows = [("clean", self.clean_accuracy), *self.robust_accuracy.items(), ("worst case", self.worst_case_accuracy)]
        width = max(len(name) for name, _ in rows)
        lines = [f"Flow robustness: {self.n} examples, {self.norm} eps = {self.eps:g} px, {how}"]
        for name, acc in rows:
            extra = f"  ({self.time_s[name]:.1f} s)" if name in self.time_s else ""
            lines.append(f"  {name:<{width}}  {100 * acc:5.1f}%{extra}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as plain Python values (JSON-able; per-example tensors become counts)."""
        return {
            "n": self.n, "eps": self.eps, "norm": self.norm, "cascade": self.cascade,
            "per_attack": self.per_attack, "attacks": list(self.robust_accuracy),
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": dict(self.robust_accuracy),
            "worst_case_accuracy": self.worst_case_accuracy,
            "clean_correct": int(self.clean_correct.sum()), "robust": int(self.robust.sum()),
            "fooled": {k: int(v.sum()) for k, v in self.success.items()},
            "attacked": dict(self.attacked), "time_s": dict(self.time_s), "queries": dict(self.queries),
        }


def _build(model: nn.Module, attacks: Any, eps: float, norm: str, cascade: bool) -> tuple[list[str], list[Any]]:
    """Names and attack objects: FlowAttack instances, and (``cascade=False``) torchattacks' own."""
    if isinstance(attacks, str):
        check_choice(attacks, "attacks", ("standard", "fast"))
        specs = version_members(attacks, eps, norm)
        return [n for n, _, _ in specs], [cls(model, **kwargs) for _, cls, kwargs in specs]
    if isinstance(attacks, Mapping):
        names, members = [str(k) for k in attacks], list(attacks.values())
        where = [f"attacks[{k!r}]" for k in attacks]
    elif isinstance(attacks, (list, tuple)):
        members, names = list(attacks), []
        where = [f"attacks[{i}]" for i in range(len(members))]
    else:
        raise TypeError(f"attacks: expected 'standard', 'fast', a list of FlowAttack instances or a dict "
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


def evaluate_robustness(
    model: nn.Module,
    images: Any,
    labels: Any = None,
    *,
    eps: float = 0.5,
    norm: str = "Linf",
    attacks: AttacksArg = "standard",
    cascade: bool = False,
    batch_size: int = 256,
    device: Union[str, torch.device, None] = None,
    return_flows: bool = True,
    progress: Optional[bool] = None,
) -> RobustnessReport:
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
        eps: budget in pixels, finite and ``>= 0``.
        norm: ``"Linf"`` or ``"L2"`` (the ``"L2"`` versions have no StAdv and FlowES).
        attacks: ``"standard"`` or ``"fast"`` (the members of that
            :class:`~torchattacks_deform.FlowAutoAttack` version, built from ``eps`` and
            ``norm``), a list of :class:`~torchattacks_deform.FlowAttack` instances on
            ``model`` whose budget is ``eps`` in ``norm``, or a dict name -> attack. With
            ``cascade=False`` pixel-space torchattacks
            attacks (``torchattacks.PGD(model, ...)``) count too (no flow, no query count).
        cascade: run the attacks as a cascade (see above).
        batch_size: examples per batch (larger DataLoader batches are split).
        device: where to run; default: the device of the model's parameters, else CPU.
        return_flows: keep the worst-case flows (on CPU) in the report.
        progress: show a tqdm progress bar; None: when there is more than one batch.

    Returns:
        A :class:`RobustnessReport`; ``print(report)`` gives a short table.

    Raises:
        TypeError, ValueError: bad arguments, naming them (``images``, ``labels``, ``attacks``,
            ...), or a model output that is not finite ``(B, K)`` logits.

    Example:
        >>> import torch
        >>> from torchattacks_deform import evaluate_robustness
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
        >>> report = evaluate_robustness(model, images, labels, eps=0.5, attacks="fast")
        >>> print(report)
        Flow robustness: 8 examples, Linf eps = 0.5 px, attacks run independently
          clean           ...%
          FlowPGD-CE      ...% (... s)
          FlowPGD-margin  ...% (... s)
          StAdv           ...% (... s)
          FlowES          ...% (... s)
          worst case      ...%
        >>> report.worst_case_accuracy <= min(report.robust_accuracy.values()) <= report.clean_accuracy
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
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
    with preserve_modes(model):  # each module's own mode comes back (a frozen batch norm stays frozen)
        model.eval()
        show = progress if progress is not None else (n_batches is None or n_batches > 1)
        for x, y in _progress(data, n_batches, show):
            x, y = x.to(device), y.to(device)
            if suite is not None:
                acc.add_cascade(suite, x, y)
            else:
                acc.add_independent(model, names, members, x, y)
    report = acc.report(eps, norm, cascade)
    logger.info("evaluate_robustness: %s", report.to_dict())
    return report


def _progress(data: Iterable[tuple[Tensor, Tensor]], total: Optional[int], show: bool) -> Iterator[tuple[Tensor, Tensor]]:
    if not show:
        yield from data
        return
    from tqdm.auto import tqdm

    with tqdm(data, total=total, desc="evaluate_robustness", unit="batch") as bar:
        yield from bar


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

    def _check_shape(self, x: Tensor) -> None:
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images: expected every batch of shape (*, {', '.join(map(str, self.shape))}) like "
                             f"the first, got {tuple(x.shape)}")

    def add_independent(self, model: nn.Module, names: list[str], members: list[Any], x: Tensor,
                        y: Tensor) -> None:
        self._check_shape(x)
        check_model_dtype(model, x)
        logits = _logits(model, x)
        check_labels(y, x.shape[0], num_classes=int(logits.shape[1]))
        correct = logits.argmax(dim=1) == y
        idx = correct.nonzero().squeeze(1)
        worst = x.new_zeros(x.shape[0], 2, *x.shape[2:])
        has_flow = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for name, atk in zip(names, members):
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
            self.success[name].append(success.cpu())
        self.clean.append(correct.cpu())
        if self.keep_flows:
            self.flows.append(worst.cpu())

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
        if self.keep_flows:
            self.flows.append(flow.cpu())

    def report(self, eps: float, norm: str, cascade: bool) -> RobustnessReport:
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
        )
