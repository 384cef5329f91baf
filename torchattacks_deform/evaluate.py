"""evaluate_robustness: from a model and labelled images to robust accuracies under flow attacks."""

from __future__ import annotations

import collections.abc
import logging
from typing import Any, Mapping, Optional, Sequence, Union, overload

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._base import FlowAttack, check_model_dtype
from ._compat import TorchattacksAttack
from ._data import batches
from .autoattack import BUILT_IN, FlowAutoAttack, _member_names, version_members, version_names
from .engine import attack_batch, seeded
from .flow import NORMS
from .modes import preserve_modes
from .report import WORST, RobustnessCurve, RobustnessReport, fraction
from .validation import (
    check_bool,
    check_budget,
    check_choice,
    check_labels,
    check_logits,
    check_number,
)

__all__ = ["WORST", "RobustnessCurve", "RobustnessReport", "evaluate_robustness"]

logger = logging.getLogger(__name__)

AttacksArg = Union[str, Sequence[FlowAttack], Mapping[str, FlowAttack]]

def _build(model: nn.Module, attacks: Any, eps: float, norm: str, cascade: bool,
           seed: Optional[int]) -> tuple[list[str], list[Any]]:
    """Names and attack objects: FlowAttack instances, and (``cascade=False``) torchattacks' own."""
    if isinstance(attacks, str):
        check_choice(attacks, "attacks", BUILT_IN)
        specs = version_members(attacks, eps, norm, 0 if seed is None else seed)  # FlowAPGD's own generator
        return [n for n, _, _ in specs], [cls(model, **kwargs) for _, cls, kwargs in specs]
    if isinstance(attacks, Mapping):
        names, members = [str(k) for k in attacks], list(attacks.values())
        where = [f"attacks[{k!r}]" for k in attacks]
    elif isinstance(attacks, (list, tuple)):
        members, names = list(attacks), []
        where = [f"attacks[{i}]" for i in range(len(members))]
    else:
        raise TypeError(f"attacks: expected {version_names()}, a list of FlowAttack instances or a dict "
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
    check_logits(logits, images.shape[0], finite=True)
    return logits  # type: ignore[no-any-return]


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
        norm: ``"Linf"`` or ``"L2"`` (the ``"L2"`` versions have no StAdv and no gradient-free check).
        attacks: ``"standard"``, ``"fast"`` or ``"legacy"`` (the members of that
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
            the global generators are used (and advanced), as by any torch code. A version
            name's FlowAPGD members and FlowSquare draw from their own generators, seeded with ``seed`` (None: 0).

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
        Flow robustness: 8 examples, Linf eps = 0.5 px, FlowAutoAttack 'fast', attacks run independently
          clean         ...%
          FlowAPGD-CE   ...% (... s)
          FlowAPGD-T    ...% (... s)
          StAdv         ...% (... s)
          FlowSquare    ...% (... s)
          worst case    ...%
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
            raise ValueError(f"attacks: with a list of budgets, expected {version_names()} (built at each "
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
    names, members = _build(model, attacks, eps, norm, cascade, seed)
    data, n_batches = batches(images, labels, batch_size)
    suite = None
    if cascade:
        suite = FlowAutoAttack(model, eps=eps, norm=norm, version="custom", attacks=members,
                               padding_mode=members[0].padding_mode)
        suite.names = names
    acc = _Accumulator(names, return_flows)
    # each module's own mode comes back (a frozen batch norm stays frozen); so does the RNG state
    with preserve_modes(model), seeded(seed, device):
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
    report.suite = attacks if isinstance(attacks, str) else "custom"
    logger.info("evaluate_robustness: %d examples, %s eps %g px: clean %.2f%%, worst case %.2f%%", report.n,
                report.norm, report.eps, 100 * report.clean_accuracy, 100 * report.worst_case_accuracy)
    logger.debug("evaluate_robustness: %s", report.to_dict())
    return report


def _progress_bar(n_batches: Optional[int], n_attacks: int, progress: Optional[bool], eps: float) -> Any:
    """A tqdm bar over (batch, attack) pairs: shown on a terminal (``progress=None``), always, or never."""
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
        return fraction(torch.cat(self.clean) & ~fooled)

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
                out = attack_batch(model, atk, x[idx], y[idx])
                success[idx] = out.fooled
                if out.flow is not None:
                    self.queries[name] = self.queries.get(name, 0) + int(out.queries or 0)
                    first = out.fooled & ~has_flow[idx]
                    worst[idx[first]] = out.flow[first]
                    has_flow[idx[first]] = True
                self.time_s[name] += out.time_s
                self.attacked[name] += int(idx.numel())
                if self.keep_flows:
                    self._keep_attack(name, atk, x, idx, out.flow if out.flow is not None else out.adversarial)
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
            robust_acc[name] = fraction(still)
        robust = clean & ~fooled_so_far
        queries = {k: (q / self.attacked[k] if self.attacked[k] else 0.0) for k, q in self.queries.items()}
        return RobustnessReport(
            n=n, clean_accuracy=fraction(clean), robust_accuracy=robust_acc,
            worst_case_accuracy=fraction(robust), clean_correct=clean, success=success,
            robust=robust, flows=torch.cat(self.flows) if self.keep_flows else None, time_s=dict(self.time_s),
            queries=queries, eps=eps, norm=norm, cascade=cascade, attacked=dict(self.attacked),
            labels=torch.cat(self.labels), seed=seed,
            images=torch.cat(self.images) if self.keep_flows else None,
            attack_flows={k: torch.cat(v) for k, v in self.attack_flows.items()},
            pixel_adversarials={k: torch.cat(v) for k, v in self.pixel_adv.items()},
            padding_modes=dict(self.padding_modes),
        )
