"""The modalkit error hierarchy: every error modalkit raises on purpose is a `ModalkitError`."""

from __future__ import annotations


class ModalkitError(Exception):
    """Base class of modalkit's own errors."""


class ConfigError(ModalkitError):
    """The configuration is invalid; each problem names its YAML path and the file it came from."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid modalkit configuration:\n  " + "\n  ".join(problems))


class ConfigDeprecationWarning(FutureWarning):
    """An old config key was used; shown by default (unlike DeprecationWarning) so users see the new name."""

    def __init__(self, old: str, new: str, where: str = "modalkit config") -> None:
        self.old, self.new, self.where = old, new, where
        super().__init__(f"{where}: {old} is deprecated, use {new}")


class AppLoadError(ModalkitError):
    """The user's app file could not be imported or holds nothing modalkit can serve."""


class ServiceUnavailable(ModalkitError):
    """A container was recycled or is not ready; the request may be retried (HTTP 503)."""


class QueueFull(ModalkitError):
    """More async jobs are pending than `queue_config.max_pending` allows (HTTP 429)."""


class JobExpired(ModalkitError):
    """The job's result is gone: past its time to live (HTTP 410)."""


class InferenceError(ModalkitError):
    """Raised by user code to fail one item with a chosen HTTP status (default 422: bad input)."""

    def __init__(self, detail: str, status_code: int = 422) -> None:
        self.detail = detail
        self.status_code = status_code
        super().__init__(detail)
