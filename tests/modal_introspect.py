"""Reading what a locally built (never deployed) `modal.Function` will ask Modal for."""

from __future__ import annotations

from typing import Any

from modal._utils.async_utils import synchronizer


def autoscaler(function: Any) -> Any:
    """The AutoscalerSettings proto the SDK built from our arguments (min/max/buffer containers,
    scaledown window). `Function.info()` does not carry these before deploy, so read them from
    the loader closure the SDK itself uses to create the function."""
    loader = synchronizer._translate_in(function)._load
    cells = dict(zip(loader.__code__.co_freevars, loader.__closure__, strict=True))
    return cells["autoscaler_settings"].cell_contents
