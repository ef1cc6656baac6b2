"""OpenAI-compatible routes, for the `openai` package used unchanged with `base_url=<server>/v1`.

`GET /v1/models` lists the model entries. A batched service whose models are text in, embedding out gets
`POST /v1/embeddings` (through the batcher, like `/predict`); a streaming service gets `POST /v1/completions`
and `POST /v1/chat/completions`, streamed (`stream: true`, SSE ending with `data: [DONE]`) or whole.
Errors on `/v1/*` are in OpenAI's shape (`modalkit.web.errors.error_body`), with the statuses of the other routes.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

import base64
import secrets
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pydantic_core
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from modalkit.jobs import jsonable
from modalkit.logs import REQUEST_ID
from modalkit.outcome import Failure
from modalkit.web.body import errors_at, parse_async
from modalkit.web.errors import failure_exception
from modalkit.web.metrics import Metrics
from modalkit.web.openai_models import (
    ChatRequest,
    CompletionRequest,
    EmbeddingFields,
    EmbeddingsRequest,
    chunk_text,
    generation_input,
)
from modalkit.web.openapi import body_errors, error_responses
from modalkit.web.predict_routes import answered, submit_all
from modalkit.web.served import Served
from modalkit.web.streams import SSE_HEADERS, open_stream
from modalkit.web.text_limits import TextLimits

OPENAI_BODY_PATHS = ("/v1/embeddings", "/v1/completions", "/v1/chat/completions")
DONE = b"data: [DONE]\n\n"
Generation = type[ChatRequest | CompletionRequest]


def add_openai_routes(app: FastAPI, served: Served, metrics: Metrics) -> None:
    @app.get("/v1/models", responses=error_responses((), openai=True))
    async def list_models() -> dict[str, Any]:
        """The model entries, as OpenAI's model list."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "modalkit"} for name in served.model_names]
        return {"object": "list", "data": data}

    errors = body_errors(served, openai=True)
    if served.streaming:
        for path, kind in (("/v1/chat/completions", ChatRequest), ("/v1/completions", CompletionRequest)):
            generate = partial(_generate, served, metrics, kind)
            app.add_api_route(
                path, generate, methods=["POST"], openapi_extra=_body_doc(kind), name=path[4:], responses=errors
            )
        return
    fields = EmbeddingFields.of(served.input_model, served.output_model)
    if fields is not None:
        embed = partial(_embed, served, fields)
        doc = _body_doc(EmbeddingsRequest)
        app.add_api_route("/v1/embeddings", embed, methods=["POST"], openapi_extra=doc, responses=errors)


async def _embed(served: Served, fields: EmbeddingFields, request: Request) -> Response:
    body = await parse_async(await request.body(), served.limits, partial(_parse, EmbeddingsRequest))
    name = _model_entry(served, body.model)
    texts = body.texts()
    most = served.limits.max_batch_items
    if not texts or len(texts) > most:
        raise HTTPException(
            413 if texts else 422, f"input holds {len(texts)} texts; 1 to {most} (limits.max_batch_items)"
        )
    items = [_service_input(served, {fields.text: text}, ["body", "input", i]) for i, text in enumerate(texts)]
    results = await answered(request, submit_all(served.runtime, name, items), served.limits.request_timeout_seconds)
    data, tokens = [], 0
    for index, result in enumerate(results):
        if isinstance(result, Failure):
            raise failure_exception(result, name)
        output = jsonable(result)
        vector = output[fields.embedding]
        tokens += int(output.get(fields.tokens, 0)) if fields.tokens else 0
        encoded = _base64_floats(vector) if body.encoding_format == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    answer = {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Response(pydantic_core.to_json(answer), media_type="application/json")


async def _generate(served: Served, metrics: Metrics, kind: Generation, request: Request) -> Response:
    body = await parse_async(await request.body(), served.limits, partial(_parse, kind))
    name = _model_entry(served, body.model)
    if isinstance(body, CompletionRequest) and body.prompt_text() is None:
        problem = {"type": "value_error", "loc": ["body", "prompt"], "msg": "send one prompt per request"}
        raise HTTPException(422, [problem])
    item = _service_input(served, generation_input(served.input_model.model_fields, body), ["body"])
    answer = Answer(name, chat=isinstance(body, ChatRequest))
    limits = TextLimits(body.stops(), body.token_limit())
    chunks = await open_stream(request, served, name, item, metrics)
    if body.stream:
        return StreamingResponse(_events(chunks, limits, answer), media_type="text/event-stream", headers=SSE_HEADERS)
    text = "".join([piece async for piece in _texts(chunks, limits, answer)])
    if answer.failure is not None:
        raise failure_exception(answer.failure, name)
    return JSONResponse(answer.whole(text, limits.tokens))


@dataclass
class Answer:
    """One completion's id and shape (chat or text), and how it ended."""

    model: str
    chat: bool
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    finish_reason: str = "stop"
    failure: Failure | None = None

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def whole(self, text: str, tokens: int) -> dict[str, Any]:
        usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def _head(self, kind: str) -> dict[str, Any]:
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}


async def _texts(chunks: AsyncIterator[Any], limits: TextLimits, answer: Answer) -> AsyncIterator[str]:
    """The text to send, piece by piece, within `stop` and `max_tokens`; a failure is kept in `answer`."""
    try:
        async for chunk in chunks:
            if isinstance(chunk, Failure):
                answer.failure = chunk
                return
            piece = limits.feed(chunk_text(chunk))
            if piece:
                yield piece
            if limits.finish_reason is not None:
                answer.finish_reason = limits.finish_reason
                return
        tail = limits.flush()
        if tail:
            yield tail
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _events(chunks: AsyncIterator[Any], limits: TextLimits, answer: Answer) -> AsyncIterator[bytes]:
    if answer.chat:
        yield _data(answer.chunk(None))
    async for piece in _texts(chunks, limits, answer):
        yield _data(answer.chunk(piece))
    if answer.failure is not None:  # the `openai` package raises APIError on an event with "error"
        error = {
            "message": answer.failure.detail,
            "type": "server_error",
            "code": answer.failure.cause,
            "request_id": REQUEST_ID.get(),
        }
        yield _data({"error": error})
        return
    yield _data(answer.chunk("", answer.finish_reason))
    yield DONE


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + pydantic_core.to_json(payload) + b"\n\n"


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(422, errors_at(exc, ["body"])) from None


def _model_entry(served: Served, name: str) -> str:
    if name not in served.model_names:
        raise HTTPException(404, f"model {name!r} is not served here; models: {', '.join(served.model_names)}")
    return name


def _service_input(served: Served, data: dict[str, Any], where: list[Any]) -> BaseModel:
    try:
        return served.input_model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, errors_at(exc, where)) from None


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32 (the `openai` package asks for it by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}
