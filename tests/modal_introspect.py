"""Reading what a locally built (never deployed) Modal object will ask Modal for.

`Function.info()` covers resources, batching, concurrency, volumes and secrets; what it lacks before
deploy (autoscaler settings, image steps) is read from the loader closures the SDK itself will run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modal._utils.async_utils import synchronizer

IMAGE_BUILDER_VERSION = "2025.06"


def _cells(loader: Any) -> dict[str, Any]:
    return {n: c.cell_contents for n, c in zip(loader.__code__.co_freevars, loader.__closure__ or (), strict=True)}


def raw(obj: Any) -> Any:
    return synchronizer._translate_in(obj)


def definition(function: Any) -> dict[str, Any]:
    """The arguments `Function._from_local` captured for the FunctionCreate request."""
    return _cells(raw(function)._load)


def autoscaler(function: Any) -> Any:
    """min/max/buffer containers and scaledown window (not in `Function.info()` before deploy)."""
    return definition(function)["autoscaler_settings"]


def image_steps(image: Any) -> list[str]:
    """The image as build steps: Dockerfile commands, RUN_FUNCTION name, and ADD_LOCAL remote paths."""
    cells = _cells(raw(image)._load)
    if "mount" in cells:  # a layer of local files added when a container starts
        mount = raw(cells["mount"])
        entries = [str(getattr(e, "remote_path", "")) for e in getattr(mount, "_entries", None) or ()]
        return [*image_steps(cells["base_image"]), *(f"ADD_LOCAL {path}" for path in entries)]
    if "single_layer_image" in cells:  # from_registry / from_dockerfile with add_python pick a variant at load
        return image_steps(cells["single_layer_image"])
    if "dockerfile_image" in cells:  # from_dockerfile(add_python=...): Modal reads the Dockerfile at load time
        commands = [line for line in Path(cells["path"]).read_text().splitlines() if line.strip()]
        return [*commands, f"ADD_PYTHON {cells['add_python']}"]
    steps: list[str] = []
    for base in (cells.get("base_images") or {}).values():
        steps += image_steps(base)
    if cells.get("dockerfile_function") is not None:
        commands = cells["dockerfile_function"](IMAGE_BUILDER_VERSION).commands
        steps += [c for c in commands if c != "FROM base"]
    if cells.get("build_function") is not None:
        steps.append(f"RUN_FUNCTION {raw(cells['build_function'])._raw_f.__name__}")
    return steps


def python_sources(image: Any) -> frozenset[str]:
    return frozenset(raw(image)._added_python_source_set)
