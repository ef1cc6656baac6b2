"""Async jobs: the request envelope that travels with a job, and what its status looks like."""

from __future__ import annotations

import base64
import json
import math
import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_core import PydanticSerializationError, to_jsonable_python

from modalkit.iomodel import reported_error
from modalkit.outcome import Encoded, Failure, Reported, failure_body

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DeliveryState = Literal["pending", "delivered", "failed"]
PENDING_STATES = ("queued", "running")
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_PAGE = 100  # jobs in one page of `GET /predict_async`


def new_job_id() -> str:
    """128 random bits: a job id cannot be guessed."""
    return secrets.token_hex(16)


def new_webhook_id() -> str:
    """The `webhook-id` of a job's webhook: made when the job is accepted, the same on every try (receivers dedupe)."""
    return f"msg_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class AsyncRequest:
    """One async input and where its result goes; passed whole to a Modal container by `spawn`."""

    message: Any
    success_queue: str | None = None
    failure_queue: str | None = None
    meta: dict[str, Any] | None = None
    webhook_url: str | None = None  # POSTed the finished job, signed (see modalkit.webhooks)
    webhook_id: str | None = None  # its `webhook-id`, made with the request
    owner: str | None = None  # the fingerprint of the API key that made the job (`modalkit.web.auth`); None: auth off

    @classmethod
    def from_envelope(cls, envelope: Any) -> AsyncRequest:
        """From ModalKit's `{message, success_queue, failure_queue, meta}` (a model with those fields) and our
        `webhook_url`: an empty queue name, meta or URL means none."""
        queues = (getattr(envelope, "success_queue", None) or None, getattr(envelope, "failure_queue", None) or None)
        meta = getattr(envelope, "meta", None) or None
        return cls(envelope.message, *queues, meta).with_webhook(getattr(envelope, "webhook_url", None) or None)

    def with_webhook(self, url: str | None) -> AsyncRequest:
        """This request with its finished job POSTed to `url` (None: no webhook), under a new `webhook-id`."""
        return replace(self, webhook_url=url, webhook_id=new_webhook_id() if url else None)

    def queue_for(self, status: JobState) -> str | None:
        """Where a job's result goes: the success queue once it succeeded, the failure queue once it failed."""
        return self.success_queue if status == "succeeded" else self.failure_queue


class Delivery(BaseModel):
    """The push of a job's result to the queue it named, or its webhook to the URL it named."""

    state: DeliveryState
    queue: str | None = None
    url: str | None = None
    attempts: int = 0
    error: str | None = None


def visible_to(owner: str | None, caller: str | None) -> bool:
    """Whether the caller (its key's fingerprint; None with auth off, when every job is everyone's) may see a job
    that `owner` made (None: made with auth off, or unknown on Modal, and then no client's)."""
    return caller is None or owner == caller


class Job(BaseModel):
    """An async job as `GET /predict_async/{job_id}` answers it, and as every runtime reports it.

    `result` only once succeeded; `error` (`{status_code, detail}`, see `modalkit.outcome.failure_body`) only
    once failed; `delivery` only when the job named a queue for its result, `webhook` only when it named a
    `webhook_url` (each once the job has finished, locally).
    """

    job_id: str
    status: JobState
    attempts: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    delivery: Delivery | None = None
    webhook: Delivery | None = None
    owner: str | None = Field(None, exclude=True)  # never shown: see `visible_to`
    created_at: float | None = None  # unix seconds, when known

    @property
    def pending(self) -> bool:
        return self.status in PENDING_STATES

    def visible_to(self, caller: str | None) -> bool:
        return visible_to(self.owner, caller)

    def summary(self) -> dict[str, Any]:
        """The job as a page of `GET /predict_async` lists it."""
        return {"job_id": self.job_id, "status": self.status, "attempts": self.attempts, "created_at": self.created_at}

    def answer(self) -> dict[str, Any]:
        """The response body: only the fields that apply to the job's state."""
        body: dict[str, Any] = {"job_id": self.job_id, "status": self.status, "attempts": self.attempts}
        if self.status == "succeeded":
            body["result"] = self.result
        if self.status == "failed":
            body["error"] = self.error
        if self.delivery is not None:
            body["delivery"] = self.delivery.model_dump(exclude_none=True)
        if self.webhook is not None:
            body["webhook"] = self.webhook.model_dump(exclude_none=True)
        return body


