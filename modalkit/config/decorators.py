"""Which decorators the user's source puts on the definition being decorated, read from its file.

Modal 1.6 takes concurrency only as `@modal.concurrent`, which the config cannot add to a function
it only hands keyword arguments to; reading the caller's source tells whether the user wrote it.
"""

from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Decorated:
    name: str
    decorators: tuple[str, ...]  # the last attribute or name of each decorator, top to bottom


def decorated_at(filename: str, lineno: int) -> Decorated | None:
    """The class or function whose decorator list spans `filename:lineno`, None if there is none."""
    try:
        tree = _parse_source(filename, os.stat(filename).st_mtime_ns)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                if decorator.lineno <= lineno <= (decorator.end_lineno or decorator.lineno):
                    return Decorated(node.name, tuple(_decorator_name(d) for d in node.decorator_list))
    return None


@functools.lru_cache(maxsize=32)
def _parse_source(filename: str, mtime_ns: int) -> ast.Module:
    with open(filename, encoding="utf-8") as source:
        return ast.parse(source.read(), filename)


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""
