"""The package layers import one way: torchattacks_deform <- fgr_defense <- deform_robust <- eval <- benchmarks.

Walks every ``import`` of the five packages (top level and inside functions) with :mod:`ast`.
The one-circle-free part of issue 18 (no import cycle between modules) is not yet met:
``fgr_defense.spec`` and ``fgr_defense.spec_run`` import each other; :data:`KNOWN_CYCLES`
names it so that a new cycle fails here, and the redesign removes the entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("torchattacks_deform", "fgr_defense", "deform_robust", "eval", "benchmarks")
KNOWN_CYCLES = {frozenset({"fgr_defense.spec", "fgr_defense.spec_run"})}


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


def test_no_new_import_cycle() -> None:
    graph = module_imports()
    reach = {m: reachable(graph, m) for m in graph}
    cycles = {frozenset({a, b}) for a in graph for b in reach[a] if b != a and a in reach[b]}
    assert cycles == KNOWN_CYCLES, sorted(sorted(c) for c in cycles ^ KNOWN_CYCLES)  # new ones, or gone ones


def test_the_walk_sees_imports() -> None:
    graph = module_imports()
    assert "torchattacks_deform.flow" in graph["torchattacks_deform.pgd"]
    assert any(t.startswith("torchattacks_deform") for t in graph["fgr_defense.regularizers"])
