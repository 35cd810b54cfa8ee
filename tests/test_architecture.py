"""The layout rules that keep the code easy to see, checked on the source (no imports run).

* no import circle between modules at import time (imports inside functions and under
  ``TYPE_CHECKING`` do not count: they run later or never);
* no function in ``src/`` over 120 lines, and ``run_loop`` (the loop's driver) at most 80;
* only ``interp/hooks.py`` registers forward hooks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "selfimprove"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module, module: str, is_pkg: bool) -> set[str]:
    """Modules imported when ``module`` is imported (module body, not functions)."""
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base if is_pkg else base[:-1]
                    base = base[: len(base) - node.level + 1]
                    name = ".".join([*base, node.module] if node.module else base)
                else:
                    name = node.module or ""
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for name in _top_level_imports(tree, mod, path.name == "__init__.py"):
            # importing a.b.c imports the packages a and a.b first
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                cand = ".".join(parts[:k])
                if cand in files and cand != mod:
                    deps.add(cand)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def _strip_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop each module's edges to its own parent packages: Python runs a package's
    ``__init__`` before any of its submodules, so ``from selfimprove.gate import x`` inside
    ``selfimprove.loop.config`` is no circle through ``selfimprove``. Edges into *other*
    packages stay (importing ``selfimprove.diff.detect`` runs ``selfimprove/diff/__init__``)."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_the_import_graph_has_no_circle():
    graph = _strip_package_edges(_graph())
    assert "selfimprove.loop.config" in graph["selfimprove.config"]
    assert _cycles(graph) == []


def test_the_circle_check_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (n.name, (n.end_lineno or n.lineno) - n.lineno + 1)
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_is_over_120_lines_and_run_loop_is_short():
    long = [
        f"{p.relative_to(SRC)}:{name} ({n} lines)"
        for p in PKG.rglob("*.py")
        for name, n in _functions(p)
        if n > 120
    ]
    assert long == []
    (run_loop,) = [n for name, n in _functions(PKG / "loop" / "run.py") if name == "run_loop"]
    assert run_loop <= 80


def test_only_the_hooks_module_registers_hooks():
    users = sorted(
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "register_forward_hook" in p.read_text(encoding="utf-8")
        or "register_forward_pre_hook" in p.read_text(encoding="utf-8")
    )
    assert users == ["interp/hooks.py"]
