"""The import graph of swiftinfer_core and deployments, read with ``ast`` (module-level
and function-local imports alike): no cycle between modules, and the core never
imports the serving layer (deployments, ray.serve). A cycle hides which room
depends on which, and a function-local import only defers it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("swiftinfer_core", "deployments")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` (module ``name``) imports, anywhere in it.
    ``from a.b import c`` counts as a.b.c when that is a module, else as a.b."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a.b.c where only a.b is ours: the module a.b
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(path, name, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_of(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    found = [c for c in cycles(import_graph()) if any(_package_of(m) == package for m in c)]
    assert not found, "import cycles (each a set of modules that import each other):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_core_never_imports_the_serving_layer():
    bad = []
    for name, path in modules().items():
        if _package_of(name) != "swiftinfer_core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:  # from ray import serve: ray.serve
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            bad += [f"{name}: {n}" for n in names if n.split(".")[0] == "deployments" or n == "ray.serve" or n.startswith("ray.serve.")]
    assert not bad, bad


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "swiftinfer_core.parallel.driver" in graph["swiftinfer_core.engine.engine_model"]  # imported inside _start_tp
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
