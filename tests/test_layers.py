"""The package layers import one way: torchattacks_deform <- fgr_defense <- deform_robust <- eval <- benchmarks.

Walks every ``import`` of the five packages (top level and inside functions) with :mod:`ast`:
no import runs up a layer, no two modules import each other (directly or through others), no
installed module is over 400 lines, and an import inside a function says why it is there (it
keeps ``--help`` or ``import`` torch-free, or it avoids a cost only some callers pay).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("torchattacks_deform", "fgr_defense", "deform_robust", "eval", "benchmarks")
INSTALLED = ("torchattacks_deform", "fgr_defense", "deform_robust")
MAX_LINES = 400


def module_imports() -> dict[str, set[str]]:
    """``{module: modules of the five packages it imports}`` (relative imports resolved)."""
    graph: dict[str, set[str]] = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            if is_init:
                parts = parts[:-1]
            name = ".".join(parts)
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = parts if is_init else parts[:-1]
                        base = base[: len(base) - (node.level - 1)]
                        mod = ".".join(base + ([node.module] if node.module else []))
                    else:
                        mod = node.module or ""
                    targets.add(mod)
                    targets.update(f"{mod}.{alias.name}" for alias in node.names)
            graph[name] = {t for t in targets if t.split(".")[0] in LAYERS}
    # a package's __init__ only re-exports its modules: edges to and from it are not module cycles
    modules = {m for m in graph if (ROOT / Path(*m.split("."))).with_suffix(".py").is_file()}
    return {m: {t for t in ts if t in modules and t != m} for m, ts in graph.items() if m in modules}


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = sorted((m, t) for m, ts in module_imports().items() for t in ts
                    if rank[t.split(".")[0]] > rank[m.split(".")[0]])
    assert upward == [], upward


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or through others."""
    seen, stack = set(), [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def test_no_import_cycle() -> None:
    graph = module_imports()
    reach = {m: reachable(graph, m) for m in graph}
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in reach[a] if b != a and a in reach[b]})
    assert cycles == [], cycles


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert "a" in reachable(graph, "c") and "c" in reachable(graph, "a") and "d" not in reachable(graph, "a")


def test_no_installed_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for pkg in INSTALLED for p in (ROOT / pkg).rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def local_imports_without_reason(path: Path) -> list[int]:
    """Lines of imports inside functions with no comment on the line, or on the line above their block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    first = node.lineno - 1
                    while first > 0 and (lines[first - 1].strip().startswith(("import ", "from "))
                                         or not lines[first - 1].strip()):
                        first -= 1  # a block of imports (blank lines between groups) shares one comment
                    window = lines[max(first - 1, 0): node.end_lineno or node.lineno]
                    if not any("#" in line for line in window):
                        found.append(node.lineno)
    return sorted(set(found))


def test_function_local_imports_say_why() -> None:
    """An ``import`` inside a function says why it is not at the top (torch-free ``--help``, an optional package)."""
    silent = [f"{p.relative_to(ROOT)}:{n}" for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))
              for n in local_imports_without_reason(p)]
    assert silent == [], f"{len(silent)} function-local imports without a reason: {silent}"


def test_the_local_import_check_can_fail(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def f():\n    import json\n\n\ndef g():\n    import os  # optional\n")
    assert local_imports_without_reason(path) == [2]
