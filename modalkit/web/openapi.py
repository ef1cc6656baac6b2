"""The OpenAPI description of routes that read their bodies themselves."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from modalkit.web.served import Served
from modalkit.web.uploads import upload_content

# The answers every body-reading route may give before it runs the model.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    415: {"description": "the body is not JSON (application/json or */*+json)"},
    503: {"description": "limits.max_queued_requests requests already wait; retry after Retry-After seconds"},
}


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


def document_input(app: FastAPI, input_model: type[BaseModel]) -> None:
    """The routes read their bodies themselves, so put the input model's schema into the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schema = input_model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[input_model.__name__] = schema
        return app.openapi_schema or spec

    app.openapi = openapi  # type: ignore[method-assign]
