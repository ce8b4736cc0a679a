"""The package stays readable: small modules, small classes, no import cycles.

Limits: a module of at most 550 lines; a class of at most 300 lines of code (its docstrings
not counted: they are the reading aid the limit is there to protect).
Imports are read from the source (module level, outside ``if TYPE_CHECKING:``), so a cycle that
only works because of import order fails here before it fails a user.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "signed_bus"
MAX_MODULE_LINES = 550
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> set[str]:
    """The signed_bus modules ``name`` imports when it is imported."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from package import submodule`` names the submodule; any other name comes
                # from the module itself
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)

    visit(tree.body)
    return {module for module in found if module in MODULES and module != name}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_longer_than_the_limit(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines; split it along a seam"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_class_is_longer_than_the_limit(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            size = node.end_lineno - node.lineno + 1 - docstring_lines(node)
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name}: {size} lines of code"


def docstring_lines(node: ast.ClassDef) -> int:
    """Lines taken by the docstrings of a class and of the functions in it."""
    total = 0
    for inner in ast.walk(node):
        if isinstance(inner, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = inner.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                total += first.end_lineno - first.lineno + 1
    return total


def test_there_are_no_import_cycles() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    # Importing a submodule first imports its parent packages.
    for name in MODULES:
        parent = name.rpartition(".")[0]
        while parent and parent != "signed_bus":
            graph[name].discard(parent)  # a package may import its own modules; not a cycle
            parent = parent.rpartition(".")[0]
    done: set[str] = set()
    path: list[str] = []

    def walk(name: str) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            walk(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        if name != "signed_bus":  # the package face imports everything, by design
            walk(name)


def test_the_checker_sees_a_real_edge() -> None:
    # guards the reader above: the verifier does import the decoder
    assert "signed_bus._decode" in imports_of("signed_bus._verifier")
