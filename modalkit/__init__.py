"""modalkit: write a model once, serve it on Modal or locally with the same config.

Importing this package is cheap: names load on first use, and nothing reads a file or imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modalkit.config import ModalConfig
    from modalkit.exceptions import ConfigError, InferenceError, ModalkitError
    from modalkit.files import File, Upload
    from modalkit.inference import InferenceBase
    from modalkit.service import ModalService
    from modalkit.streaming import StreamingService
    from modalkit.web import create_web_endpoints

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "modalkit.exceptions",
    "File": "modalkit.files",
    "InferenceBase": "modalkit.inference",
    "InferenceError": "modalkit.exceptions",
    "ModalConfig": "modalkit.config",
    "ModalService": "modalkit.service",
    "ModalkitError": "modalkit.exceptions",
    "StreamingService": "modalkit.streaming",
    "Upload": "modalkit.files",
    "create_web_endpoints": "modalkit.web",
}

__all__ = [
    "ConfigError",
    "File",
    "InferenceBase",
    "InferenceError",
    "ModalConfig",
    "ModalService",
    "ModalkitError",
    "StreamingService",
    "Upload",
    "create_web_endpoints",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modalkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
