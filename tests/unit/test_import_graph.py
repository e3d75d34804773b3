"""No import cycles in src/agentic_fast: the module-level import graph, built statically (ast).

An edge ``a -> b`` is a module-level ``import b`` / ``from b import x`` in ``a`` (``x`` too
when it is a submodule); ``if TYPE_CHECKING:`` blocks are not run, so they add no edge.
Imports inside functions are lazy: allowed, but listed in :data:`LAZY_IMPORTS` so that a new
one (often a cycle worked around) is a visible decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agentic_fast

ROOT = Path(agentic_fast.__file__).parent
PACKAGE = "agentic_fast"

#: (importing module, imported module) of every import inside a function or method. None of
#: them hides a cycle (the graph stays acyclic with them counted as module-level, checked
#: below); they keep start-up and optional dependencies lazy.
LAZY_IMPORTS: frozenset[tuple[str, str]] = frozenset({
    # the native extension, tried once at import (missing build: the numpy twin)
    ("agentic_fast._audiocore.native", "agentic_fast"),
    ("agentic_fast._audiocore.active", "agentic_fast._audiocore"),
    ("agentic_fast._audiocore.active", "agentic_fast._audiocore.numpy_twin"),
    # the production wiring: only the configured provider, brain and gateway are imported
    ("agentic_fast.call.factory", "agentic_fast.brain"),
    ("agentic_fast.call.factory", "agentic_fast.gateway"),
    ("agentic_fast.call.factory", "agentic_fast.providers.factory"),
    ("agentic_fast.server.runner", "agentic_fast.call.factory"),
    # (the configured provider and carrier modules themselves are imported by name, with
    # importlib, by providers/registry.py and carriers/registry.py: they import the registry
    # to register, so the registry must not import them; no import statement, no edge)
    # the configured store backend only (redis is not needed for the SQLite default)
    ("agentic_fast.store.service", "agentic_fast.store.redis"),
    ("agentic_fast.store.service", "agentic_fast.store.sqlite"),
    # the CLI imports a subcommand's world only when it runs
    ("agentic_fast.cli.commands", "agentic_fast.audio.demo"),
    ("agentic_fast.cli.commands", "agentic_fast.cli.api_client"),
    ("agentic_fast.cli.commands", "agentic_fast.server.runner"),
})


def _module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([PACKAGE, *parts])] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]
             ) -> list[str]:
    """Our modules one import statement names."""
    found: list[str] = []
    if isinstance(node, ast.Import):
        found += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        found.append(target)
        found += [f"{target}.{alias.name}" for alias in node.names]
    return [name for name in found if name in modules]


def _graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lazy: set[tuple[str, str]] = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        stack: list[tuple[ast.AST, bool]] = [(stmt, True) for stmt in tree.body]
        while stack:
            node, top = stack.pop()
            if isinstance(node, ast.If) and top and _is_type_checking(node):
                stack += [(n, top) for n in node.orelse]
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imports(node, name, is_package, modules):
                    if target != name:
                        (graph[name].add(target) if top else lazy.add((name, target)))
                continue
            inner = top and not isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            stack += [(child, inner) for child in ast.iter_child_nodes(node)
                      if isinstance(child, ast.stmt | ast.expr | ast.excepthandler)]
    return graph, lazy


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_lazy_imports_are_listed() -> None:
    _, lazy = _graph()
    assert sorted(lazy) == sorted(LAZY_IMPORTS)


def test_lazy_imports_hide_no_cycle() -> None:
    graph, lazy = _graph()
    for importer, imported in lazy:
        graph[importer].add(imported)
    assert _cycles(graph) == []


def test_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
