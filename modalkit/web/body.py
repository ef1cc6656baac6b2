"""Reading request bodies and writing answers: one JSON parse, one validation, errors in FastAPI's shape.

Only JSON bodies are accepted (`BodyTypeCheck`, 415 otherwise); NaN and Infinity, which are not JSON, get a 422;
a body larger than `limits.parse_in_thread_bytes` is parsed in the parsing thread (`parse_json_async`,
`parse_input_async`, `parse_async`), so big bodies do not queue on the event loop ahead of every other request.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any, TypeVar

import pydantic_core
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from modalkit.config.schema import LimitsConfig
from modalkit.web.errors import error_body
from modalkit.web.request_ids import request_id

T = TypeVar("T")

_LOOP_TURNS_WAIT_S = 1.0  # the longest the parsing thread waits for the event loop to take its turns

# A form or text/plain POST from another site needs no CORS preflight: refusing every body that is not
# JSON keeps a browser from sending a request it could not have sent with fetch() and the site's blessing.
ACCEPTED_TYPES = "application/json (or another */*+json type)"


def unsupported_body_type(content_type: bytes | None) -> str | None:
    """Why a body of this content type is refused, or None when it is accepted (no header: JSON assumed)."""
    if content_type is None or content_type == b"application/json":
        return None
    media_type = content_type.partition(b";")[0].strip().lower()
    if media_type == b"application/json" or media_type.endswith(b"+json"):
        return None
    shown = media_type.decode("latin-1")[:100]
    return f"unsupported content type {shown!r}: send the body as {ACCEPTED_TYPES}"


class BodyTypeCheck:
    """Answers 415, the body unread, to a POST to one of `paths` whose content type is not accepted: `problem`
    says why a content type is refused on a path (default: anything but JSON)."""

    def __init__(
        self,
        app: ASGIApp,
        paths: frozenset[str],
        problem: Callable[[str, bytes | None], str | None] | None = None,
    ) -> None:
        self.app = app
        self.paths = paths
        self.problem = problem or (lambda path, content_type: unsupported_body_type(content_type))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            for name, value in scope["headers"]:
                if name == b"content-type":
                    problem = self.problem(scope["path"], value)
                    if problem is not None:
                        await send_error(scope, send, 415, problem)
                        return
                    break
        await self.app(scope, receive, send)


async def send_error(
    scope: Scope, send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """An error answer sent straight from ASGI middleware, before any route runs (`errors.error_body`'s shape)."""
    body = json.dumps(error_body(scope["path"], status, detail, request_id(scope))).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def parse_json(raw: bytes) -> Any:
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        hint = "; NaN and Infinity are not JSON numbers" if _may_hold_nan(raw) else ""
        raise HTTPException(
            422, [{"type": "json_invalid", "loc": ["body"], "msg": f"body is not valid JSON: {exc}{hint}"}]
        ) from None


def parse_input(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The validated input, or a 422 in FastAPI's shape whose `loc` names the field."""
    try:
        item = model.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, errors_at(exc, ["body"])) from None
    if _may_hold_nan(raw):
        parse_json(raw)  # pydantic's JSON reader takes NaN and Infinity as floats: refuse them as JSON does
    return item


def parse_inputs(model: type[BaseModel], raw: bytes, max_items: int) -> list[BaseModel | list[dict[str, Any]]]:
    """The items of a `/predict_batch` body, each validated on its own: an invalid one stands as its 422 detail."""
    items = parse_json(raw)
    if not isinstance(items, list):
        raise HTTPException(422, [{"type": "list_type", "loc": ["body"], "msg": "expected a JSON array of inputs"}])
    if len(items) > max_items:
        raise HTTPException(413, f"{len(items)} items; at most {max_items} (limits.max_batch_items)")
    parsed: list[BaseModel | list[dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as exc:
            parsed.append(errors_at(exc, ["body", index]))
    return parsed


async def parse_async(raw: bytes, limits: LimitsConfig, parse: Callable[[bytes], T]) -> T:
    """`parse(raw)`, in the parsing thread when `raw` is larger than `limits.parse_in_thread_bytes`.

    Example: `job = await parse_async(raw, limits, lambda raw: parse_job(parse_json(raw)))`.
    """
    if len(raw) <= limits.parse_in_thread_bytes:
        return parse(raw)
    return await _parsing_thread().parse(raw, parse)


async def parse_json_async(raw: bytes, limits: LimitsConfig) -> Any:
    """`parse_json`, off the event loop for a big body."""
    return await parse_async(raw, limits, parse_json)


async def parse_input_async(model: type[BaseModel], raw: bytes, limits: LimitsConfig) -> BaseModel:
    """`parse_input`, off the event loop for a big body."""
    return await parse_async(raw, limits, partial(parse_input, model))


def errors_at(exc: ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    """A validation error's problems in FastAPI's shape, each `loc` under `prefix` (e.g. ["body"])."""
    return [
        {"type": err["type"], "loc": [*prefix, *err["loc"]], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _may_hold_nan(raw: bytes) -> bool:
    return b"NaN" in raw or b"Infinity" in raw


class ParsingThread:
    """The one thread that parses big bodies, taking turns with the event loop.

    pydantic-core holds the GIL while it parses, so the event loop waits for a whole parse however many threads
    parse; before each body this thread lets the loop take two turns (a read, then the task it wakes), so a burst
    of big bodies delays each other request by about one parse instead of all of them.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="modalkit-parse")

    async def parse(self, raw: bytes, parse: Callable[[bytes], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._after_the_loop, loop, raw, parse)

    @staticmethod
    def _after_the_loop(loop: asyncio.AbstractEventLoop, raw: bytes, parse: Callable[[bytes], T]) -> T:
        caught_up = threading.Event()
        loop.call_soon_threadsafe(loop.call_soon, caught_up.set)
        caught_up.wait(_LOOP_TURNS_WAIT_S)  # bounded: a loop that has stopped must not keep this thread
        return parse(raw)


@cache
def _parsing_thread() -> ParsingThread:
    return ParsingThread()
