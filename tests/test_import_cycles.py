"""Static checks on the import graph of flsec's own modules.

Each module under the five packages (``fl_core``, ``secure_agg``, ``defenses``,
``attacks``, ``benchmarks``) is parsed with :mod:`ast`, never imported, so the
checks see every import statement whether or not its branch runs. An edge
``a -> b`` means module ``a`` has an import statement that loads module ``b``:

* ``import pkg.mod`` and ``from pkg.mod import name`` point at ``pkg.mod``;
* ``from pkg import name`` points at ``pkg``, whose namespace the name is read
  from (a name defined or re-exported by ``pkg/__init__.py``, which shadows a
  submodule of the same name), and also at ``pkg.name`` when that is a module.
  So ``from secure_agg import crypto`` inside ``secure_agg`` depends on the
  package's ``__init__``, which imports everything; ``import secure_agg.crypto``
  or ``from secure_agg.crypto import x`` depend on the submodule alone;
* relative imports are resolved against the importing module's package.

Imports inside functions are edges too: a function-level import only postpones
the cycle to the first call, and the layering of DESIGN.md ("Dependencies point
one way") is about what a module needs, not when it loads it. The one exception
is an import under ``if TYPE_CHECKING:``, which never runs. An ``import pkg.mod``
also runs ``pkg/__init__.py``; that implicit edge to the parent package is not
counted, as it is the same for every submodule and would make each package's
``__init__`` (which re-exports its submodules) a cycle with all of them.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fl_core", "secure_agg", "defenses", "attacks", "benchmarks")
#: what each package may import besides itself (DESIGN.md, "Layout": ``fl_core``
#: <- ``secure_agg``, ``defenses``, ``attacks`` <- ``benchmarks``).
ALLOWED = {
    "fl_core": frozenset(),
    "secure_agg": frozenset({"fl_core"}),
    "defenses": frozenset({"fl_core"}),
    "attacks": frozenset({"fl_core"}),
    "benchmarks": frozenset({"fl_core", "secure_agg", "defenses", "attacks"}),
}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the ``else:`` branch does run
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _own(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is one of flsec's modules, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return None


def _targets(node: ast.Import | ast.ImportFrom, module: str, modules: dict[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = _own(alias.name, modules)
            if target is not None:
                yield target
        return
    if node.level:
        is_package = modules[module].name == "__init__.py"
        package = module.split(".")
        package = package[: len(package) - node.level + (1 if is_package else 0)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    package_target = _own(base, modules)
    if package_target is not None:
        yield package_target
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            yield f"{base}.{alias.name}"


def import_graph() -> Graph:
    """The import graph of flsec's own modules (see the module docstring for what is an edge)."""
    modules = _modules()
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_nodes(tree):
            for target in _targets(node, module, modules):
                if target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic (iterative DFS)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def _describe(cycle: list[str], graph: Graph) -> str:
    modules = _modules()
    hops = [f"{a} -> {b} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return "import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(hops)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_graph_sees_the_packages(graph: Graph) -> None:
    # guard the guard: a parser that found no edges would pass every check below
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert "secure_agg.runner" in graph["secure_agg.aggregator"]
    assert "fl_core.aggregation" in graph["secure_agg.aggregator"]


def test_from_package_import_submodule_depends_on_both() -> None:
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py")}
    (node,) = ast.parse("from p import a, name").body
    assert list(_targets(node, "p.b", modules)) == ["p", "p.a"]
    (node,) = ast.parse("from . import a").body
    assert list(_targets(node, "p.b", modules)) == ["p", "p.a"]
    assert list(_targets(node, "p", modules)) == ["p", "p.a"]  # the self-edge is dropped by import_graph
    (node,) = ast.parse("from .a import name").body
    assert list(_targets(node, "p.b", modules)) == ["p.a"]
    (node,) = ast.parse("import p.a.x, numpy").body
    assert list(_targets(node, "p.b", modules)) == ["p.a"]
    (node,) = ast.parse("import p.a as a").body
    assert list(_targets(node, "p.b", modules)) == ["p.a"]


def test_imports_in_functions_count_and_type_checking_ones_do_not() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
        "def f():\n    import c\n"
    )
    assert [ast.unparse(n) for n in _import_nodes(tree)] == ["from typing import TYPE_CHECKING", "import b", "import c"]


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]


def test_no_import_cycles(graph: Graph) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, graph)


@pytest.mark.parametrize("package", PACKAGES)
def test_layering(graph: Graph, package: str) -> None:
    wrong = sorted(
        f"{module} -> {target} (line {line})"
        for module, edges in graph.items()
        if module.split(".")[0] == package
        for target, line in edges.items()
        if target.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}:\n  " + "\n  ".join(wrong)
