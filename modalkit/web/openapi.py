"""The OpenAPI description: the bodies of routes that read them themselves, every route's error answers, and
the API key's security schemes (so that /docs "Authorize" works)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from modalkit.config.schema import AuthConfig
from modalkit.web.errors import OPENAI_PREFIX
from modalkit.web.served import Served
from modalkit.web.uploads import upload_content

Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    """Every error answer but those of /v1/* (`errors.error_body`)."""

    detail: Any = Field(description="what went wrong; for a 422, a list of problems whose `loc` names the field")
    request_id: str | None = Field(description="the request's id, as in the `x-request-id` header: quote it")


class OpenAIError(BaseModel):
    message: str
    type: str
    code: str | None
    request_id: str | None = Field(description="the request's id, as in the `x-request-id` header: quote it")


class OpenAIErrorBody(BaseModel):
    """The error answers of /v1/*, in OpenAI's shape, so that the `openai` package raises its own errors."""

    error: OpenAIError


# What each error status means, on any route that may answer it; a route may say more of its own.
ERRORS: dict[int, str] = {
    400: "the multipart body cannot be read",
    401: "no API key, or a wrong one: send it in the configured header or as Authorization: Bearer <key>",
    404: "?model_name= (or the body's `model`) names no model entry",
    410: "the job's result has expired",
    413: "the body is larger than limits.max_body_bytes, or holds more than limits.max_batch_items items",
    415: "the body is not JSON (application/json or */*+json), or not the upload the input model takes",
    422: "invalid input; detail[].loc names the field",
    429: "too many pending jobs (queue_config.max_pending); retry after Retry-After seconds",
    500: "a bug; the server log has the details, under this request_id",
    503: "limits.max_queued_requests requests already wait (retry after Retry-After seconds), or no container"
    " can take the request: it crashed, broke its GPU, or its model cannot load",
    504: "no result within limits.request_timeout_seconds, or the batch ran past deployment_config.timeout",
    507: "the job store is at its budget; Retry-After: when the next result expires",
}
BODY_STATUSES = (404, 413, 415, 422, 503, 504)  # a route that reads a body and runs the model


def error_responses(statuses: Iterable[int], openai: bool = False, said: Mapping[int, str] | None = None) -> Responses:
    """The `responses=` of a route that may answer `statuses` (and 500, as any route may), each with its body's
    model; `said` gives a status a meaning of this route's own."""
    model = OpenAIErrorBody if openai else ErrorBody
    meaning = {**ERRORS, **(said or {})}
    return {status: {"model": model, "description": meaning[status]} for status in sorted({*statuses, 500})}


def body_errors(
    served: Served, more: Iterable[int] = (), said: Mapping[int, str] | None = None, openai: bool = False
) -> Responses:
    """The error answers of a route that reads a body and runs the model, and `more` (400 too when the input
    model takes uploads)."""
    uploads = (400,) if served.uploads.enabled and not openai else ()
    return error_responses((*BODY_STATUSES, *uploads, *more), openai, said)


def input_ref(input_model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{input_model.__name__}"}


def openapi_body(served: Served, schema: dict[str, Any], batch: bool = False) -> dict[str, Any]:
    """The `openapi_extra` of a route taking a JSON body of `schema` and the `model_name` query parameter (and,
    when the input model has file fields, multipart and raw uploads)."""
    model_query = {
        "name": "model_name",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(served.model_names), "default": served.default_model},
        "description": "the model entry to run",
    }
    uploads = served.uploads
    content = upload_content(uploads, schema, batch) if uploads.enabled else {"application/json": {"schema": schema}}
    return {"parameters": [model_query], "requestBody": {"required": True, "content": content}}


def document_api(app: FastAPI, input_model: type[BaseModel], auth: AuthConfig | None) -> None:
    """Complete FastAPI's OpenAPI document: the input model's schema (the routes read their bodies themselves),
    our 422 body and, when an API key is configured (`auth`), its security schemes and 401s."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schema = input_model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[input_model.__name__] = schema
            document_validation_errors(spec)
            if auth is not None:
                document_auth(spec, auth)
        return app.openapi_schema or spec

    app.openapi = openapi  # type: ignore[method-assign]


def document_validation_errors(spec: dict[str, Any]) -> None:
    """FastAPI documents its own 422 on routes with parameters; the answer is ours (`errors.validation_error`)."""
    fastapi_body = {"$ref": "#/components/schemas/HTTPValidationError"}
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            answer = operation.get("responses", {}).get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema") == fastapi_body:
                operation["responses"]["422"] = {"description": ERRORS[422], "content": _error_content(path)}


def document_auth(spec: dict[str, Any], auth: AuthConfig) -> None:
    """The key in its header, or as a bearer token: either scheme on every route but the public ones."""
    spec.setdefault("components", {})["securitySchemes"] = {
        auth.header: {"type": "apiKey", "in": "header", "name": auth.header},
        "bearer": {"type": "http", "scheme": "bearer", "description": f"the same key as {auth.header}"},
    }
    public = auth.open_routes
    for path, item in spec.get("paths", {}).items():
        if path in public:
            continue
        unauthorized = {"description": ERRORS[401], "content": _error_content(path)}
        for operation in item.values():
            operation["security"] = [{auth.header: []}, {"bearer": []}]
            operation["responses"] = dict(sorted({**operation.get("responses", {}), "401": unauthorized}.items()))


def _error_content(path: str) -> dict[str, Any]:
    """The error body of a path's answers (its schema is in the document: every route may answer 500)."""
    model = OpenAIErrorBody if path.startswith(OPENAI_PREFIX) else ErrorBody
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
