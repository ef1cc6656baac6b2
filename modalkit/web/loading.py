"""Finding the web app in a user's app file, as `modalkit serve` and `modalkit run` do."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from fastapi import FastAPI

from modalkit.exceptions import AppLoadError


def find_web_app(module: ModuleType) -> Any:
    """The ASGI app of the module's `@modal.asgi_app()` function (or a FastAPI app at top level)."""
    import modal

    for value in vars(module).values():
        if isinstance(value, modal.Function) and value._is_web_endpoint():
            return value.local()
    for value in vars(module).values():
        if isinstance(value, FastAPI):
            return value
    raise AppLoadError(f"{module.__file__} defines no @modal.asgi_app() function and no FastAPI app")
