"""ModalKit's import path for the settings: `Settings` and its sections, the same classes as `modalkit.config`.

from modalkit.settings import Settings
Settings.model_config["yaml_file"] = "modalkit.yaml"   # the file ModalConfig() then reads
"""

from modalkit.config.schema import (
    AppSettings,
    AuthConfig,
    BatchConfig,
    BuildConfig,
    CloudBucketMount,
    DeploymentConfig,
    ModelSettings,
    QueueConfig,
)
from modalkit.config.schema import LocalPath as Mount
from modalkit.config.settings import Settings

__all__ = [
    "AppSettings",
    "AuthConfig",
    "BatchConfig",
    "BuildConfig",
    "CloudBucketMount",
    "DeploymentConfig",
    "ModelSettings",
    "Mount",
    "QueueConfig",
    "Settings",
]