PageKey = tuple[float, str]  # (created_at, job_id) of the last job of a page: the next page starts after it


def page_cursor(job: Job) -> str:
    """The opaque cursor of the page that follows `job`: its `PageKey`, as URL-safe base64 of JSON."""
    return base64.urlsafe_b64encode(json.dumps([job.created_at or 0.0, job.job_id]).encode()).decode().rstrip("=")


def read_cursor(cursor: str) -> PageKey:
    """The `PageKey` a cursor holds; ValueError for one that `page_cursor` did not make."""
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise ValueError("not a cursor from a page of GET /predict_async") from exc
    numeric = isinstance(created_at, int | float) and not isinstance(created_at, bool)
    if not numeric or not math.isfinite(created_at) or not isinstance(job_id, str):
        raise ValueError("not a cursor from a page of GET /predict_async")
    return float(created_at), job_id


class JobPage(BaseModel):
    """One page of `GET /predict_async`: the caller's jobs, newest first; `next_cursor` fetches the next page
    (None: this was the last)."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None = None


def job_outcome(result: Any) -> tuple[JobState, Any]:
    """What one async item's result makes of its job: `("succeeded", output)` or `("failed", error)`.

    The error is `failure_body`'s `{status_code, detail}`; an output that reports its own failure (ModalKit's
    `InferenceOutputModel` with a status other than "success") fails the job too, and is kept as `output`.
    """
    if isinstance(result, Failure):
        return "failed", failure_body(result)
    error = reported_error(result)
    try:
        output = jsonable(result)
    except PydanticSerializationError as exc:  # as a local container answers an output it cannot encode
        return "failed", failure_body(Failure("error", f"output is not JSON-serialisable: {exc}"))
    if isinstance(result, Reported) and isinstance(output, dict):
        error = output.get("error") or f"status {output.get('status')!r}"
    if error is not None:
        return "failed", {**failure_body(Failure("rejected", error)), "output": output}
    return "succeeded", output


def webhook_payload(
    job_id: str | None, status: JobState, outcome: Any, attempts: int, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """What a webhook receives: the finished job as `GET /predict_async/{job_id}` shows it, without its deliveries
    (so every try sends the same body), and the request's `meta` when it had one."""
    body: dict[str, Any] = {"job_id": job_id, "status": status, "attempts": attempts}
    body["result" if status == "succeeded" else "error"] = outcome
    if meta:
        body["meta"] = meta
    return body


def sink_message(
    job_id: str | None, request: AsyncRequest, status: JobState, outcome: Any, message: Any, style: str = "native"
) -> dict[str, Any]:
    """What a success or failure queue receives; `style` is `queue_config.message_format`.

    native: `{job_id, status, meta, result}`, or `{job_id, status, meta, error, message}` on failure.
    modalkit: ModalKit's JSON: the output with the request's `meta` (no `error` on success), or, when
    inference raised, `{status: "error", error, meta, original_message: {message, success_queue, ...}}`.
    """
    meta = request.meta or {}
    if style == "modalkit":
        return _modalkit_message(request, status, outcome, message, meta)
    body: dict[str, Any] = {"job_id": job_id, "status": status, "meta": meta}
    if status == "succeeded":
        body["result"] = outcome
    else:
        body["error"] = outcome
        body["message"] = message
    return body


def _modalkit_message(
    request: AsyncRequest, status: JobState, outcome: Any, message: Any, meta: dict[str, Any]
) -> dict[str, Any]:
    if status == "succeeded":
        output = dict(outcome) if isinstance(outcome, dict) else {"result": outcome}
        output.pop("error", None)
        return {"status": "success", **output, "meta": meta}
    if isinstance(outcome, dict) and isinstance(outcome.get("output"), dict):
        return {**outcome["output"], "meta": meta}
    original = {
        "message": message,
        "success_queue": request.success_queue or "",
        "failure_queue": request.failure_queue or "",
        "meta": meta,
    }
    detail = outcome.get("detail") if isinstance(outcome, dict) else outcome
    return {"status": "error", "error": str(detail), "meta": {}, "original_message": original}


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (dicts, lists, str, numbers), encoded as pydantic encodes a response."""
    return json.loads(value) if isinstance(value, Encoded) else to_jsonable_python(value)
