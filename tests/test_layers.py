"""The architecture's layering (contracts in .importlinter) and the absence of import cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from .conftest import ROOT


def _lint_imports() -> str:
    """import-linter's command from this interpreter's environment (the test extra), not from PATH."""
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.exists(), f"import-linter is part of the test extra (pip install -e '.[test]'): no {exe}"
    return str(exe)


def test_import_contracts_hold() -> None:
    r = subprocess.run([_lint_imports(), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 kept, 0 broken" in r.stdout


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    """Function-level imports count too: a cycle hidden inside a function is still a cycle."""
    g = grimp.build_graph("router")
    modules = {m for m in g.modules if m.startswith("router.") and m != "router"}
    graph = {m: {d for d in g.find_modules_directly_imported_by(m) if d in modules} for m in modules}
    assert cycles(graph) == []
