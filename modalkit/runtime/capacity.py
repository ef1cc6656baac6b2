"""How much work to keep in flight: one answer for the local runtime's job feeder and for bulk runs."""

from __future__ import annotations

from modalkit.config import ModalConfig


def container_limit(config: ModalConfig) -> int:
    """How many containers of one model entry run at most here: `max_containers`, which is unbounded on Modal,
    defaults to one machine's worth (at least one, at least `min_containers`)."""
    deploy = config.app_settings.deployment_config
    return deploy.max_containers or max(1, deploy.min_containers)


def in_flight_window(config: ModalConfig, model_entries: int = 1) -> int:
    """Items worth having in flight to keep every container busy: two full batches per container."""
    return 2 * config.app_settings.batch_config.max_batch_size * container_limit(config) * model_entries
