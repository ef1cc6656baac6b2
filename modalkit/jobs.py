"""Async jobs: the request envelope that travels with a job, and what its status looks like."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed"]
PENDING_STATES = ("queued", "running")


def new_job_id() -> str:
    """128 random bits: a job id cannot be guessed."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class AsyncRequest:
    """One async input and where its result goes; passed whole to a Modal container by `spawn`."""

    message: Any
    success_queue: str | None = None
    failure_queue: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class JobView:
    job_id: str
    status: JobState
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"job_id": self.job_id, "status": self.status, "attempts": self.attempts}
        if self.status == "succeeded":
            body["result"] = self.result
        if self.status == "failed":
            body["error"] = self.error
        return body


def sink_message(
    job_id: str | None, request: AsyncRequest, status: JobState, outcome: Any, message: Any
) -> dict[str, Any]:
    """What a success or failure queue receives: the result, or the error with the original message."""
    body: dict[str, Any] = {"job_id": job_id, "status": status, "meta": request.meta or {}}
    if status == "succeeded":
        body["result"] = outcome
    else:
        body["error"] = outcome
        body["message"] = message
    return body


def jsonable(value: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    from modalkit.outcome import Encoded

    return json.loads(value) if isinstance(value, Encoded) else jsonable_encoder(value)
