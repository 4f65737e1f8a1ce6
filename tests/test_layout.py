"""The package's import graph: no cycle at all, and lower layers never import upper ones.

Every import statement counts: top level, under ``if TYPE_CHECKING:``, inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

PACKAGE = "zephyr_edge"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: What each layer may import of ours (besides itself). A layer is the first dotted part
#: after ``zephyr_edge`` (a module of the package root is its own layer), or the first two
#: where the table names them: the configuration loader sits above the backends it selects,
#: while the rest of ``settings`` sits below them.
ALLOWED: Mapping[str, frozenset[str]] = {
    "errors": frozenset(),
    "settings": frozenset({"errors"}),
    "settings.config": frozenset({"errors", "settings", "domain", "plugins"}),
    "domain": frozenset({"errors", "settings"}),
    "plugins": frozenset({"errors", "settings", "kv", "storage"}),
    "kv": frozenset({"errors", "settings"}),
    "storage": frozenset({"errors", "settings"}),
    "catalog": frozenset({"errors", "settings", "domain", "kv"}),
    "http": frozenset({"errors", "settings", "domain", "catalog", "kv", "storage", "plugins", "replication"}),
    "replication": frozenset({"errors", "settings", "domain", "catalog", "kv", "storage", "http"}),
    "cli": frozenset({"errors", "settings", "settings.config", "domain", "catalog", "kv", "storage", "plugins", "http", "replication"}),
    "__main__": frozenset({"cli"}),
}


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(source: str, name: str, modules: set[str], is_package: bool, package: str = PACKAGE) -> set[str]:
    """The modules of ``package`` that ``source`` (module ``name``) imports, anywhere in it."""
    found: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                origin = f"{anchor}.{node.module}" if node.module else anchor
            else:
                origin = node.module or ""
            # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + "."):
                # `import a.b.c` runs a, a.b and a.b.c: the deepest one that is ours counts
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    found.add(target)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in root.rglob("*.py")}
    modules = set(files)
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, modules, path.name == "__init__.py", package)
        for name, path in files.items()
    }


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(_closed_path(graph, component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _closed_path(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A cycle through the smallest member of ``component`` (breadth first back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return paths[v] + [start]
                if w in component and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component always has a cycle")


def layer_of(module: str, package: str = PACKAGE, allowed: Mapping[str, frozenset[str]] = ALLOWED) -> str:
    parts = module[len(package) + 1:].split(".") if module != package else [""]
    two = ".".join(parts[:2])
    return two if two in allowed else parts[0]


def layering_violations(graph: Mapping[str, set[str]], allowed: Mapping[str, frozenset[str]] = ALLOWED) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module, allowed=allowed)
        if layer not in allowed:
            if layer:
                problems.append(f"{module}: layer {layer!r} is not in the layering table")
            continue
        for target in sorted(targets):
            other = layer_of(target, allowed=allowed)
            if other and other != layer and other not in allowed[layer]:
                problems.append(f"{module} imports {target}: {layer} may not import {other}")
    return problems


# --- the package -------------------------------------------------------------------------------


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_upper_ones():
    problems = layering_violations(import_graph())
    assert not problems, "\n".join(problems)


def test_the_graph_sees_every_kind_of_import():
    """Function-level and TYPE_CHECKING imports are edges too (else cycles hide there)."""
    graph = import_graph()
    assert f"{PACKAGE}.cli.main" in graph and graph[f"{PACKAGE}.__main__"] == {f"{PACKAGE}.cli.main"}
    assert f"{PACKAGE}.cli.runner" in graph[f"{PACKAGE}.cli.commands"], "an import inside a function"


# --- the checker itself ------------------------------------------------------------------------


def _package(tmp_path: Path, files: Mapping[str, str]) -> dict[str, set[str]]:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return import_graph(root, "pkg")


@pytest.mark.parametrize("where", [
    "from pkg import b\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n",
    "def f():\n    import pkg.b\n",
    "from . import b\n",
    "from .b import X\n",
])
def test_a_cycle_is_found_wherever_the_import_stands(tmp_path, where):
    graph = _package(tmp_path, {"a.py": where, "b.py": "from pkg.a import Y\n", "c.py": "import pkg.a\n"})
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_longer_cycle_through_subpackages_is_named(tmp_path):
    graph = _package(tmp_path, {
        "x/one.py": "from pkg.y import two\n",
        "y/two.py": "from pkg.z.three import T\n",
        "z/three.py": "def f():\n    from pkg.x import one\n",
    })
    assert find_cycles(graph) == [["pkg.x.one", "pkg.y.two", "pkg.z.three", "pkg.x.one"]]


def test_an_acyclic_graph_passes(tmp_path):
    graph = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "import os\n"})
    assert find_cycles(graph) == [] and graph["pkg.a"] == {"pkg.b"}


def test_an_upward_import_is_reported():
    graph = {
        f"{PACKAGE}.domain.hostnames": {f"{PACKAGE}.http.app", f"{PACKAGE}.errors"},
        f"{PACKAGE}.errors": set(),
        f"{PACKAGE}.http.app": {f"{PACKAGE}.domain.hostnames"},
        f"{PACKAGE}.kv.base": {f"{PACKAGE}.settings.fields", f"{PACKAGE}.settings.config"},
        f"{PACKAGE}.settings.config": {f"{PACKAGE}.plugins", f"{PACKAGE}.settings.fields"},
        f"{PACKAGE}.settings.fields": {f"{PACKAGE}.plugins"},
        f"{PACKAGE}.newlayer.mod": set(),
    }
    assert layering_violations(graph) == [
        f"{PACKAGE}.domain.hostnames imports {PACKAGE}.http.app: domain may not import http",
        f"{PACKAGE}.kv.base imports {PACKAGE}.settings.config: kv may not import settings.config",
        f"{PACKAGE}.newlayer.mod: layer 'newlayer' is not in the layering table",
        f"{PACKAGE}.settings.fields imports {PACKAGE}.plugins: settings may not import plugins",
    ]
