"""Reading request bodies and writing answers: one JSON parse, one validation, errors in FastAPI's shape."""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from modalkit.outcome import Encoded


def parse_json(raw: bytes) -> Any:
    try:
        return pydantic_core.from_json(raw)
    except ValueError:
        raise HTTPException(422, [{"type": "json_invalid", "loc": ["body"], "msg": "body is not valid JSON"}]) from None


def parse_input(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The validated input, or a 422 in FastAPI's shape whose `loc` names the field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, located(exc, ["body"])) from None


def encode(value: Any) -> bytes:
    """JSON of an output; a container's output arrives already encoded."""
    return bytes(value) if isinstance(value, Encoded) else pydantic_core.to_json(value)


def located(exc: ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    return [
        {"type": err["type"], "loc": [*prefix, *err["loc"]], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
