"""File inputs through async jobs and through the Modal boundary, offline.

The job store keeps an input with file fields in binary form: small ones in the row, large ones in a blob file
beside the store, deleted with the job. The Modal path is the real service class, with stand-ins only at
`process_request.remote.aio` / `.spawn.aio`, which pickle what they are given as Modal's transport does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import pickle
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modalkit.app_loader import import_app
from modalkit.config.schema import QueueConfig
from modalkit.exceptions import ServiceUnavailable, StoreFull
from modalkit.files import File
from modalkit.jobs import AsyncRequest
from modalkit.outcome import Failure
from modalkit.runtime.local.dispatcher import JobDispatcher, restored_input, stored_form
from modalkit.runtime.local.job_store import BLOB_THRESHOLD_BYTES, JobStore
from modalkit.runtime.modal import ModalRuntime
from modalkit.sinks.builtin import MemorySink
from modalkit.web import create_web_endpoints
from tests.conftest import APPS


class PhotoIn(BaseModel):
    image: File
    label: str = ""


class TextIn(BaseModel):
    text: str


def photo(size: int, label: str = "p") -> PhotoIn:
    return PhotoIn(image=File(data=os.urandom(size), filename="x.png", content_type="image/png"), label=label)


def store_job(store: JobStore, job_id: str, message: BaseModel, binary: bool = True) -> None:
    store.insert(job_id, "photo", stored_form(message, binary), AsyncRequest(message))


def blob_of(store: JobStore, job_id: str) -> Path:
    return store.path.with_name(store.path.name + ".blobs") / job_id


def columns(store: JobStore, job_id: str) -> tuple[Any, ...]:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT payload, payload_binary, blob_bytes FROM jobs WHERE id = ?", (job_id,)).fetchone()  # type: ignore[no-any-return]


def test_a_small_file_input_is_stored_as_bytes_in_its_row(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    sent = photo(10_000)
    store_job(store, "small", sent)
    payload, binary, blob_bytes = columns(store, "small")
    assert payload == "" and isinstance(binary, bytes) and blob_bytes is None
    assert len(binary) < 10_000 + 200  # the bytes as bytes, not base64 (which would be 13_336)
    assert not blob_of(store, "small").exists()
    job = store.claim("small")
    assert job is not None and job.is_binary and job.blob is None and job.size == len(binary)
    restored = restored_input(PhotoIn, job)
    assert isinstance(restored, PhotoIn) and restored == sent and isinstance(restored.image.data, bytes)


def test_a_large_file_input_is_stored_in_a_blob_file_beside_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    sent = photo(BLOB_THRESHOLD_BYTES + 1)
    store_job(store, "large", sent)
    payload, binary, blob_bytes = columns(store, "large")
    blob = tmp_path / "jobs.sqlite3.blobs" / "large"
    assert payload == "" and binary is None and blob_bytes == blob.stat().st_size > BLOB_THRESHOLD_BYTES
    assert pickle.loads(blob.read_bytes())["image"]["data"] == sent.image.data
    store.close()

    reopened = JobStore(tmp_path / "jobs.sqlite3")  # a restart: the row still finds its file
    assert reopened.resume() == ["large"]
    job = reopened.claim("large")
    assert job is not None and job.blob == blob and job.size == blob_bytes
    assert restored_input(PhotoIn, job) == sent
    assert reopened.pending_bytes() == blob_bytes and reopened.pending_count() == 1


def test_pending_bytes_count_inputs_in_every_form(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("text", "photo", '{"text": "abc"}', AsyncRequest(None))
    store_job(store, "row", photo(1000))
    store_job(store, "file", photo(BLOB_THRESHOLD_BYTES * 2))
    sizes = [columns(store, "row")[1], columns(store, "file")[2]]
    assert store.pending_bytes() == len('{"text": "abc"}') + len(sizes[0]) + sizes[1]


def test_purging_a_job_deletes_its_blob_file_and_its_bytes(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    empty = store.usage()
    store_job(store, "gone", photo(1_000_000))
    store_job(store, "kept", photo(1_000_000))
    full = store.usage()
    blob_bytes = columns(store, "gone")[2] + columns(store, "kept")[2]
    assert full.bytes >= empty.bytes + blob_bytes and full.file_bytes >= empty.file_bytes + blob_bytes
    for job_id, deliver in (("gone", False), ("kept", True)):
        store.claim(job_id)
        store.finish(job_id, "succeeded", {"length": 1}, ttl_seconds=-1, deliver=deliver)
    assert store.purge_expired() == 1  # "kept" still owes its result to a queue
    assert not blob_of(store, "gone").exists() and blob_of(store, "kept").exists()
    assert store.usage().bytes <= full.bytes - columns(store, "kept")[2] + 8192
    store.delivered("kept")
    assert store.purge_expired() == 1
    assert not blob_of(store, "kept").exists()
    assert store.usage().bytes <= empty.bytes + 8192


def test_a_failed_insert_leaves_no_blob_file(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")

    class Refusing:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

    real = store._db
    store._db = Refusing(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store_job(store, "refused", photo(BLOB_THRESHOLD_BYTES * 2))
    store._db = real
    assert list(store.blobs.iterdir()) == []
    assert store.usage().rows == 0 and store.pending_bytes() == 0

    store_job(store, "first", photo(BLOB_THRESHOLD_BYTES * 2))  # a duplicate id never touches the first's file
    first = blob_of(store, "first").read_bytes()
    with pytest.raises(FileExistsError):
        store_job(store, "first", photo(BLOB_THRESHOLD_BYTES * 2))
    assert blob_of(store, "first").read_bytes() == first


def test_blob_files_no_row_names_are_deleted_when_the_store_opens(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store_job(store, "live", photo(BLOB_THRESHOLD_BYTES * 2))
    store.close()
    (store.blobs / "orphan").write_bytes(b"a job killed between its file and its row")
    (store.blobs / ".next.partial").write_bytes(b"half written")
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    assert sorted(f.name for f in reopened.blobs.iterdir()) == ["live"]


def test_an_old_store_with_text_payloads_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # the table as modalkit wrote it before delivery states and binary inputs
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, model_name TEXT NOT NULL, status TEXT NOT NULL,"
            " payload TEXT NOT NULL, success_queue TEXT, failure_queue TEXT, meta TEXT, trace_context TEXT,"
            " attempts INTEGER NOT NULL DEFAULT 0, suspect INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT,"
            " created_at REAL NOT NULL, finished_at REAL, expires_at REAL, delivery_pending INTEGER)"
        )
        db.execute(
            "INSERT INTO jobs (id, model_name, status, payload, created_at) VALUES ('old', 'echo', 'running', ?, 1)",
            ('{"text": "from before"}',),
        )
    store = JobStore(path)
    assert store.resume() == ["old"]
    job = store.claim("old")
    assert job is not None and not job.is_binary and job.payload == '{"text": "from before"}'
    assert restored_input(TextIn, job) == TextIn(text="from before")
    assert store.pending_bytes() == len('{"text": "from before"}')
    assert job.message() == {"text": "from before"}
    store_job(store, "new", photo(BLOB_THRESHOLD_BYTES * 2))  # the migrated store takes binary inputs too
    assert store.resume() == ["old", "new"]


def test_an_input_that_no_longer_validates_or_unpickles_is_rejected(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("stale", "photo", pickle.dumps({"picture": b"renamed field"}), AsyncRequest(None))
    store.insert("garbled", "photo", b"not a pickle", AsyncRequest(None))
    store_job(store, "lost", photo(BLOB_THRESHOLD_BYTES * 2))
    blob_of(store, "lost").unlink()
    for job_id in ("stale", "garbled", "lost"):
        job = store.claim(job_id)
        assert job is not None
        failure = restored_input(PhotoIn, job)
        assert isinstance(failure, Failure) and failure.cause == "rejected", job_id
    assert store.get("lost") is not None and store.get("lost").message() is None  # type: ignore[union-attr]


def test_a_failure_queue_gets_the_file_input_in_its_json_form(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    sent = photo(BLOB_THRESHOLD_BYTES * 2)
    store_job(store, "j", sent)
    job = store.get("j")
    assert job is not None
    message = job.message()
    assert message["image"]["filename"] == "x.png" and isinstance(message["image"]["data"], str)
    assert PhotoIn.model_validate(message) == sent  # resubmittable as it is


def dispatcher(store: JobStore, model: type[BaseModel], **queue: Any) -> JobDispatcher:
    return JobDispatcher(store, {}, model, QueueConfig(**queue), MemorySink(), max_in_flight=4)


def test_the_dispatcher_stores_file_inputs_in_binary_and_others_as_json(tmp_path: Path) -> None:
    async def run() -> None:
        photos = dispatcher(JobStore(tmp_path / "photos.sqlite3"), PhotoIn)
        photo_id = await photos.accept("photo", AsyncRequest(photo(BLOB_THRESHOLD_BYTES * 2)))
        assert columns(photos.store, photo_id)[2] is not None and blob_of(photos.store, photo_id).exists()
        texts = dispatcher(JobStore(tmp_path / "texts.sqlite3"), TextIn)
        text_id = await texts.accept("echo", AsyncRequest(TextIn(text="hi")))
        assert columns(texts.store, text_id) == ('{"text":"hi"}', None, None)  # exactly as before

    asyncio.run(run())


def test_blob_bytes_count_toward_the_store_budget(tmp_path: Path) -> None:
    async def run() -> None:
        jobs = dispatcher(JobStore(tmp_path / "jobs.sqlite3"), PhotoIn, max_store_bytes=4 * 1024 * 1024)
        await jobs.accept("photo", AsyncRequest(photo(1_000_000)))
        with pytest.raises(StoreFull) as refused:  # 1 MB stored, 1 MB kept for its result, 2 MB for this one
            await jobs.accept("photo", AsyncRequest(photo(1_200_000)))
        assert "max_store_bytes" in str(refused.value)
        assert len(list(jobs.store.blobs.iterdir())) == 1

    asyncio.run(run())


def test_a_blob_that_cannot_be_written_refuses_the_job(tmp_path: Path) -> None:
    async def run() -> None:
        jobs = dispatcher(JobStore(tmp_path / "jobs.sqlite3"), PhotoIn)
        jobs.store.blobs.write_text("a file where the blob directory should be")
        with pytest.raises(ServiceUnavailable):
            await jobs.accept("photo", AsyncRequest(photo(BLOB_THRESHOLD_BYTES * 2)))
        assert jobs.store.usage().rows == 0 and jobs.pending == 0

    asyncio.run(run())


# The Modal boundary: the real service class, stand-ins only where Modal would carry the call.


@pytest.fixture
def file_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "file.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: file-test\n  batch_config: {max_batch_size: 4, wait_ms: 5}\n"
        "model_settings:\n  model_entries: {photo: {}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, "file_app", raising=False)
    return import_app(APPS / "file_app.py")


def over_the_wire(value: Any) -> Any:
    """What arrives on the other side of a Modal call: the value pickled and unpickled."""
    return pickle.loads(pickle.dumps(value))


class StandInCall:
    def __init__(self, object_id: str) -> None:
        self.object_id = object_id


def stand_in_service(service: Any, spawned: list[AsyncRequest]) -> Any:
    """Stands in for `PhotoService(model_name=...)`: `remote.aio` runs the real `process_request.local`."""

    def bound(model_name: str) -> Any:
        real = service(model_name=model_name)

        async def remote(item: Any) -> Any:
            (answer,) = real.process_request.local([over_the_wire(item)])
            return over_the_wire(answer)

        async def spawn(request: AsyncRequest) -> StandInCall:
            spawned.append(over_the_wire(request))
            return StandInCall(f"fc-{len(spawned)}")

        return SimpleNamespace(
            process_request=SimpleNamespace(remote=SimpleNamespace(aio=remote), spawn=SimpleNamespace(aio=spawn))
        )

    return bound


def test_file_bytes_reach_the_model_as_bytes_through_modal(file_app: Any) -> None:
    data = os.urandom(300_000) + b"\x00\xff"
    body = {
        "image": {"data": base64.b64encode(data).decode(), "filename": "x.png", "content_type": "image/png"},
        "label": "cat",
    }
    spawned: list[AsyncRequest] = []
    runtime = ModalRuntime(stand_in_service(file_app.PhotoService, spawned), ["photo"], function_call=StandInCall)
    app = create_web_endpoints(file_app.PhotoService, file_app.PhotoIn, file_app.PhotoOut, runtime=runtime)
    with TestClient(app) as client:
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["length"] == len(data)
        assert answer.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert (answer.json()["filename"], answer.json()["content_type"]) == ("x.png", "image/png")

        accepted = client.post("/predict_async", json={"message": body, "success_queue": "done"})
        assert accepted.status_code == 202 and accepted.json()["job_id"] == "fc-1"

        upload = client.post("/predict", data={"label": "cat"}, files={"image": ("x.png", data, "image/png")})
        assert upload.status_code == 200, upload.text
        assert upload.json() == {**answer.json(), "pid": upload.json()["pid"]}
        uploaded_job = client.post("/predict_async", files={"image": ("y.png", data, "image/png")})
        assert uploaded_job.status_code == 202 and uploaded_job.json()["job_id"] == "fc-2"

    request, uploaded = spawned
    assert uploaded.message.image == File(data=data, filename="y.png", content_type="image/png")
    assert isinstance(request.message, file_app.PhotoIn) and request.success_queue == "done"
    image = request.message.image
    assert isinstance(image, File) and isinstance(image.data, bytes) and image.data == data
    assert (image.filename, image.content_type) == ("x.png", "image/png")
    # And in the container, the spawned request runs with its bytes as bytes.
    (result,) = file_app.PhotoService(model_name="photo").process_request.local([file_app.PhotoIn(image=image)])
    assert result.length == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()


def test_a_model_given_a_str_instead_of_bytes_would_fail(file_app: Any) -> None:
    """The app's own check: the guarantee the tests above rely on is real."""
    item = file_app.PhotoIn.model_construct(image=File.model_construct(data="not bytes"), label="", sleep=0.0)
    (result,) = file_app.PhotoService(model_name="photo").process_request.local([item])
    assert isinstance(result, Failure) and "not bytes" in result.detail
