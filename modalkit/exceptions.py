"""The modalkit error hierarchy: every error modalkit raises on purpose is a `ModalkitError`.

ModalkitError
├── ConfigError
├── AppLoadError
├── ServiceUnavailable
├── QueueFull
├── JobExpired
├── NotSupported          (the service does not answer this way: a streaming one on /predict)
├── InferenceError
├── BackendError          (also ValueError; ModalKit's name)
├── DependencyError       (also ImportError; ModalKit's name)
├── TypeValidationError   (also TypeError; ModalKit's name)
├── AuthConfigError       (also ValueError; ModalKit's name)
├── StoreFull
├── DeliveryRefused
│   └── WebhookNotAllowed (also ValueError: a webhook URL outside webhook_config's rules)
├── WebhookFailed         (a webhook receiver did not answer 2xx; retried)
├── ContainerLoadFailed   (local runtime: a container could not start or load)
├── ContainerDied         (local runtime: a container ended while running a batch)
├── ClientError           (the client: an HTTP error answer)
├── DeadlineExceeded      (the client: no result in time)
├── JobFailed             (the client: an async job failed)
├── BulkStopped           (bulk runs: the run cannot go on)
├── ConfigDeprecationWarning  (also a FutureWarning)
└── ConfigWarning             (also a UserWarning)

The two warnings are ModalkitErrors too, so that under `-W error` they are caught like any other modalkit error.
"""

from __future__ import annotations

from typing import Any


class ModalkitError(Exception):
    """Base class of modalkit's own errors."""


class ConfigError(ModalkitError):
    """The configuration is invalid; each problem names its YAML path and the file it came from."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid modalkit configuration:\n  " + "\n  ".join(problems))


class ConfigDeprecationWarning(ModalkitError, FutureWarning):
    """An old config key was used; shown by default (unlike DeprecationWarning) so users see the new name."""

    def __init__(self, old: str, new: str, where: str = "modalkit config") -> None:
        self.old, self.new, self.where = old, new, where
        self.key = old
        super().__init__(f"{where}: {old} is deprecated, use {new}")

    def at(self, where: str) -> ConfigDeprecationWarning:
        return ConfigDeprecationWarning(self.old, self.new, where)


class ConfigWarning(ModalkitError, UserWarning):
    """A config value is accepted but not used as written (the message says what happens instead)."""

    def __init__(self, key: str, message: str, where: str = "modalkit config") -> None:
        self.key, self.message, self.where = key, message, where
        super().__init__(f"{where}: {key}: {message}")

    def at(self, where: str) -> ConfigWarning:
        return ConfigWarning(self.key, self.message, where)


class AppLoadError(ModalkitError):
    """The user's app file could not be imported or holds nothing modalkit can serve."""


class ServiceUnavailable(ModalkitError):
    """No room or no container for the request now; it may be retried after `retry_after` seconds (HTTP 503)."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(detail)


class QueueFull(ModalkitError):
    """More async jobs are pending than `queue_config.max_pending` allows (HTTP 429, retry after a second)."""

    retry_after = 1.0


class JobExpired(ModalkitError):
    """The job's result is gone: past its time to live (HTTP 410). `owner` is the fingerprint of the key that made
    the job, when known: anyone else is answered 404, as for an unknown job."""

    def __init__(self, message: str, owner: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner


class NotSupported(ModalkitError):
    """The service cannot answer this way: a `StreamingService` has no batched method, so it answers on
    `/predict_stream` only, and a batched `ModalService` has no stream; the message names the route to use."""


class InferenceError(ModalkitError):
    """Raised by user code to fail one item with a chosen HTTP status (default 422: bad input)."""

    def __init__(self, detail: str, status_code: int = 422) -> None:
        self.detail = detail
        self.status_code = status_code
        super().__init__(detail)


class BackendError(ModalkitError, ValueError):
    """A queue backend is unknown, or refused a message (its `send_message` returned False)."""


class DependencyError(ModalkitError, ImportError):
    """An optional package that a feature needs is not installed."""


class TypeValidationError(ModalkitError, TypeError):
    """A value has the wrong type, e.g. a queue message that is not a str."""


class AuthConfigError(ModalkitError, ValueError):
    """The auth configuration is invalid (ModalKit's name; modalkit reports these as `ConfigError`)."""


class StoreFull(ModalkitError):
    """The local job store is at `queue_config.max_store_rows` or `max_store_bytes` (HTTP 507 with Retry-After).

    `retry_after`: seconds until the next stored result expires and its room is swept.
    """

    def __init__(self, detail: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(detail)


class DeliveryRefused(ModalkitError):
    """A result queue refused a message for good (a Redis key of another type, a message too large, not JSON):
    the delivery is marked failed rather than retried. A queue backend may raise it too."""


class WebhookNotAllowed(DeliveryRefused, ValueError):
    """A webhook URL that `webhook_config` does not allow: not http(s), a host not in `allowed_hosts`, or one that
    resolves to a loopback, private or reserved address without `allow_private` (HTTP 422 when a job names it)."""


class WebhookFailed(ModalkitError):
    """One webhook POST failed (an answer other than 2xx, a timeout, a refused connection); it is retried."""


class ContainerLoadFailed(ModalkitError):
    """The process could not be started, `load_artefacts` raised, or the process died while loading."""


class ContainerDied(ModalkitError):
    """The process ended while a batch was in flight (crash, OOM kill, SIGKILL), or its pipes failed."""


class ClientError(ModalkitError):
    """The server answered with an error that retrying did not (or could not) fix; `request_id` is the answer's
    `x-request-id`, which finds the request in the server's logs."""

    def __init__(self, status_code: int, detail: Any, request_id: str | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id
        said = f" (request id {request_id})" if request_id else ""
        super().__init__(f"HTTP {status_code}: {detail}{said}")


class DeadlineExceeded(ModalkitError):
    """The call's total deadline passed before an answer came."""


class JobFailed(ModalkitError):
    """An async job ended as failed; `job` is its status body, whose `error` is `{status_code, detail}`."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(f"job {job.get('job_id')} failed: {job.get('error')}")


class BulkStopped(ModalkitError):
    """The runtime kept failing (not the items): the output holds every line answered before this."""
