"""robustbench 1.1.1's ``import autoattack``, served by the ``pyautoattack`` fork it installs: the one place.

robustbench imports ``autoattack`` and ``autoattack.state`` (``robustbench/eval.py``, run by
``import robustbench`` and ``import robustbench.utils``), but its PyPI dependency installs that
code as ``pyautoattack``, a fork with another signature: ``AutoAttack(model, *, attacks=...)``
without ``log_path``, ``verbose`` or ``attacks_to_run``, and
``run_standard_evaluation(x, y, *, batch_size=...)`` (where robustbench passes ``bs=``) returning
``(x_adv, y_adv)`` (where robustbench expects ``x_adv``).

:func:`install` (run when :mod:`deform_robust.robustbench` is imported, so before any robustbench
import of this package) appends an import hook to ``sys.meta_path`` that answers
``import autoattack`` / ``import autoattack.state`` when, and only when, nothing earlier on the
path provides them (a real ``autoattack`` install wins) and ``pyautoattack`` is installed. It
imports nothing until robustbench asks. ``autoattack`` is then a small module: ``AutoAttack`` is
pyautoattack's, taking the original keywords too (:class:`_CompatAutoAttack`);
``autoattack.state`` is ``pyautoattack.state``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any, Optional, Sequence

__all__ = ["install"]

_NAMES = ("autoattack", "autoattack.state")


def _compat_class(base: type) -> type:
    """pyautoattack's ``AutoAttack`` that also takes the keywords of the original autoattack (robustbench's)."""

    class AutoAttack(base):  # type: ignore[valid-type,misc]
        """``AutoAttack`` of pyautoattack with the original's signature: ``attacks_to_run=`` is its ``attacks=``,
        ``log_path``/``verbose`` are accepted and ignored (pyautoattack logs to the ``auto-attack`` logger),
        ``bs=`` is ``batch_size=``, and ``run_standard_evaluation`` returns the adversarial images (with
        ``return_labels=True`` also the labels), as robustbench expects."""

        def __init__(self, model: Any, norm: str = "Linf", eps: float = 0.3, seed: Optional[int] = None,
                     verbose: bool = True, attacks_to_run: Optional[Sequence[str]] = None,
                     version: str = "standard", is_tf_model: bool = False, device: Any = "cpu",
                     log_path: Optional[str] = None, *, attacks: Optional[Sequence[str]] = None) -> None:
            if is_tf_model:
                raise ValueError("is_tf_model: pyautoattack (robustbench's autoattack) supports PyTorch models only")
            chosen = attacks if attacks is not None else (list(attacks_to_run) if attacks_to_run else None)
            super().__init__(model, attacks=chosen, device=device, eps=eps, norm=norm, seed=seed, version=version)

        def run_standard_evaluation(self, x_orig: Any, y_orig: Any, bs: Optional[int] = None,
                                    return_labels: bool = False, state_path: Any = None, *,
                                    batch_size: Optional[int] = None) -> Any:
            if bs is not None and batch_size is not None and bs != batch_size:
                raise TypeError(f"bs, batch_size: the same setting given twice with different values ({bs}, "
                                f"{batch_size})")
            size = batch_size if batch_size is not None else bs if bs is not None else 250
            x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=size, state_path=state_path)
            return (x_adv, y_adv) if return_labels else x_adv

    AutoAttack.__module__ = "autoattack"
    AutoAttack.__qualname__ = "AutoAttack"
    return AutoAttack


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``autoattack`` and ``autoattack.state`` (last on ``sys.meta_path``) and builds them from pyautoattack."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _NAMES or importlib.util.find_spec("pyautoattack") is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "autoattack")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a plain new module, filled in by exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "autoattack":
            base = importlib.import_module("pyautoattack")
            module.__dict__.update({"__version__": getattr(base, "__version__", "?"),
                                    "AutoAttack": _compat_class(base.AutoAttack), "__path__": []})
        else:
            module.__dict__.update({k: v for k, v in vars(importlib.import_module("pyautoattack.state")).items()
                                    if not k.startswith("__")})


def install() -> None:
    """Put the ``autoattack`` alias on ``sys.meta_path`` (once; last, so a real ``autoattack`` wins)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
