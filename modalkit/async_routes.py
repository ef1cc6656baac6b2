"""`POST /predict_async` and `GET /predict_async/{job_id}`: queue-backed inference with a job id."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from modalkit.exceptions import JobExpired, QueueFull, ServiceUnavailable
from modalkit.http_body import located, parse_json
from modalkit.jobs import AsyncRequest
from modalkit.runtime import Runtime

# ModalKit sends "" for "no queue"; SQS queue URLs (https://...) are names too.
QUEUE_NAME = Field(None, max_length=1024, pattern=r"^$|^[A-Za-z0-9._:/-]+$")
ENVELOPE_KEYS = frozenset({"message", "success_queue", "failure_queue", "meta"})


class AsyncAccepted(BaseModel):
    job_id: str
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    status: str
    attempts: int = 0
    result: Any = None
    error: Any = None


def add_async_routes(
    app: FastAPI,
    runtime: Runtime,
    input_model: type[BaseModel],
    pick_model: Callable[[Request], str],
    body_doc: Callable[..., dict[str, Any]],
) -> None:
    envelope: type[BaseModel] = create_model(
        f"{input_model.__name__}AsyncRequest",
        __config__=ConfigDict(extra="forbid"),
        message=(input_model, ...),
        success_queue=(str | None, QUEUE_NAME),
        failure_queue=(str | None, QUEUE_NAME),
        meta=(dict[str, Any] | None, None),
    )
    input_ref = {"$ref": f"#/components/schemas/{input_model.__name__}"}
    envelope_schema = envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    envelope_schema.pop("$defs", None)

    @app.post(
        "/predict_async",
        status_code=202,
        response_model=AsyncAccepted,
        openapi_extra=body_doc({"anyOf": [input_ref, envelope_schema]}),
        responses={429: {"description": "too many pending jobs; retry after Retry-After seconds"}},
    )
    async def predict_async(request: Request) -> AsyncAccepted:
        model_name = pick_model(request)
        job = parse_job(envelope, input_model, parse_json(await request.body()))
        try:
            job_id = await runtime.spawn(model_name, job)
        except QueueFull as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None
        except ServiceUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        return AsyncAccepted(job_id=job_id, status_url=f"/predict_async/{job_id}")

    @app.get(
        "/predict_async/{job_id}",
        response_model=JobStatus,
        responses={202: {"model": JobStatus, "description": "queued or running"}, 404: {}, 410: {}},
    )
    async def job_status(job_id: str) -> JSONResponse:
        try:
            view = await runtime.job(job_id)
        except JobExpired as exc:
            raise HTTPException(410, str(exc)) from None
        if view is None:
            raise HTTPException(404, f"unknown job {job_id!r} (never accepted, or its result has expired)")
        return JSONResponse(view.as_dict(), status_code=202 if view.status in ("queued", "running") else 200)


def parse_job(envelope: type[BaseModel], input_model: type[BaseModel], body: Any) -> AsyncRequest:
    """The job a `/predict_async` body asks for: the bare input, or ModalKit's envelope around it.

    A body is read as the envelope when it has `message` and only envelope keys, unless it is a valid
    input of its own and not a valid envelope (an input model may have a field named `message`).
    """
    looks_enveloped = isinstance(body, dict) and "message" in body and ENVELOPE_KEYS.issuperset(body)
    first, second = (envelope, input_model) if looks_enveloped else (input_model, None)
    try:
        parsed = first.model_validate(body)
    except ValidationError as exc:
        if second is None:
            raise HTTPException(422, located(exc, ["body"])) from None
        try:
            return AsyncRequest(second.model_validate(body))
        except ValidationError:
            raise HTTPException(422, located(exc, ["body"])) from None
    if first is input_model:
        return AsyncRequest(parsed)
    queues = (getattr(parsed, "success_queue", None) or None, getattr(parsed, "failure_queue", None) or None)
    return AsyncRequest(parsed.message, *queues, getattr(parsed, "meta", None) or None)  # type: ignore[attr-defined]
