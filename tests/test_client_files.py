"""Files in the client (multipart uploads, per the web edge's contract) and in bulk runs (`{"file": path}` lines).

The client runs against a real local HTTP server that echoes the multipart form it received, parsed by Starlette;
bulk runs go through `bulk.run_file` with an in-process stand-in for the runtime."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from modalkit.bulk import run_file
from modalkit.client import AsyncClient, Client, RetryPolicy
from modalkit.files import File
from tests.conftest import free_port

FAST = RetryPolicy(attempts=5, first_delay=0.01, max_delay=0.05)
PNG = b"\x89PNG\r\n\x1a\n fake image"


async def echo_form(request: Request) -> dict[str, Any]:
    """What the server received: the content type, the query, and every part in order."""
    parts: list[dict[str, Any]] = []
    async with request.form() as form:
        for name, part in form.multi_items():
            if isinstance(part, UploadFile):
                data = await part.read()
                parts.append({"name": name, "filename": part.filename, "type": part.content_type, "data": data.hex()})
            else:
                parts.append({"name": name, "text": part})
    media = request.headers["content-type"].partition(";")[0]
    return {"content_type": media, "query": dict(request.query_params), "parts": parts}


def echo_app() -> FastAPI:
    app = FastAPI()
    bodies: list[bytes] = []
    app.state.bodies = bodies

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        bodies.append(await request.body())
        if (
            len(bodies) == 1 and request.query_params.get("model_name") == "flaky"
        ):  # busy once: the retry must send the same body
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "0"})
        if not request.headers["content-type"].startswith("multipart/"):
            return JSONResponse({"content_type": request.headers["content-type"], "json": await request.json()})
        return JSONResponse(await echo_form(request))

    @app.post("/predict_batch")
    async def batch(request: Request) -> JSONResponse:
        return JSONResponse([await echo_form(request)])

    @app.post("/predict_async")
    async def submit(request: Request) -> JSONResponse:
        app.state.submitted = await echo_form(request)
        return JSONResponse({"job_id": "j1"}, status_code=202)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    app = echo_app()
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app
    runner.should_exit = True
    thread.join(timeout=10)


def file_part(name: str, filename: str, content_type: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "filename": filename, "type": content_type, "data": data.hex()}


def test_predict_sends_files_and_plain_fields_as_multipart(server: tuple[str, FastAPI], tmp_path: Path) -> None:
    url, _ = server
    (tmp_path / "cat.png").write_bytes(PNG)
    files = {
        "image": tmp_path / "cat.png",  # a path: its name, and a content type guessed from it
        "raw": b"\x00\x01",  # bytes: named after the field
        "doc": ("notes.txt", b"hello", None),  # a tuple: the type guessed from its filename
        "kept": File(data=b"abc", filename="a.bin", content_type="application/x-thing"),
        "as_str": (None, b"zz", "image/jpeg"),
    }
    data = {"top_k": 3, "label": "cat", "flag": True, "tags": ["a", "b"], "skipped": None}
    with Client(url, retry=FAST) as client:
        echoed = client.predict(data, model_name="m", files={**files, "image": str(tmp_path / "cat.png")})
        assert client.predict(data, files={"image": tmp_path / "cat.png"})["parts"][-1]["filename"] == "cat.png"
    assert echoed["content_type"] == "multipart/form-data"
    assert echoed["query"] == {"model_name": "m"}
    assert echoed["parts"] == [
        {"name": "top_k", "text": "3"},  # not a str: JSON text
        {"name": "label", "text": "cat"},  # a str: as is
        {"name": "flag", "text": "true"},
        {"name": "tags", "text": '["a", "b"]'},
        file_part("image", "cat.png", "image/png", PNG),
        file_part("raw", "raw", "application/octet-stream", b"\x00\x01"),
        file_part("doc", "notes.txt", "text/plain", b"hello"),
        file_part("kept", "a.bin", "application/x-thing", b"abc"),
        file_part("as_str", "as_str", "image/jpeg", b"zz"),
    ]


def test_without_files_the_request_is_json_as_before(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    with Client(url, retry=FAST) as client:
        assert client.predict({"text": "x"}) == {"content_type": "application/json", "json": {"text": "x"}}
        assert client.predict({"text": "x"}, files={})["json"] == {"text": "x"}


def test_a_retry_resends_the_same_multipart_body(server: tuple[str, FastAPI]) -> None:
    url, app = server
    app.state.bodies.clear()
    with Client(url, retry=FAST) as client:
        echoed = client.predict({"n": 1}, model_name="flaky", files={"image": ("a.png", PNG, None)})
        assert client.stats() == {"sent": 2, "succeeded": 1, "failed": 0, "retried": 1}
    # the query is ?model_name=flaky: busy once, then answered
    first, second = app.state.bodies
    assert first == second and PNG in first
    assert echoed["parts"][-1] == file_part("image", "a.png", "image/png", PNG)


def test_predict_batch_repeats_the_one_file_field_with_shared_fields(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    images = [("a.png", b"A", None), ("b.jpg", b"B", None), b"C"]
    with Client(url, retry=FAST) as client:
        (echoed,) = client.predict_batch({"top_k": 2}, files={"image": images})
        (same,) = client.predict_batch([{"top_k": 2}] * 3, files={"image": images})
        with pytest.raises(ValueError, match="shares its plain fields"):
            client.predict_batch([{"top_k": 1}, {"top_k": 2}], files={"image": images[:2]})
        with pytest.raises(ValueError, match="one file field"):
            client.predict_batch({}, files={"image": images, "other": images})
    assert echoed == same
    assert echoed["parts"] == [
        {"name": "top_k", "text": "2"},
        file_part("image", "a.png", "image/png", b"A"),
        file_part("image", "b.jpg", "image/jpeg", b"B"),
        file_part("image", "image", "application/octet-stream", b"C"),
    ]


def test_submit_and_the_async_client_send_queues_and_meta_as_text_parts(server: tuple[str, FastAPI]) -> None:
    url, app = server

    async def scenario() -> Any:
        async with AsyncClient(url, retry=FAST) as client:
            job_id = await client.submit(
                {"top_k": 1}, files={"image": b"X"}, success_queue="done", meta={"doc": 7}, model_name="m"
            )
            assert job_id == "j1"
            (batch,) = await client.predict_batch({}, files={"image": [b"1", b"2"]})
            assert [p["data"] for p in batch["parts"]] == [b"1".hex(), b"2".hex()]
            return await client.predict({"top_k": 5}, files={"image": ("x.png", b"P", "image/png")})

    echoed = asyncio.run(scenario())
    assert echoed["parts"] == [{"name": "top_k", "text": "5"}, file_part("image", "x.png", "image/png", b"P")]
    submitted = app.state.submitted
    assert submitted["query"] == {"model_name": "m"}
    assert submitted["parts"] == [
        {"name": "top_k", "text": "1"},
        {"name": "success_queue", "text": "done"},
        {"name": "meta", "text": '{"doc": 7}'},
        file_part("image", "image", "application/octet-stream", b"X"),
    ]


class PhotoIn(BaseModel):
    image: File
    mask: bytes | None = None
    top_k: int = 3


def test_bulk_lines_naming_files_read_them_and_a_missing_file_fails_only_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "cat.png").write_bytes(PNG)
    (folder / "images" / "mask.bin").write_bytes(b"\x01\x02")
    lines = [
        {"image": {"file": "images/cat.png"}, "top_k": 5},
        {"image": {"file": "images/missing.png"}},
        {"image": {"file": "images/cat.png"}, "mask": {"file": "images/mask.bin"}},
        {"image": {"data": "aGk=", "filename": "hi.txt"}},  # inline base64 JSON still works
        {"top_k": 1},  # no image: a validation error
    ]
    source, output = folder / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    seen: list[PhotoIn] = []

    async def submit(item: PhotoIn) -> dict[str, Any]:
        seen.append(item)
        return {"filename": item.image.filename, "size": len(item.image.data)}

    counts = asyncio.run(run_file(source, output, submit, PhotoIn, window=2))  # type: ignore[arg-type]
    assert counts["done"] == 5 and counts["errors"] == 2
    assert seen[0] == PhotoIn(image=File(data=PNG, filename="cat.png", content_type="image/png"), top_k=5)
    assert seen[1].mask == b"\x01\x02" and seen[1].image.data == PNG
    assert seen[2].image == File(data=b"hi", filename="hi.txt")
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert answers[0] == {"filename": "cat.png", "size": len(PNG)}
    assert answers[1]["error"]["status_code"] == 422
    assert "images/missing.png" in answers[1]["error"]["detail"]
    assert answers[3] == {"filename": "hi.txt", "size": 2}
    assert answers[4]["error"]["status_code"] == 422 and "image" in answers[4]["error"]["detail"]
