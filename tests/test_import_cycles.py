"""No import cycle among zplug's modules.

The graph is built from the source with ``ast``: an edge ``a -> b`` for every import of ``b`` that
runs when ``a`` is imported (module level, class bodies, ``if``/``try``/``with`` blocks), but not for
imports inside functions or under ``if TYPE_CHECKING:``. ``from zplug.x import y`` is an edge to
``zplug.x.y`` when ``y`` is a submodule, else to ``zplug.x`` (whose ``__init__`` defines ``y``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zplug

ROOT = Path(zplug.__file__).parent


def module_files(root: Path = ROOT, package: str = "zplug") -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(body: list[ast.stmt], in_functions: bool):
    """The import statements that run when the module is imported (and, if asked, those in functions)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if in_functions:  # otherwise: they run when the function is called
                yield from _import_statements(node.body, in_functions)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_statements(node.body, in_functions)
            yield from _import_statements(node.orelse, in_functions)
        else:  # class bodies; for, while, with, try, match: their blocks run too
            for field in ("body", "orelse", "finalbody"):
                yield from _import_statements(getattr(node, field, []), in_functions)
            for block in (*getattr(node, "handlers", ()), *getattr(node, "cases", ())):
                yield from _import_statements(block.body, in_functions)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(modules: dict[str, Path], in_functions: bool = False) -> dict[str, set[str]]:
    """``{module: modules of ``modules`` it imports at import time}`` (or at any time, with ``in_functions``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _import_statements(tree.body, in_functions):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            else:
                source = _absolute(name, path.name == "__init__.py", node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        # Importing ``a.b.c`` first runs the packages ``a`` and ``a.b`` (except those the importer lives in).
        own = _ancestors(name)
        targets |= {ancestor for target in targets for ancestor in _ancestors(target) if ancestor not in own}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_zplug_has_no_import_cycle():
    graph = import_graph(module_files())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_engine_knows_no_rule_canonizer_or_observer():
    """The engine is the bottom layer: rules, canonizers and the ledger use its contracts, never the reverse."""
    graph = import_graph(module_files(), in_functions=True)
    allowed = {"zplug", "zplug.errors", "zplug.layers"}
    outside = {
        (name, target)
        for name, targets in graph.items()
        if name == "zplug.engine" or name.startswith("zplug.engine.")
        for target in targets
        if target not in allowed and not target.startswith("zplug.engine")
    }
    assert outside == set()


# -- the checker itself ------------------------------------------------------------------------------
def _write(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path / "pkg", "pkg")


def test_checker_sees_submodule_imports_and_skips_function_and_type_checking_imports(tmp_path):
    modules = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                "def f():\n    from pkg import a\n",
        "sub/__init__.py": "from pkg.sub.c import x\n",
        "sub/c.py": "class K:\n    from pkg.a import y\nx = 1\n",
    })  # fmt: skip
    graph = import_graph(modules)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": set(), "pkg.sub": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) is None
    assert import_graph(modules, in_functions=True)["pkg.b"] == {"pkg.a"}  # the function's, not TYPE_CHECKING's


def test_checker_counts_the_packages_an_import_runs(tmp_path):
    modules = _write(tmp_path, {
        "__init__.py": "", "x/__init__.py": "from pkg.x import m\n", "x/m.py": "import pkg.y.n\n",
        "y/__init__.py": "from pkg.y import n\n", "y/n.py": "",
    })  # fmt: skip
    graph = import_graph(modules)
    assert graph["pkg.x"] == {"pkg.x.m"} and graph["pkg.x.m"] == {"pkg.y", "pkg.y.n"}
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "from pkg.a import f\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
        (  # through a package's __init__: importing pkg.q.r runs pkg/q/__init__.py, which imports pkg.a
            {"__init__.py": "", "a.py": "from pkg.q.r import f\n", "q/__init__.py": "from pkg.a import g\n",
             "q/r.py": ""},
            ["pkg.a", "pkg.q", "pkg.a"],
        ),
        (
            {"__init__.py": "", "a.py": "try:\n    from . import b\nexcept ImportError:\n    pass\n",
             "b.py": "from .c import g\n", "c.py": "if True:\n    from pkg import a\n"},
            ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ),
    ],
)  # fmt: skip
def test_checker_reports_the_cycle(tmp_path, files, expected):
    assert find_cycle(import_graph(_write(tmp_path, files))) == expected
