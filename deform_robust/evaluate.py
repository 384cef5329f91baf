"""``deform-robust evaluate``: one model given on the command line, one set of test images.

:func:`deform_robust.models.load_model_source` turns the model source into a module (the
harness's one loader); :func:`run_model_source` runs
:func:`torchattacks_deform.evaluate_robustness` at each budget (a :class:`ModelEvaluation`:
the text table, the JSON record with its provenance, CSV rows and the adversarial images);
:func:`evaluate_model_source` returns the table and the record.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from fgr_defense.checkpoint import atomic_save
from fgr_defense.device import resolve_device
from torchattacks_deform import RobustnessReport, evaluate_robustness
from torchattacks_deform.autoattack import BUILT_IN, version_names

from .data import load_test_data
from .models import load_entry, source_config, weight_files
from .provenance import provenance
from .registry import resolve_attack
from .results import write_csv

__all__ = ["ADVERSARIAL_FORMAT", "CSV_COLUMNS", "ModelEvaluation", "evaluate_model_source",
           "run_model_source", "write_output"]

#: Format name of the ``adversarial_eps<eps>.pt`` files of ``evaluate --save-adv``.
ADVERSARIAL_FORMAT = "deform-robust-adversarial/1"
#: Columns of the ``evaluate --csv`` file: one row per budget and attack, plus clean and worst case.
CSV_COLUMNS = ["model", "data", "budget", "norm", "attack", "accuracy", "correct", "n", "attacked", "fooled",
               "time_s", "queries_per_example", "per_attack", "seed"]


def write_output(path: str | Path, flag: str, write: Callable[[], object]) -> None:
    """Call ``write()``; an ``OSError`` (read-only, full disk, ...) becomes one line naming ``flag``.

    Raises:
        RuntimeError: ``"<flag>: could not write '<path>' (<reason>)"``.

    Example:
        >>> def full() -> None:
        ...     raise OSError(28, "No space left on device")
        >>> write_output("out/robustness.json", "--out", full)
        Traceback (most recent call last):
        ...
        RuntimeError: --out: could not write 'out/robustness.json' (No space left on device)
    """
    try:
        write()
    except OSError as err:
        raise RuntimeError(f"{flag}: could not write {str(path)!r} ({err.strerror or err})") from None


def _attacks(name: str, model: nn.Module, eps: float) -> Any:
    if name in BUILT_IN:
        return name
    attacks = {}
    for family in (s.strip() for s in name.split(",") if s.strip()):
        try:
            attacks[family] = resolve_attack(family).build(model, eps, {})
        except ValueError as err:
            raise ValueError(f"--attacks: {err}") from None
    if not attacks:
        raise ValueError(f"--attacks: expected {version_names()} or attack names, got {name!r}")
    return attacks


@dataclasses.dataclass
class ModelEvaluation:
    """What :func:`run_model_source` found: one report per budget, and what to write from them.

    Attributes:
        model, source, attacks, cascade, seed: the settings (``source``: the data's name).
        reports: one :class:`~torchattacks_deform.RobustnessReport` per budget, in order.
        weights: the weights or checkpoint file(s) the model was loaded from.
    """

    model: str
    source: str
    attacks: str
    cascade: bool
    seed: int
    reports: list[RobustnessReport]
    weights: list[Path] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """The text table: one row per budget (clean, each attack, worst case, in %)."""
        reports = self.reports
        names = list(reports[0].robust_accuracy)
        header = ["budget (px)", "clean %", *[f"{a} %" for a in names], "worst case %"]
        rows = [[f"{r.eps:g}", f"{100 * r.clean_accuracy:.2f}",
                 *[f"{100 * r.robust_accuracy[a]:.2f}" for a in names], f"{100 * r.worst_case_accuracy:.2f}"]
                for r in reports]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines = [f"{self.model} on {self.source}: n = {reports[0].n}, attacks {self.attacks}"
                 + (" (cascade: per-attack numbers are cumulative)" if self.cascade else ""),
                 "  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)

    def record(self, exclude: str | Path | None = None) -> dict[str, Any]:
        """The JSON record (``robustness.json``), with its ``provenance`` (``exclude``: see
        :func:`~deform_robust.provenance.provenance`; ``weights_sha256`` a hex string for one
        weights file, a list for several, None for none)."""
        return {"model": self.model, "data": self.source, "n": self.reports[0].n, "attacks": self.attacks,
                "seed": self.seed, "per_class": self.per_class(),
                "results": [json.loads(json.dumps(r.to_dict(), default=str)) for r in self.reports],
                "provenance": provenance(weights=self.weights[0] if len(self.weights) == 1 else self.weights or None,
                                         exclude=exclude)}

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Per class (index as a string): ``n``, ``clean_accuracy`` and ``worst_case_accuracy`` per budget."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.reports:
            for c, v in r.per_class.items():
                entry = out.setdefault(str(c), {"n": v["n"], "clean_accuracy": v["clean_accuracy"],
                                                "worst_case_accuracy": {}})
                entry["worst_case_accuracy"][f"{r.eps:g}"] = v["worst_case_accuracy"]
        return out

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per budget and attack, plus ``clean`` and ``worst case`` rows (:data:`CSV_COLUMNS`)."""
        rows: list[dict[str, Any]] = []
        for r in self.reports:
            base = {"model": self.model, "data": self.source, "budget": r.eps, "norm": r.norm, "n": r.n,
                    "per_attack": r.per_attack, "seed": self.seed}
            rows.append({**base, "attack": "clean", "accuracy": r.clean_accuracy,
                         "correct": int(r.clean_correct.sum())})
            for name, acc in r.robust_accuracy.items():
                rows.append({**base, "attack": name, "accuracy": acc, "correct": round(acc * r.n),
                             "attacked": r.attacked.get(name), "fooled": int(r.success[name].sum()),
                             "time_s": r.time_s.get(name), "queries_per_example": r.queries.get(name)})
            rows.append({**base, "attack": "worst case", "accuracy": r.worst_case_accuracy,
                         "correct": int(r.robust.sum())})
        return rows

    def adversarial_files(self, folder: str | Path) -> list[tuple[Path, dict[str, Any]]]:
        """Per budget, ``(folder / "adversarial_eps<eps>.pt", contents)``: tensors, names and numbers only
        (``torch.load(path, weights_only=True)`` reads it back).

        Contents: ``format``, ``model``, ``data``, ``eps``, ``norm``, ``attacks`` (names, in
        order), ``labels`` ``(N,)``, ``clean_correct`` ``(N,)`` bool, ``adversarial`` (name ->
        ``(N, C, H, W)`` images, see :meth:`RobustnessReport.adversarial`), ``fooled`` (name
        -> ``(N,)`` bool), ``worst_case`` ``(N, C, H, W)`` (per example the first successful
        attack's image, else the clean image) and ``robust`` ``(N,)`` bool.
        """
        out = []
        for r in self.reports:
            contents = {"format": ADVERSARIAL_FORMAT, "model": self.model, "data": self.source, "eps": r.eps,
                        "norm": r.norm, "attacks": list(r.robust_accuracy), "labels": r.labels,
                        "clean_correct": r.clean_correct, "adversarial": r.adv_images,
                        "fooled": dict(r.success), "worst_case": r.adversarial("worst"), "robust": r.robust}
            out.append((Path(folder) / f"adversarial_eps{r.eps:g}.pt", contents))
        return out

    def write_adversarial(self, folder: str | Path, flag: str = "--save-adv") -> list[Path]:
        """Write :meth:`adversarial_files` (one budget in memory at a time); returns the paths.

        Raises:
            RuntimeError: a file could not be written (one line naming ``flag``).
        """
        paths = []
        for r in self.reports:
            one = dataclasses.replace(self, reports=[r])
            ((path, contents),) = one.adversarial_files(folder)
            write_output(path, flag, lambda: atomic_save(contents, path))  # noqa: B023 - called at once
            paths.append(path)
        return paths

    def write_csv(self, path: str | Path, flag: str = "--csv") -> None:
        """Write :meth:`csv_rows` to ``path`` (atomically).

        Raises:
            RuntimeError: the file could not be written (one line naming ``flag``).
        """
        write_output(path, flag, lambda: write_csv(Path(path), self.csv_rows(), CSV_COLUMNS))


def run_model_source(*, model: str, data: str, budgets: Sequence[float], weights: str | None = None,
                   kwargs: dict[str, Any] | None = None, model_dir: str = "models", threat_model: str = "Linf",
                   data_root: str | None = None, n: int | None = None, attacks: str = "standard",
                   cascade: bool = False, batch_size: int = 256, device: str = "auto", seed: int = 0,
                   progress: bool | None = None) -> ModelEvaluation:
    """Evaluate a model source on test data at each budget, each from ``seed`` (the caller's RNG is untouched).

    Example:
        >>> ev = run_model_source(model="fgr_defense.models:SmallCNN", kwargs={"width": 4}, data="mnist5k", n=4,
        ...                     budgets=[0.5], attacks="FlowFGSM", progress=False, device="cpu")
        >>> [row["attack"] for row in ev.csv_rows()], ev.record()["provenance"]["package"]
        (['clean', 'FlowFGSM', 'worst case'], 'deform-robust')
    """
    test = load_test_data(data, data_root, n)
    source = source_config(model, weights, kwargs, model_dir, threat_model, dataset=data)
    net = load_entry(source)[0]
    dev = resolve_device(device)
    net = net.to(dev)
    reports = [evaluate_robustness(net, test.images, test.labels, eps=eps, attacks=_attacks(attacks, net, eps),
                                   cascade=cascade, batch_size=batch_size, device=dev, progress=progress, seed=seed)
               for eps in budgets]
    return ModelEvaluation(model=model, source=test.source, attacks=attacks, cascade=cascade, seed=seed,
                          reports=reports, weights=weight_files(source))


def evaluate_model_source(**kwargs: Any) -> tuple[str, dict[str, Any]]:
    """:func:`run_model_source` (same keyword arguments); returns ``(text table, JSON record)``."""
    ev = run_model_source(**kwargs)
    return ev.table(), ev.record()
