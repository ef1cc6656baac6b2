"""What one item's inference produced when it did not produce an output; crosses process and Modal boundaries.

Engines say why an item failed (`Failure.cause`); which HTTP status that is, is decided once, by `STATUS_OF`,
where an answer is written (`http_status`, `failure_body`): the web routes, a job's record, a bulk output line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pydantic_core

from modalkit.exceptions import InferenceError

Cause = Literal["rejected", "error", "cuda", "crash", "timeout", "job_timeout", "load", "unavailable"]

# Why an item failed -> the HTTP status of its answer. "rejected" is the default of user code's InferenceError,
# which may choose its own (Failure.status).
STATUS_OF: dict[Cause, int] = {
    "rejected": 422,  # the input: user code raised InferenceError, or the input no longer validates
    "error": 500,  # user code raised, or its output could not be serialised
    "cuda": 503,  # a CUDA error: the container is recycled
    "crash": 503,  # the container died or broke while running the batch
    "load": 503,  # the model cannot load
    "unavailable": 503,  # no container can take it: shutting down, or Modal refused the call
    "timeout": 504,  # the batch ran past deployment_config.timeout; its container was replaced
    "job_timeout": 504,  # the async job ran past queue_config.job_timeout_seconds
}
_TRANSIENT: frozenset[Cause] = frozenset({"cuda", "crash", "load", "unavailable", "timeout"})


@dataclass(frozen=True, slots=True)
class Failure:
    """One item failed, and why; `status` only when user code chose the HTTP status (`InferenceError`)."""

    cause: Cause
    detail: str
    status: int | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, InferenceError):
            return cls("rejected", exc.detail, exc.status_code)
        return cls("error", f"inference failed: {type(exc).__name__}: {exc}")

    @property
    def transient(self) -> bool:
        """Not the item's fault (its container crashed, hung, broke or was not there): worth trying again."""
        return self.cause in _TRANSIENT

    @property
    def recycles_container(self) -> bool:
        return self.cause == "cuda"


def http_status(failure: Failure) -> int:
    return failure.status or STATUS_OF[failure.cause]


def failure_body(failure: Failure) -> dict[str, Any]:
    """The one shape of a failure in an answer: `{status_code, detail}` (an HTTP error, a batch item, a job)."""
    return {"status_code": http_status(failure), "detail": failure.detail}


class Encoded(bytes):
    """An output a local container already serialised to JSON: the server sends it as it is."""


class Reported(Encoded):
    """An encoded output that reports its own failure (ModalKit's `status` other than "success")."""


def encode(value: Any) -> bytes:
    """The JSON of an output; one a container already encoded goes as it is."""
    return bytes(value) if isinstance(value, Encoded) else pydantic_core.to_json(value)
