"""Configuration: the `modalkit.yaml` schema and its translation to Modal arguments."""

from modalkit.config.schema import (
    AppSettings,
    BatchConfig,
    BuildConfig,
    DeploymentConfig,
    ModelSettings,
    QueueConfig,
)
from modalkit.config.settings import ModalConfig, ModalkitSettings

__all__ = [
    "AppSettings",
    "BatchConfig",
    "BuildConfig",
    "DeploymentConfig",
    "ModalConfig",
    "ModalkitSettings",
    "ModelSettings",
    "QueueConfig",
]
