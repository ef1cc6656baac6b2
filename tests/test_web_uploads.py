"""Uploads at the web edge, in process: multipart and raw bodies become the same input as JSON, sizes and content
types are refused before the body is read, and OpenAPI shows the file fields. A recording runtime stands in for
containers (tests/e2e/test_uploads.py serves the image example for real)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel

from modalkit import File, InferenceBase, ModalConfig, ModalService, Upload, create_web_endpoints
from modalkit.observation import Observation

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class PhotoIn(BaseModel):
    image: Annotated[File, Upload(content_types=["image/png", "image/jpeg"], max_bytes=100_000)]
    top_k: int = 3
    note: str = ""


class Seen(BaseModel):
    size: int
    filename: str | None
    content_type: str | None
    top_k: int
    note: str


class RecordingRuntime:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.jobs: list[Any] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def submit(self, model_name: str, item: Any) -> Any:
        self.items.append(item)
        image = item.image
        assert isinstance(image.data, bytes)
        return Seen(
            size=len(image.data),
            filename=image.filename,
            content_type=image.content_type,
            top_k=item.top_k,
            note=item.note,
        )

    async def spawn(self, model_name: str, request: Any) -> str:
        self.jobs.append(request)
        return "0" * 32

    async def job(self, job_id: str) -> Any:
        return None

    def ready(self) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {}

    def observe(self) -> Observation:
        return Observation()


class Unused(InferenceBase):
    pass


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, RecordingRuntime]]:
    config = tmp_path / "modalkit.yaml"
    config.write_text("app_settings:\n  app_prefix: uploads\nmodel_settings:\n  model_entries: {photo: {}}\n")
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))

    class Photos(ModalService):
        inference_implementation = Unused
        model_name = "photo"
        modal_config = ModalConfig()

    runtime = RecordingRuntime()
    yield create_web_endpoints(Photos, PhotoIn, Seen, runtime=runtime), runtime


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://uploads") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


def test_multipart_raw_and_json_give_the_same_input(app: tuple[Any, RecordingRuntime]) -> None:
    web, runtime = app
    multipart = call(
        web, "POST", "/predict", files={"image": ("cat.png", PNG, "image/png")}, data={"top_k": "5", "note": "7"}
    )
    raw = call(
        web, "POST", "/predict?top_k=5&note=7", content=PNG,
        headers={"content-type": "image/png", "content-disposition": 'attachment; filename="cat.png"'},
    )  # fmt: skip
    as_json = {"image": {"data": base64.b64encode(PNG).decode(), "filename": "cat.png", "content_type": "image/png"}}
    json_body = call(web, "POST", "/predict", json={**as_json, "top_k": 5, "note": "7"})
    expected = {"size": len(PNG), "filename": "cat.png", "content_type": "image/png", "top_k": 5, "note": "7"}
    assert multipart.json() == raw.json() == json_body.json() == expected
    assert runtime.items[0] == runtime.items[1] == runtime.items[2]  # a str field keeps "7"; an int field reads 5


def test_a_multipart_batch_is_one_item_per_file_part(app: tuple[Any, RecordingRuntime]) -> None:
    web, _ = app
    files = [("image", (f"{i}.png", PNG[: 100 + i], "image/png")) for i in range(3)]
    answer = call(web, "POST", "/predict_batch", files=files, data={"top_k": "2"})
    assert [item["size"] for item in answer.json()] == [100, 101, 102]
    assert {item["top_k"] for item in answer.json()} == {2}


def test_content_types_a_field_does_not_accept_get_415(app: tuple[Any, RecordingRuntime]) -> None:
    web, runtime = app
    raw = call(web, "POST", "/predict", content=b"hello", headers={"content-type": "text/plain"})
    part = call(web, "POST", "/predict", files={"image": ("a.gif", b"GIF89a", "image/gif")})
    assert raw.status_code == 415 and "image/png" in raw.json()["detail"]
    assert part.status_code == 415 and "image: content type 'image/gif'" in part.json()["detail"]
    assert runtime.items == []  # neither reached the model


def test_too_large_is_413_before_the_body_is_read(app: tuple[Any, RecordingRuntime]) -> None:
    web, _ = app
    read = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", str(50_000_000).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("uploads", 80),
    }  # fmt: skip
    asyncio.run(web(scope, receive, send))
    assert sent[0]["status"] == 413 and read == []  # answered from Content-Length: not one chunk read
    assert "50000000 bytes" in json.loads(sent[1]["body"])["detail"]
    big = call(web, "POST", "/predict", files={"image": ("big.png", PNG * 100, "image/png")})
    assert big.status_code == 413 and "at most 100000" in big.json()["detail"]


def test_an_async_upload_carries_its_queues(app: tuple[Any, RecordingRuntime]) -> None:
    web, runtime = app
    data = {"success_queue": "done", "meta": json.dumps({"id": 7}), "top_k": "1"}
    accepted = call(web, "POST", "/predict_async", files={"image": ("a.png", PNG, "image/png")}, data=data)
    assert accepted.status_code == 202
    job = runtime.jobs[0]
    assert (job.success_queue, job.failure_queue, job.meta, job.message.top_k) == ("done", None, {"id": 7}, 1)
    assert job.message.image.data == PNG
    bad = call(
        web, "POST", "/predict_async", files={"image": ("a.png", PNG, "image/png")}, data={"success_queue": "no spaces"}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "success_queue"]


def test_openapi_shows_the_file_fields(app: tuple[Any, RecordingRuntime]) -> None:
    web, _ = app
    spec = call(web, "GET", "/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"] == {"type": "string", "format": "binary"}
    assert {"application/json", "image/png", "image/jpeg"} <= set(content)
    assert "image/png" not in spec["paths"]["/predict_batch"]["post"]["requestBody"]["content"]
