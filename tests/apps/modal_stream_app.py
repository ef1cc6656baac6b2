"""A streaming test app: the words of the input come back one chunk at a time; the words script failures.

`Chat` streams from a plain generator and declares no `@modal.concurrent` (the YAML's `max_concurrent_inputs`
applies); `AsyncChat` streams from an async generator and keeps its own `@modal.concurrent(max_inputs=4)`.
Words: `reject` raises `InferenceError(..., 409)`, `boom` raises `ValueError`, `forever` counts without end.
Every chunk made is recorded in `MADE[text]`, and `CLOSED` lists the inputs whose generator was closed.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator

import modal
from pydantic import BaseModel

from modalkit import InferenceBase, InferenceError, ModalConfig, StreamingService, create_web_endpoints

MADE: dict[str, list[str]] = {}
CLOSED: list[str] = []


class ChatIn(BaseModel):
    text: str


def _chunks(text: str) -> Iterator[str]:
    count = 0
    for word in text.split():
        if word == "reject":
            raise InferenceError("this word is refused", 409)
        if word == "boom":
            raise ValueError("the model broke")
        if word == "forever":
            while True:
                count += 1
                yield f"{count}"
        yield word


class Words(InferenceBase):
    def predict_stream(self, item: ChatIn) -> Iterator[str]:
        made = MADE.setdefault(item.text, [])
        try:
            for chunk in _chunks(item.text):
                made.append(chunk)
                yield chunk
        finally:
            CLOSED.append(item.text)


class AsyncWords(InferenceBase):
    async def predict_stream(self, item: ChatIn) -> AsyncIterator[str]:
        made = MADE.setdefault(item.text, [])
        try:
            for chunk in _chunks(item.text):
                await asyncio.sleep(0)
                made.append(chunk)
                yield chunk
        finally:
            CLOSED.append(item.text)


config = ModalConfig()
app = modal.App(config.app_name)


@app.cls(**config.get_app_cls_settings())
class Chat(StreamingService):
    inference_implementation = Words
    model_name: str = modal.parameter(default="m")
    modal_config = config


@app.cls(**config.get_app_cls_settings())
@modal.concurrent(max_inputs=4)
class AsyncChat(StreamingService):
    inference_implementation = AsyncWords
    model_name: str = modal.parameter(default="m")
    modal_config = config


@app.function(**config.get_handler_settings())
@modal.concurrent(**config.get_concurrent_settings(handler=True))
@modal.asgi_app(**config.get_asgi_app_settings())
def web():
    return create_web_endpoints(Chat, input_model=ChatIn, output_model=ChatIn)
