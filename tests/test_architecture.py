"""The package's shape, checked from its source: layers, cycles, error classes, function size, formatting."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import modalkit
from modalkit.exceptions import ModalkitError

PACKAGE = Path(modalkit.__file__).parent
MAX_FUNCTION_LINES = 60
# Third-party packages the engines (modalkit.runtime) must not reach, however indirectly: the web edge's.
WEB_ONLY = ("fastapi", "starlette", "prometheus_client", "uvicorn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "templates" not in p.parts}
EVERY_FILE = sorted(PACKAGE.rglob("*.py"))  # the templates too: they are the package's text


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import of a module, at any depth (a lazy import is a dependency too), except under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            yield from _import_nodes(ast.Module(body=node.orelse, type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(modalkit modules, top-level third-party packages) that module `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own: set[str] = set()
    other: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
        for target in targets:
            if target.split(".")[0] == "modalkit":
                while target not in MODULES:
                    target = target.rpartition(".")[0]
                own.update(_imported_with(target, name))
            else:
                other.add(target.split(".")[0])
    return own, other


def _imported_with(target: str, importer: str) -> set[str]:
    """`target` and the packages above it that importing it runs, except those the importer is inside of
    (already being imported) and the top-level package."""
    found = {target} if target != importer else set()
    parent = target.rpartition(".")[0]
    while parent and parent not in ("modalkit", importer) and not importer.startswith(parent + "."):
        found.add(parent)
        parent = parent.rpartition(".")[0]
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in GRAPH[node][0]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_import_cycle_between_the_package_modules() -> None:
    # The package's own __init__ re-exports the public API, so everything reaches it; it is left out as a target.
    cycles = {
        " -> ".join(c) for name in MODULES if name != "modalkit" and (c := _cycle_from(name)) and "modalkit" not in c
    }
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def reachable(start: str) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for target in GRAPH[todo.pop()][0]:
            if target not in found and target != "modalkit":
                found.add(target)
                todo.append(target)
    return found


@pytest.mark.parametrize("engine", sorted(n for n in MODULES if n.startswith("modalkit.runtime")))
def test_the_runtime_never_reaches_the_web_layer(engine: str) -> None:
    bad = {f"{m} imports {pkg}" for m in reachable(engine) for pkg in GRAPH[m][1] if pkg in WEB_ONLY}
    assert not bad, f"{engine} reaches: " + "; ".join(sorted(bad))


def test_the_formatter_is_never_told_to_skip() -> None:
    markers = ("fmt: " + "skip", "fmt: " + "off")  # spelled apart, so this file does not match itself
    lines = [(p, i, line) for p in EVERY_FILE for i, line in enumerate(p.read_text().splitlines(), 1)]
    skipped = [f"{p}:{i}" for p, i, line in lines if any(marker in line for marker in markers)]
    assert not skipped, skipped


def test_every_exception_class_is_a_modalkit_error() -> None:
    strays = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and not issubclass(cls, ModalkitError):
                strays.append(f"{name}.{cls.__qualname__}")
    assert not strays, strays


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                size = (node.end_lineno or node.lineno) - start + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, long
