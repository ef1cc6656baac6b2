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

QUEUE_NAME = Field(None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:-]+$")


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
        body = parse_json(await request.body())
        try:
            if isinstance(body, dict) and "message" in body:
                parsed = envelope.model_validate(body)
                job = AsyncRequest(**{name: getattr(parsed, name) for name in type(parsed).model_fields})
            else:
                job = AsyncRequest(input_model.model_validate(body))
        except ValidationError as exc:
            raise HTTPException(422, located(exc, ["body"])) from None
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
