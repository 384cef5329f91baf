"""Results of a harness run: the worst case over the suite, ``results.json`` and the CSV files.

Robust accuracy (RobustBench convention):
    Over all ``n`` examples; an example counts as robust when it is classified correctly
    clean *and* after the attack. Only clean-correct examples are attacked.

Worst case over the suite (AutoAttack style, the headline number):
    For every budget that the flow attacks of a config use, an example is robust at that
    budget only if it is classified correctly clean and after *every* flow attack evaluated
    at that budget; the worst-case accuracy is the fraction of such examples, so it is at most
    the robust accuracy of each of those attacks. The attacks counted at each budget are
    listed with it. Pixel-space baselines (``torchattacks.*``) measure another threat model
    and are not part of the worst case.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fgr_defense.files import atomic_write_text

from .cells import SUITE_VERSION

if TYPE_CHECKING:  # annotations only: this module stays torch-free (the reports read results)
    from .config import EvalConfig

__all__ = [
    "CSV_FIELDS",
    "RESULTS_FORMAT",
    "WORST_CASE_RULE",
    "WORST_FIELDS",
    "assemble",
    "mask",
    "mask_str",
    "read_results",
    "summary_table",
    "worst_case",
    "write_csv",
    "write_results",
]

RESULTS_FORMAT = "deform-robust-results/2"

WORST_CASE_RULE = (
    "at each budget, an example is robust only if it is classified correctly clean and after every "
    "flow attack evaluated at that budget (pixel-space baselines are not counted)"
)

CSV_FIELDS = [
    "model", "defense", "group", "attack", "family", "attack_kind", "space", "budget_index", "budget",
    "budget_unit", "budget_norm", "n", "clean_count", "clean_acc", "n_attacked", "robust_count", "robust_acc",
    "linf_mean", "l2_mean", "linf_max", "l2_max", "queries_per_sample", "queries_reported", "time_s", "seed",
]
WORST_FIELDS = ["model", "defense", "group", "budget", "attacks", "n", "robust_count", "robust_acc"]


def mask_str(values: Any) -> str:
    """A boolean mask as a string of 0/1 (compact in JSON).

    Example:
        >>> mask_str([True, False, True])
        '101'
    """
    return "".join("1" if v else "0" for v in (values.tolist() if hasattr(values, "tolist") else values))


def mask(text: str) -> list[bool]:
    """The inverse of :func:`mask_str`.

    Example:
        >>> mask("101")
        [True, False, True]
    """
    return [c == "1" for c in text]


def worst_case(model: str, clean: dict[str, Any], cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst case over the flow attacks of ``model`` per budget (see the module docstring).

    Example:
        >>> clean = {"correct": "1110", "n": 4}
        >>> cells = [{"model": "m", "attack": "A", "space": "flow", "budget": 1.0, "robust": "1100"},
        ...          {"model": "m", "attack": "A", "space": "flow", "budget": 2.0, "robust": "1000"},
        ...          {"model": "m", "attack": "B", "space": "flow", "budget": 1.0, "robust": "0110"},
        ...          {"model": "m", "attack": "P", "space": "pixel", "budget": 1.0, "robust": "0000"}]
        >>> [(w["budget"], w["robust_count"], w["attacks"]) for w in worst_case("m", clean, cells)]
        [(1.0, 1, ['A', 'B']), (2.0, 1, ['A'])]
    """
    own = [c for c in cells if c["model"] == model and c.get("space", "flow") == "flow" and c["budget"] > 0]
    out = []
    for budget in sorted({c["budget"] for c in own}):
        robust = mask(clean["correct"])
        attacks = []
        for c in own:
            if c["budget"] == budget:
                robust = [a and b for a, b in zip(robust, mask(c["robust"]))]
                attacks.append(c["attack"])
        count = sum(robust)
        n = int(clean["n"])
        out.append({"model": model, "budget": budget, "attacks": attacks, "robust_count": count, "n": n,
                    "robust_acc": count / n if n else 0.0, "robust": mask_str(robust)})
    return out


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` as CSV with ``fields`` (lists and dicts JSON-encoded), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                         for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def write_results(results: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json``, ``results.csv`` (every attack cell) and ``worst_case.csv``."""
    out = Path(out)
    by_model = {m["name"]: m for m in results["models"]}

    def tag(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "defense": by_model[r["model"]]["defense"], "group": by_model[r["model"]]["group"]}

    write_csv(out / "results.csv", [tag(c) for c in results["cells"]], CSV_FIELDS)
    write_csv(out / "worst_case.csv", [tag(w) for w in results["worst_case"]], WORST_FIELDS)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")


_KEYS = ("format", "config", "models", "cells", "worst_case", "checks")


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` written by :func:`write_results`, with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not readable JSON, or not a results object of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: no file at {str(path)!r}; run the evaluation first")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"results: {str(path)!r} is not a readable JSON file (truncated?): {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"results: {str(path)!r} holds a JSON {type(obj).__name__}, not a results object")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise ValueError(f"results: {str(path)!r} lacks {missing}; it was not written by this harness "
                         f"(expected format {RESULTS_FORMAT!r})")
    if obj["format"] != RESULTS_FORMAT:
        raise ValueError(f"results: {str(path)!r} has format {obj['format']!r}, expected {RESULTS_FORMAT!r}; "
                         "re-run the evaluation to update it")
    return obj


