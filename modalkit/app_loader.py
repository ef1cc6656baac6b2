"""Importing a user's `app.py` unchanged, and finding in it what modalkit serves."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from modalkit.exceptions import AppLoadError


@dataclass(frozen=True)
class ServiceRef:
    """Where a service class lives, so a container process can import it again."""

    app_path: str
    attribute: str


def import_app(path: str | Path) -> ModuleType:
    """Import a Python file as a module named after it (as `modal deploy` does), once per process."""
    file = Path(path).resolve()
    if not file.is_file():
        raise AppLoadError(f"{path}: no such file")
    name = file.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(file):
        return loaded
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def user_class(service: Any) -> type:
    """The Python class behind a `modal.Cls` (or the class itself)."""
    get = getattr(service, "_get_user_cls", None)
    return get() if get is not None else service  # type: ignore[no-any-return]


def service_ref(service: Any) -> ServiceRef:
    cls = user_class(service)
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if module is None or path is None or cls.__module__ == "__main__":
        raise AppLoadError(
            f"{cls.__qualname__} must live in an importable file for local containers; "
            "serve it with `modalkit serve app.py`"
        )
    for attribute, value in vars(module).items():
        if value is service:
            return ServiceRef(str(path), attribute)
    raise AppLoadError(f"{cls.__qualname__} is not a top-level name of {path}")


def load_service(ref: ServiceRef) -> Any:
    module = import_app(ref.app_path)
    try:
        return getattr(module, ref.attribute)
    except AttributeError:
        raise AppLoadError(f"{ref.app_path} has no attribute {ref.attribute!r}") from None
