"""ModalKit's import path for `ModalConfig`: the same config, with ModalKit's app-name postfix and helpers."""

from __future__ import annotations

import logging
from typing import Any

from modalkit.config import settings as _settings
from modalkit.config import translate

logger = logging.getLogger("modalkit.config")


class ModalConfig(_settings.ModalConfig):
    """`modalkit.ModalConfig` as ModalKit named it: the Modal app name is `app_prefix` plus
    `$MODALKIT_APP_POSTFIX`, "-dev" when unset, so a migrated app keeps its Modal name and URL."""

    default_app_postfix = "-dev"

    @property
    def region(self) -> str | list[str] | None:
        return self.app_settings.deployment_config.region

    @property
    def volumes(self) -> dict[str, Any]:
        import modal

        named = self.app_settings.deployment_config.volumes
        return {path: modal.Volume.from_name(name) for path, name in named.items()}

    @property
    def cloud_bucket_mounts(self) -> dict[str, Any]:
        deploy = self.app_settings.deployment_config
        mounts = translate.modal_volumes(deploy)
        return {bucket.mount_point: mounts[bucket.mount_point] for bucket in deploy.cloud_bucket_mounts}

    @property
    def all_volumes(self) -> dict[str, Any]:
        return translate.modal_volumes(self.app_settings.deployment_config)

    def get_batched_method_settings(self) -> dict[str, Any]:
        return self.get_batched_settings()

    def reload_volumes(self) -> None:
        """Reload every volume; one that fails is logged and the others are still reloaded."""
        for path, volume in self.volumes.items():
            try:
                volume.reload()
            except Exception:
                logger.exception("reloading the volume at %s failed", path)


__all__ = ["ModalConfig"]
