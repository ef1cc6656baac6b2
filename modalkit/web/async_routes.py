"""`POST /predict_async` and the job routes: `GET` and `DELETE /predict_async/{job_id}` (status, cancel) and
`GET /predict_async` (the caller's jobs, a page at a time). Each client sees only the jobs its key made."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Annotated, Any

import pydantic_core
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from modalkit.config.schema import WebhookConfig
from modalkit.exceptions import ConfigError, JobExpired, WebhookFailed, WebhookNotAllowed
from modalkit.jobs import MAX_PAGE, AsyncRequest, Job, JobPage, JobState, page_cursor, read_cursor, visible_to
from modalkit.sinks import queue_allowed
from modalkit.web.auth import job_owner
from modalkit.web.body import errors_at, parse_async, parse_json
from modalkit.web.openapi import body_errors, error_responses, input_ref, openapi_body
from modalkit.web.predict_routes import json_body
from modalkit.web.served import Served
from modalkit.web.uploads import is_upload, read_upload
from modalkit.webhooks import check_url, secret_key

logger = logging.getLogger("modalkit.web")

# ModalKit sends "" for "no queue"; SQS queue URLs (https://...) are names too.
QUEUE_NAME = Field(None, max_length=1024, pattern=r"^$|^[A-Za-z0-9._:/-]+$")
_QUEUE_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,1024}")
ENVELOPE_KEYS = frozenset({"message", "success_queue", "failure_queue", "meta", "webhook_url"})
WEBHOOK_URL = Field(None, max_length=2048)


# What the job routes' error statuses mean here; the other statuses mean what they mean everywhere.
SUBMIT_SAID = {
    413: "the body is larger than limits.max_body_bytes, or `meta` than limits.max_meta_bytes",
    422: "invalid input, a queue not in queue_config.allowed_queues, or a webhook_url webhook_config does not allow;"
    " detail[].loc says",
    503: "limits.max_queued_requests requests already wait, the job store cannot take the job, or a webhook_url is"
    " named and the server has no webhook secret",
}
JOB_SAID = {
    404: "unknown job: never accepted, its result has expired, or another client's",
    409: "the job has already finished (succeeded or failed): it cannot be cancelled",
    410: "the job's result has expired",
}
LIST_SAID = {422: "a status that is not a job state, a limit outside 1..100, or a cursor no page gave; detail[].loc"}


class AsyncAccepted(BaseModel):
    job_id: str
    status_url: str


@dataclass(frozen=True)
class JobRules:
    """What a client may ask of a job beyond its input: which queues, how much `meta`."""

    allowed_queues: Sequence[str]
    max_meta_bytes: int


def add_async_routes(app: FastAPI, served: Served) -> None:
    input_model, settings = served.input_model, served.settings
    rules = JobRules(settings.queue_config.allowed_queues, settings.limits.max_meta_bytes)
    envelope = envelope_model(input_model)
    envelope_schema = envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    envelope_schema.pop("$defs", None)
    read = partial(read_job, envelope, input_model, rules)

    @app.post(
        "/predict_async",
        status_code=202,
        response_model=AsyncAccepted,
        openapi_extra=openapi_body(served, {"anyOf": [input_ref(input_model), envelope_schema]}),
        responses=body_errors(served, (429, 507), SUBMIT_SAID),
        max_body_size=served.max_body_bytes,
    )
    async def predict_async(request: Request) -> AsyncAccepted:
        model_name = served.requested_model(request)
        if served.uploads.enabled and is_upload(request):
            item, envelope_parts = await read_upload(request, served.uploads, tuple(ENVELOPE_KEYS - {"message"}))
            job = uploaded_job(item, envelope_parts, rules)
        else:
            job = await parse_async(await json_body(request, served), settings.limits, read)
        await check_webhook(job, settings.webhook_config)
        job = replace(job, owner=job_owner(request.scope))  # the job is the caller's key's
        job_id = await served.runtime.spawn(model_name, job)  # refusals: modalkit.web.errors.STATUS_OF_ERROR
        return AsyncAccepted(job_id=job_id, status_url=f"/predict_async/{job_id}")

    @app.get(
        "/predict_async/{job_id}",
        response_model=Job,
        responses={
            **error_responses((404, 410), said=JOB_SAID),
            202: {"model": Job, "description": "queued or running"},
        },
    )
    async def job_status(job_id: str, request: Request) -> JSONResponse:
        job = await visible_job(served, job_id, request)
        return JSONResponse(job.answer(), status_code=202 if job.pending else 200)

    add_job_routes(app, served)


def add_job_routes(app: FastAPI, served: Served) -> None:
    """Cancel a job, and list the caller's jobs."""

    @app.delete(
        "/predict_async/{job_id}",
        response_model=Job,
        responses=error_responses((404, 409, 410), said=JOB_SAID),
    )
    async def cancel_job(job_id: str, request: Request) -> JSONResponse:
        """Cancel a queued or running job: it ends `cancelled` and its result (if it was running) is discarded.
        Cancelling a cancelled job answers it again; a finished one gets 409."""
        seen = await visible_job(served, job_id, request)
        job = await served.runtime.cancel(job_id) if seen.pending else seen
        if job is None:
            raise HTTPException(404, unknown_job(job_id))
        if job.status in ("succeeded", "failed"):
            raise HTTPException(
                409, f"job {job_id!r} has already {job.status}: only a queued or running job can be cancelled"
            )
        return JSONResponse(job.answer())

    @app.get("/predict_async", response_model=JobPage, responses=error_responses((422,), said=LIST_SAID))
    async def list_jobs(
        request: Request,
        status: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """The caller's jobs, newest first, `limit` at a time; pass `next_cursor` as `cursor` for the next page."""
        after = None
        if cursor:
            try:
                after = read_cursor(cursor)
            except ValueError as exc:
                problem = {"type": "value_error", "loc": ["query", "cursor"], "msg": str(exc), "input": cursor}
                raise HTTPException(422, [problem]) from None
        found = await served.runtime.list_jobs(job_owner(request.scope), status, limit + 1, after)
        more = len(found) > limit
        page = found[:limit]
        return JobPage(jobs=[job.summary() for job in page], next_cursor=page_cursor(page[-1]) if more else None)


def unknown_job(job_id: str) -> str:
    return f"unknown job {job_id!r} (never accepted, or its result has expired)"


async def visible_job(served: Served, job_id: str, request: Request) -> Job:
    """The job, if the caller may see it; 404 otherwise, the same whether it is unknown or another client's (an
    expired job is 410 to its owner only)."""
    caller = job_owner(request.scope)
    try:
        job = await served.runtime.job(job_id)
    except JobExpired as exc:
        if not visible_to(exc.owner, caller):
            raise HTTPException(404, unknown_job(job_id)) from None
        raise
    if job is None or not job.visible_to(caller):
        raise HTTPException(404, unknown_job(job_id))
    return job


def envelope_model(input_model: type[BaseModel]) -> type[BaseModel]:
    """ModalKit's async request around `input_model`: `{message, success_queue, failure_queue, meta}`."""
    return create_model(
        f"{input_model.__name__}AsyncRequest",
        __config__=ConfigDict(extra="forbid"),
        message=(input_model, ...),
        success_queue=(str | None, QUEUE_NAME),
        failure_queue=(str | None, QUEUE_NAME),
        meta=(dict[str, Any] | None, None),
        webhook_url=(str | None, WEBHOOK_URL),
    )


def uploaded_job(item: BaseModel, parts: dict[str, str], rules: JobRules) -> AsyncRequest:
    """The job of an upload: the input, and its queues and `meta` from text parts (or the query string)."""
    meta = parse_json(parts["meta"].encode()) if parts.get("meta") else None
    check_meta({"message": None, "meta": meta}, rules.max_meta_bytes)
    if meta is not None and not isinstance(meta, dict):
        raise HTTPException(422, [{"type": "dict_type", "loc": ["body", "meta"], "msg": "meta must be an object"}])
    queues = {field: parts.get(field) or None for field in ("success_queue", "failure_queue")}
    for field, name in queues.items():
        if name is not None and not _QUEUE_PATTERN.fullmatch(name):
            problem = {"type": "string_pattern_mismatch", "loc": ["body", field], "msg": f"{field} is not a queue name"}
            raise HTTPException(422, [problem])
    job = AsyncRequest(item, queues["success_queue"], queues["failure_queue"], meta or None)
    check_queues(job, rules.allowed_queues)
    return job.with_webhook(parts.get("webhook_url") or None)


def read_job(envelope: type[BaseModel], input_model: type[BaseModel], rules: JobRules, raw: bytes) -> AsyncRequest:
    """The job of a `/predict_async` body, or the HTTPException that refuses it."""
    body = parse_json(raw)  # NaN and Infinity are refused here: they are not JSON, and no queue may receive them
    check_meta(body, rules.max_meta_bytes)  # before validation, so a huge meta costs no more than its parse
    job = parse_job(envelope, input_model, body)
    check_queues(job, rules.allowed_queues)
    return job


def check_meta(body: Any, max_bytes: int) -> None:
    meta = body.get("meta") if looks_enveloped(body) else None
    if meta is None:
        return
    size = len(pydantic_core.to_json(meta))
    if size > max_bytes:
        raise HTTPException(
            413,
            f"meta is {size} bytes of JSON; at most {max_bytes} (limits.max_meta_bytes): meta travels with the"
            " result to its queue, so keep it to ids and small labels, and large data in the message",
        )


def check_queues(job: AsyncRequest, allowed: Sequence[str]) -> None:
    """Clients name the queue that receives a result: only those `queue_config.allowed_queues` lists."""
    named = (("success_queue", job.success_queue), ("failure_queue", job.failure_queue))
    listed = ", ".join(allowed) or "none"
    problems = [
        {
            "type": "queue_not_allowed",
            "loc": ["body", field],
            "msg": f"queue {name!r} is not allowed; queue_config.allowed_queues: {listed}",
        }
        for field, name in named
        if name is not None and not queue_allowed(name, allowed)
    ]
    if problems:
        raise HTTPException(422, problems)


async def check_webhook(job: AsyncRequest, config: WebhookConfig) -> None:
    """A client names the URL its finished job is POSTed to: only a host `webhook_config` allows, resolving to a
    public address unless `allow_private` (no SSRF). The delivery checks again before every try."""
    if job.webhook_url is None:
        return
    try:
        await asyncio.to_thread(check_url, job.webhook_url, config)  # it resolves the host
    except (WebhookNotAllowed, WebhookFailed) as exc:
        problem = {"type": "webhook_not_allowed", "loc": ["body", "webhook_url"], "msg": str(exc)}
        raise HTTPException(422, [problem]) from None
    try:
        secret_key(config)
    except ConfigError as exc:  # the server's fault, not the client's: say so rather than fail the webhook later
        logger.error("a job names a webhook, but %s", exc)
        raise HTTPException(503, "webhooks cannot be signed: the server has no webhook secret") from None


def looks_enveloped(body: Any) -> bool:
    return isinstance(body, dict) and "message" in body and ENVELOPE_KEYS.issuperset(body)


def parse_job(envelope: type[BaseModel], input_model: type[BaseModel], body: Any) -> AsyncRequest:
    """The job a `/predict_async` body asks for: the bare input, or ModalKit's envelope around it.

    A body is read as the envelope when it has `message` and only envelope keys, unless it is a valid
    input of its own and not a valid envelope (an input model may have a field named `message`).
    """
    first, second = (envelope, input_model) if looks_enveloped(body) else (input_model, None)
    try:
        parsed = first.model_validate(body)
    except ValidationError as exc:
        if second is None:
            raise HTTPException(422, errors_at(exc, ["body"])) from None
        try:
            return AsyncRequest(second.model_validate(body))
        except ValidationError:
            raise HTTPException(422, errors_at(exc, ["body"])) from None
    if first is input_model:
        return AsyncRequest(parsed)
    return AsyncRequest.from_envelope(parsed)