def summary_table(results: dict[str, Any]) -> str:
    """Plain-text summary: per model, clean accuracy and the worst case over the suite per budget.

    Example:
        >>> res = {"models": [{"name": "m", "clean_acc": 0.9}],
        ...        "worst_case": [{"model": "m", "budget": 0.5, "robust_acc": 0.25}]}
        >>> print(summary_table(res))
        model  clean %  worst 0.5 %
            m    90.00        25.00
    """
    budgets = sorted({w["budget"] for w in results["worst_case"]})
    worst = {(w["model"], w["budget"]): w["robust_acc"] for w in results["worst_case"]}
    header = ["model", "clean %", *[f"worst {b:g} %" for b in budgets]]
    rows = [[m["name"], f"{100 * m['clean_acc']:.2f}",
             *[f"{100 * worst[(m['name'], b)]:.2f}" if (m["name"], b) in worst else "-" for b in budgets]]
            for m in results["models"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def assemble(cfg: EvalConfig, records: Sequence[dict[str, Any]], data: dict[str, Any], device: str,
             findings: list[dict[str, Any]], versions: dict[str, str]) -> dict[str, Any]:
    """The results dict of a config's cell records: models, cells, the per-example worst case, the checks.

    ``data`` is the test data's ``source``, ``n``, ``num_classes`` and ``shape``; ``findings``
    the masking checks' (:mod:`deform_robust.checks`); ``versions`` the software's.
    """
    clean = {r["model"]: r for r in records if r["kind"] == "clean"}
    cells = [r for r in records if r["kind"] == "attack"]
    models = [{**m.to_dict(), "clean_acc": clean[m.name]["clean_acc"], "clean_count": clean[m.name]["clean_count"],
               "n": clean[m.name]["n"], "architecture": clean[m.name].get("architecture"),
               "fingerprint": clean[m.name]["components"]["model"], "correct": clean[m.name]["correct"]}
              for m in cfg.models]
    worst = [w for m in cfg.models for w in worst_case(m.name, clean[m.name], cells)]
    return {
        "format": RESULTS_FORMAT, "suite_version": SUITE_VERSION, "versions": versions, "name": cfg.name,
        "device": device, "config": cfg.to_dict(),
        "data": {**data, "sha256": records[0]["components"]["data"]["sha256"] if records else None},
        "models": models, "cells": cells, "worst_case": worst, "worst_case_rule": WORST_CASE_RULE,
        "checks": findings,
    }
