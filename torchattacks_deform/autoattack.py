r"""FlowAutoAttack: an AutoAttack-style cascade of flow attacks (torchattacks' MultiAttack idiom)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ._base import AttackInfo, FlowAttack
from .apgd import FlowAPGD
from .apgdt import FlowAPGDT
from .engine import attack_batch
from .es import FlowES
from .flow import NORMS
from .pgd import FlowPGD
from .square import FlowSquare
from .stadv import StAdv
from .validation import check_budget, check_choice, check_number

__all__ = ["APGD_CE_RUNS", "APGD_T_RUNS", "BUILT_IN", "SQUARE_QUERIES", "VERSIONS", "FlowAutoAttack", "version_members",
           "version_names"]

logger = logging.getLogger(__name__)

#: The built-in versions of :class:`FlowAutoAttack` (members chosen by :func:`version_members`).
BUILT_IN = ("standard", "fast", "legacy")
#: The versions of :class:`FlowAutoAttack`.
VERSIONS = (*BUILT_IN, "custom")


def version_names() -> str:
    """The built-in versions as an error message lists them.

    Example:
        >>> version_names()
        "'standard', 'fast' or 'legacy'"
    """
    names = [repr(v) for v in BUILT_IN]
    return f"{', '.join(names[:-1])} or {names[-1]}"


#: ``(steps, restarts)`` of the standard version's FlowAPGD-CE: 100 steps per example as 10
#: runs of 10 (chosen on held-out images: ``results/attacks/restarts.md``).
APGD_CE_RUNS = (10, 10)
#: ``(target classes, runs per target, steps per run)`` of the standard version's FlowAPGD-T
#: (chosen on held-out images: ``results/attacks/restarts.md``).
APGD_T_RUNS = (3, 3, 11)
#: Model queries per example of the standard version's FlowSquare, the gradient-free check (on
#: gradient-masked copies of the models, held-out images, it fooled more at 1,000 queries than
#: FlowES at 2,000: ``results/attacks/masking.md``).
SQUARE_QUERIES = 1000


def version_members(version: str, eps: float, norm: str = "Linf",
                    seed: Optional[int] = 0) -> list[tuple[str, Any, dict[str, Any]]]:
    """The members ``(name, class, constructor kwargs)`` of a :class:`FlowAutoAttack` version.

    ``seed`` seeds the random starts of the FlowAPGD members and FlowSquare's search (their own
    generators, as AutoAttack seeds APGD and Square; None: the global RNG). The legacy members
    draw from the global RNG.

    ``"standard"`` (AutoAttack's recipe on flows: no step size to tune):

    1. ``FlowAPGD-CE``: :class:`~torchattacks_deform.FlowAPGD`, cross-entropy, 100 steps per
       example as 10 runs of 10 from random starts (:data:`APGD_CE_RUNS`; each run keeps APGD's
       step-size rule). On flows one long run depends much on its random start: at equal
       queries, more shorter runs left less robust accuracy on held-out images, 10 x 10 the
       least of 1, 2, 4, 5 and 10 runs (``results/attacks/restarts.md``).
    2. ``FlowAPGD-T``: :class:`~torchattacks_deform.FlowAPGDT`, the targeted DLR loss toward
       the 3 most likely wrong classes, 33 steps each as 3 runs of 11 (:data:`APGD_T_RUNS`;
       measured inside the suite on held-out images against 3 x 33 and 9 targets x 11: all
       three within 8 examples of 3,600 there, ``results/attacks/restarts.md``).
    3. ``StAdv``: 100 Adam steps (``lr = eps / 5``) on the margin plus smoothness, bounded by
       the Linf ``eps`` (a different optimizer and objective; Linf only).
    4. ``FlowSquare``: the Square Attack's random search on flows (AutoAttack's gradient-free
       member), 1,000 queries (:data:`SQUARE_QUERIES`; catches gradient masking; Linf only).
       On gradient-masked copies of the models it fooled more at 1,000 queries than FlowES at
       2,000 (``results/attacks/masking.md``).

    ``"fast"``: the same four, shrunk for smoke runs on CPU: FlowAPGD-CE 2 runs of 10 steps,
    FlowAPGD-T 1 target class x 10 steps, StAdv 20 steps, FlowSquare 100 queries.

    ``"legacy"``: the members used before FlowAPGD (``FlowPGD-CE``: 50 steps of ``eps / 8``;
    ``FlowPGD-margin``: the unclamped Carlini-Wagner margin, 50 steps of ``eps / 8``, 3
    restarts), then StAdv as in ``"standard"`` and ``FlowES`` (gradient-free NES, population
    20, 100 steps: 2,001 queries).

    Example:
        >>> [name for name, _, _ in version_members("standard", 0.5)]
        ['FlowAPGD-CE', 'FlowAPGD-T', 'StAdv', 'FlowSquare']
        >>> [name for name, _, _ in version_members("fast", 2.0, "L2")]
        ['FlowAPGD-CE', 'FlowAPGD-T']
        >>> [name for name, _, _ in version_members("legacy", 0.5)]
        ['FlowPGD-CE', 'FlowPGD-margin', 'StAdv', 'FlowES']
    """
    check_choice(version, "version", BUILT_IN)
    eps = float(check_budget(eps, "eps"))
    check_choice(norm, "norm", NORMS)
    check_number(seed, "seed", integer=True, minimum=0, allow_none=True)
    fast = version == "fast"
    members: list[tuple[str, Any, dict[str, Any]]]  # (name, FlowAttack subclass, kwargs)
    if version == "legacy":
        members = [
            ("FlowPGD-CE", FlowPGD, dict(eps=eps, alpha=eps / 8, steps=50, norm=norm)),
            ("FlowPGD-margin", FlowPGD, dict(eps=eps, alpha=eps / 8, steps=50, norm=norm, loss="margin",
                                             restarts=3)),
        ]
    else:
        steps, restarts = (10, 2) if fast else APGD_CE_RUNS
        members = [
            ("FlowAPGD-CE", FlowAPGD, dict(eps=eps, norm=norm, steps=steps, restarts=restarts, loss="ce", seed=seed)),
            ("FlowAPGD-T", FlowAPGDT, dict(eps=eps, norm=norm, n_target_classes=1 if fast else APGD_T_RUNS[0],
                                           restarts=1 if fast else APGD_T_RUNS[1],
                                           steps=10 if fast else APGD_T_RUNS[2], seed=seed)),
        ]
    if norm == "Linf":
        members.append(("StAdv", StAdv, dict(bound=eps, steps=20 if fast else 100, lr=max(eps / 5, 1e-3))))
        if version == "legacy":
            members.append(("FlowES", FlowES, dict(eps=eps, population=20, steps=100)))
        else:
            members.append(("FlowSquare", FlowSquare, dict(eps=eps, queries=100 if fast else SQUARE_QUERIES, seed=seed)))
    return members


def _member_names(attacks: Sequence[FlowAttack]) -> list[str]:
    names: list[str] = []
    for atk in attacks:
        base, k = str(atk.attack), 2
        name = base
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


class FlowAutoAttack(FlowAttack):
    r"""A cascade of flow attacks, as AutoAttack (Croce & Hein, 2020) on pixels.

    Only the examples the model classifies correctly are attacked, and each member attack
    only the examples still classified correctly after the previous members. An example's
    flow is the first successful member's flow (the worst case); examples never fooled, and
    the clean-misclassified ones, come back unchanged (zero flow), as in torchattacks'
    ``MultiAttack``. The cascade therefore never costs more than running the members
    separately on the same examples (plus one forward for the clean check and one per member
    to verify the adversarial images). Untargeted only.

    Members inherit the suite's ``set_normalization_used`` (the suite hands them ``[0, 1]``
    images and every model call normalizes exactly once), ``set_precision``,
    ``set_model_training_mode`` and device during a call; custom members get their own
    settings back afterwards.

    Convention:
        ``eps`` is in **pixels**, in ``norm``; StAdv's Linf ``bound`` and the Linf budget of the
        gradient-free check (FlowSquare; legacy: FlowES) equal ``eps`` (only in the ``"Linf"`` versions).

    Args:
        model: classifier returning logits.
        eps: flow budget in pixels, finite and ``>= 0``. Default: 0.5.
        norm: ``"Linf"`` (default) or ``"L2"``.
        version: ``"standard"`` (FlowAPGD-CE, FlowAPGD-T, StAdv, FlowSquare), ``"fast"``,
            ``"legacy"`` (the fixed-step FlowPGD members used before FlowAPGD; see
            :func:`version_members`) or ``"custom"``.
        attacks: with ``version="custom"``, the member attacks: :class:`FlowAttack` instances
            on ``model``, in default (untargeted) mode, run in this order.
        padding_mode: how the built-in members' :func:`~torchattacks_deform.warp` reads
            outside the image.
        seed: seed of the built-in FlowAPGD members' random starts and FlowSquare's search (their
            own generators; None: the global RNG; see :func:`version_members`). Default: 0.

    Attributes:
        attacks: the member attacks, in cascade order; ``names`` their names.
        last_report: per member of the last call: ``name``, ``attacked`` (examples it ran
            on), ``fooled``, ``time_s`` and ``queries`` (images the model classified for it).
        last_success: ``(B,)`` long tensor of the last call: index of the member that fooled
            each example; -1 for examples never fooled **and** for the clean-misclassified
            ones (tell them apart with ``last_clean_correct``, a ``(B,)`` bool tensor).

    Raises:
        ValueError, TypeError: bad numbers or choices, ``attacks`` without ``version="custom"``
            (or missing with it), members that are not flow attacks on ``model``, are targeted,
            use another ``padding_mode`` than the suite, or have another budget than ``eps`` in
            ``norm`` (the suite's results are reported at ``eps``).

    Example:
        >>> import torch
        >>> from torchattacks_deform import FlowAutoAttack, FlowFGSM, FlowPGD
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> images, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
        >>> atk = FlowAutoAttack(model, eps=1.0, version="custom",
        ...                      attacks=[FlowFGSM(model, eps=1.0), FlowPGD(model, eps=1.0, steps=3)])
        >>> atk(images, labels).shape, atk.last_success.shape, atk.names
        (torch.Size([4, 1, 4, 4]), torch.Size([4]), ['FlowFGSM', 'FlowPGD'])
        >>> FlowAutoAttack.cost({"version": "fast"})
        83.33...
    """

    info = AttackInfo("suite", True, "eps")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.5,
        norm: str = "Linf",
        version: str = "standard",
        attacks: Optional[Sequence[FlowAttack]] = None,
        padding_mode: str = "border",
        seed: Optional[int] = 0,
    ) -> None:
        eps = float(check_budget(eps, "eps"))
        check_choice(norm, "norm", NORMS)
        check_choice(version, "version", VERSIONS)
        super().__init__("FlowAutoAttack", model, padding_mode=padding_mode)
        self.supported_mode = ["default"]
        if version == "custom":
            members = self._check_members(attacks, model, padding_mode, eps, norm)
            names = _member_names(members)
        else:
            if attacks is not None:
                raise ValueError(f"attacks: only used with version='custom', got version={version!r}")
            specs = version_members(version, eps, norm, seed)
            members = [cls(model, padding_mode=padding_mode, **kwargs) for _, cls, kwargs in specs]
            names = [name for name, _, _ in specs]
        self.eps, self.norm, self.version, self.seed = eps, norm, version, seed
        self.attacks = members  # torchattacks registers them: its set_* methods reach them too
        self.names = names
        self.last_report: list[dict[str, Any]] = []
        self.last_success: Optional[Tensor] = None
        self.last_clean_correct: Optional[Tensor] = None

    @staticmethod
    def _check_members(attacks: Any, model: Optional[nn.Module], padding_mode: Optional[str],
                       eps: Optional[float] = None, norm: Optional[str] = None) -> list[FlowAttack]:
        if not isinstance(attacks, (list, tuple)) or len(attacks) == 0:
            raise TypeError(f"attacks: expected a non-empty list of FlowAttack instances with "
                            f"version='custom', got {type(attacks).__name__}")
        for i, atk in enumerate(attacks):
            if not isinstance(atk, FlowAttack):
                raise TypeError(f"attacks[{i}]: expected a FlowAttack instance, got {type(atk).__name__}")
            if padding_mode is not None and atk.padding_mode != padding_mode:
                raise ValueError(f"attacks[{i}]: expected padding_mode {padding_mode!r} like the suite (its "
                                 f"flows are applied with it), got {atk.padding_mode!r}")
            if model is not None and atk.model is not model:
                raise ValueError(f"attacks[{i}]: expected an attack on the suite's model, got one on "
                                 f"another model ({type(atk.model).__name__})")
            if atk.targeted:
                raise ValueError(f"attacks[{i}]: expected an attack in default (untargeted) mode, got "
                                 f"mode {atk.attack_mode!r}")
            if eps is not None and norm is not None:
                atk.require_budget(eps, norm, f"attacks[{i}]")
        return list(attacks)

    @classmethod
    def cost(cls, params: Mapping[str, Any]) -> float:
        """Sum of the members' :meth:`~FlowAttack.cost` (each on every example: the worst case)."""
        version = cls._param(params, "version")
        if version == "custom":
            members = cls._check_members(params.get("attacks"), None, None)
            return float(sum(type(a).cost(vars(a)) for a in members))
        specs = version_members(version, cls._param(params, "eps"), cls._param(params, "norm"))
        return float(sum(c.cost(kwargs) for _, c, kwargs in specs))

    def set_precision(self, autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        """As :meth:`FlowAttack.set_precision`, for the suite and every member."""
        super().set_precision(autocast_dtype, channels_last)
        for atk in self.attacks:
            atk.set_precision(autocast_dtype, channels_last)

    @contextlib.contextmanager
    def _members_inherit(self) -> Iterator[None]:
        """Give the members the suite's settings for one call, and their own back afterwards."""
        keys = ("normalization_used", "_normalization_applied", "autocast_dtype", "channels_last", "device",
                "_model_training", "_batchnorm_training", "_dropout_training")
        saved = [{k: getattr(atk, k) for k in keys} for atk in self.attacks]
        # object.__setattr__: torchattacks' __setattr__ would compare the tensors of the
        # normalization dict with ``==`` (ambiguous for several channels); none is an Attack.
        try:
            for atk in self.attacks:
                for k in keys:
                    object.__setattr__(atk, k, getattr(self, k))
                # The suite passes [0, 1] images: members normalize in get_logits, exactly once.
                object.__setattr__(atk, "_normalization_applied", False if self.normalization_used is not None else None)
            yield
        finally:
            for atk, values in zip(self.attacks, saved):
                for k, v in values.items():
                    object.__setattr__(atk, k, v)

    def find_flow(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        flow = images.new_zeros(b, 2, h, w)
        success = torch.full((b,), -1, dtype=torch.long, device=images.device)
        with torch.no_grad():
            correct = self.get_logits(images).argmax(dim=1) == labels
        remaining = correct.nonzero().squeeze(1)
        report: list[dict[str, Any]] = []
        self._check_members(self.attacks, self.model, self.padding_mode, self.eps, self.norm)
        with self._members_inherit():
            for i, (name, atk) in enumerate(zip(self.names, self.attacks)):
                entry: dict[str, Any] = {"name": name, "attacked": int(remaining.numel()), "fooled": 0,
                                         "time_s": 0.0, "queries": 0}
                report.append(entry)
                if remaining.numel() == 0:
                    continue
                out = attack_batch(self.get_logits, atk, images[remaining], labels[remaining])
                fooled = out.fooled
                flow[remaining[fooled]] = out.displacement[fooled]
                success[remaining[fooled]] = i
                remaining = remaining[~fooled]
                entry.update(fooled=int(fooled.sum()), time_s=out.time_s, queries=out.queries)
                logger.info("%s: %s fooled %d of %d examples in %.2f s", self.attack, name, entry["fooled"],
                            entry["attacked"], entry["time_s"])
        self.last_report, self.last_success, self.last_clean_correct = report, success, correct
        return flow
