"""The Modal path of a `StreamingService`, offline: real `modal.App` objects built from a YAML, the service's own
stream code run in this process, and a stand-in only where a chunk would cross the network (`remote_gen.aio`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import modal
import modal.exception
import pytest
from modal._partial_function import _PartialFunctionFlags
from modal_proto import api_pb2

from modalkit import InferenceBase, ModalConfig, StreamingService, create_web_endpoints
from modalkit.app_loader import import_app, user_class
from modalkit.exceptions import ConfigError, NotSupported
from modalkit.inference import _AHEAD
from modalkit.jobs import AsyncRequest
from modalkit.outcome import Failure, http_status
from modalkit.runtime.modal import ModalRuntime, service_shape, with_config_concurrency
from modalkit.service import ModalService
from tests.conftest import APPS
from tests.modal_introspect import definition, raw

YAML = (
    "app_settings:\n  app_prefix: stream-modal\n"
    "  deployment_config: {max_concurrent_inputs: 16}\n"
    "model_settings:\n  model_entries: {m: {}}\n"
)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "modalkit.yaml"
    config.write_text(YAML)
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    return config


@pytest.fixture
def chat(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delitem(sys.modules, "modal_stream_app", raising=False)
    return import_app(APPS / "modal_stream_app.py")


def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    async def run() -> list[Any]:
        return [chunk async for chunk in chunks]

    return asyncio.run(run())


# ---- what the app asks Modal for -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Chat", "AsyncChat"])
def test_a_streaming_class_has_one_generator_method_and_nothing_batched(chat: Any, name: str) -> None:
    service = getattr(chat, name)
    service_fn = service._get_class_service_function()
    info = service_fn.info()
    assert info.method_names == ["stream_request"]
    assert info.batching_info is None

    # What Modal's FunctionCreate request will carry: a generator method, and no batching on the class.
    created = definition(service_fn)
    assert (created["batch_max_size"], created["batch_wait_ms"]) == (None, None)
    method = created["method_definitions"]["stream_request"]
    assert method.function_type == api_pb2.Function.FUNCTION_TYPE_GENERATOR
    assert api_pb2.DATA_FORMAT_GENERATOR_DONE in method.supported_output_formats

    # The class's method partials: stream_request is a generator @modal.method; nothing is @modal.batched.
    partials = raw(service)._method_partials
    assert list(partials) == ["stream_request"]
    stream = partials["stream_request"]
    assert stream.params.is_generator is True
    assert stream.flags & _PartialFunctionFlags.CALLABLE_INTERFACE
    assert not any(p.flags & _PartialFunctionFlags.BATCHED or p.params.batch_max_size for p in partials.values())

    cls = user_class(service)
    assert not hasattr(cls, "process_request")
    assert raw(cls.__dict__["load_artefacts"]).flags & _PartialFunctionFlags.ENTER_POST_SNAPSHOT
    assert service_shape(service) == (name, "streaming")


def test_concurrency_comes_from_the_yaml_unless_the_class_declares_its_own(chat: Any) -> None:
    # Chat has no @modal.concurrent: max_concurrent_inputs: 16 travels with every call, as Cls.with_concurrency.
    assert chat.Chat._get_class_service_function().info().concurrency_info is None
    bound = with_config_concurrency(chat.Chat)
    assert bound is not chat.Chat
    assert raw(bound)._options.max_concurrent_inputs == 16
    runtime = ModalRuntime(chat.Chat, ["m"])
    assert raw(runtime._objects["m"])._cls._options.max_concurrent_inputs == 16

    # AsyncChat's @modal.concurrent(max_inputs=4) is what Modal gets; the YAML's 16 does not override it.
    assert chat.AsyncChat._get_class_service_function().info().concurrency_info.max_inputs == 4
    assert with_config_concurrency(chat.AsyncChat) is chat.AsyncChat
    runtime = ModalRuntime(chat.AsyncChat, ["m"])
    assert raw(runtime._objects["m"])._cls._options.max_concurrent_inputs is None


# ---- ModalRuntime.stream: the web function's side of remote_gen --------------------------------------------------


class RemoteStream:
    """Stands in for `Chat(model_name=...).stream_request` at the network: `remote_gen.aio(item)` is an async
    generator driven by the real service code, each chunk pickled as it would cross from the container."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self.make = make
        self.remote_gen = SimpleNamespace(aio=self._remote_gen)
        self.sent: list[Any] = []
        self.closed: list[Any] = []

    async def _remote_gen(self, item: Any) -> AsyncIterator[Any]:
        try:  # closing the call closes the generator in the container (the test checks the runtime closes it)
            async with contextlib.aclosing(self.make(item)) as chunks:
                async for chunk in chunks:
                    self.sent.append(chunk)
                    yield pickle.loads(pickle.dumps(chunk))
        finally:
            self.closed.append(item)


def runtime_of(service: Any, make: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    runtime = ModalRuntime(service, ["m"])
    remote = RemoteStream(make)
    monkeypatch.setattr(runtime._objects["m"], "stream_request", remote)
    return runtime, remote


def container(chat: Any, name: str = "Chat") -> Any:
    """The container's side: the real class, loaded as `@modal.enter` leaves it."""
    cls: Any = user_class(getattr(chat, name))
    assert issubclass(cls, StreamingService)
    return cls.open_local("m")


@pytest.mark.parametrize("name", ["Chat", "AsyncChat"])
def test_modal_runtime_streams_the_chunks_the_service_makes(
    chat: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, remote = runtime_of(getattr(chat, name), container(chat, name).stream_chunks, monkeypatch)
    assert collect(runtime.stream("m", chat.ChatIn(text="hello streaming world"))) == ["hello", "streaming", "world"]

    rejected = collect(runtime.stream("m", chat.ChatIn(text="one reject two")))
    assert rejected == ["one", Failure("rejected", "this word is refused", 409)]
    assert http_status(rejected[-1]) == 409
    broken = collect(runtime.stream("m", chat.ChatIn(text="one boom")))
    assert broken[0] == "one" and broken[1].cause == "error" and "ValueError: the model broke" in broken[1].detail
    assert [item.text for item in remote.closed] == ["hello streaming world", "one reject two", "one boom"]


def test_a_failure_chunk_ends_the_stream_and_closes_the_remote_generator(
    chat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scripted(item: Any) -> AsyncIterator[Any]:
        yield "a"
        yield Failure("cuda", "container recycled")
        yield "never read"

    runtime, remote = runtime_of(chat.Chat, scripted, monkeypatch)
    assert collect(runtime.stream("m", "x")) == ["a", Failure("cuda", "container recycled")]
    assert remote.closed == ["x"] and "never read" not in remote.sent


def test_a_modal_error_midway_ends_the_stream_as_unavailable(chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lost(item: Any) -> AsyncIterator[Any]:
        yield "a"
        raise modal.exception.ConnectionError("the container went away")

    runtime, _ = runtime_of(chat.Chat, lost, monkeypatch)
    chunks = collect(runtime.stream("m", "x"))
    assert chunks[0] == "a" and chunks[1].cause == "unavailable" and chunks[1].transient
    assert "ConnectionError: the container went away" in chunks[1].detail and len(chunks) == 2


def test_closing_a_stream_whose_call_is_gone_does_not_raise(chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def gone(item: Any) -> AsyncIterator[Any]:
        try:
            while True:
                yield "chunk"
        finally:
            raise modal.exception.ConnectionError("the call is gone")

    runtime, remote = runtime_of(chat.Chat, gone, monkeypatch)

    async def take_one() -> Any:
        chunks = runtime.stream("m", "x")
        first = await anext(chunks)
        await chunks.aclose()
        return first

    assert asyncio.run(take_one()) == "chunk" and remote.closed == ["x"]


@pytest.mark.parametrize("name", ["Chat", "AsyncChat"])
def test_closing_the_stream_early_closes_the_remote_generator_and_the_model(
    chat: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, remote = runtime_of(getattr(chat, name), container(chat, name).stream_chunks, monkeypatch)
    item = chat.ChatIn(text="forever")

    async def take_three() -> list[Any]:
        chunks = runtime.stream("m", item)
        taken = [await anext(chunks) for _ in range(3)]
        await chunks.aclose()
        assert remote.closed == [item]  # closed by the time aclose returns, not when the loop ends
        assert chat.CLOSED == ["forever"]
        return taken

    assert asyncio.run(take_three()) == ["1", "2", "3"]
    # A plain generator runs a bounded way ahead of its reader (the pump's room), and no further once closed.
    made = chat.MADE["forever"]
    assert made[:3] == ["1", "2", "3"] and len(made) <= 3 + 1 + _AHEAD


# sync_call builds its ModalRuntime inside the event loop, where Modal warns about a (local, I/O-free) info()
@pytest.mark.filterwarnings("ignore::modal.exception.AsyncUsageWarning")
def test_submit_and_spawn_on_a_streaming_service_name_the_stream_route(chat: Any) -> None:
    runtime = ModalRuntime(chat.Chat, ["m"])
    with pytest.raises(NotSupported, match=r"Chat is a streaming service.*/predict: use /predict_stream"):
        asyncio.run(runtime.submit("m", chat.ChatIn(text="x")))
    with pytest.raises(NotSupported, match="/predict_async: use /predict_stream"):
        asyncio.run(runtime.spawn("m", AsyncRequest(chat.ChatIn(text="x"))))

    helper = ModalService.sync_call(chat.Chat)  # ModalKit's helper goes through submit

    async def call() -> Any:
        return await helper("m", chat.ChatIn(text="x"))

    with pytest.raises(NotSupported, match="use /predict_stream"):
        asyncio.run(call())


def test_a_batched_service_does_not_stream(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    echo = import_app(APPS / "echo_app.py")
    assert service_shape(echo.EchoService) == ("EchoService", "batched")
    runtime = ModalRuntime(echo.EchoService, ["m"])
    with pytest.raises(NotSupported, match=r"EchoService is a batched service.*/predict_stream: use /predict"):
        collect(runtime.stream("m", echo.EchoIn(text="x")))


# ---- the container's side: open_local and stream_chunks -------------------------------------------------------


@pytest.mark.parametrize("name", ["Chat", "AsyncChat"])
def test_stream_chunks_in_order_and_failures_end_the_stream(
    chat: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = container(chat, name)
    assert service.model_name == "m" and isinstance(service._model, chat.Words if name == "Chat" else chat.AsyncWords)
    assert collect(service.stream_chunks(chat.ChatIn(text="a b c"))) == ["a", "b", "c"]

    assert collect(service.stream_chunks(chat.ChatIn(text="a reject c"))) == [
        "a",
        Failure("rejected", "this word is refused", 409),
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a refused input is not a server error
    broken = collect(service.stream_chunks(chat.ChatIn(text="a boom c")))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["a stream failed"]
    assert broken[:1] == ["a"] and len(broken) == 2
    assert broken[1].cause == "error" and http_status(broken[1]) == 500 and "the model broke" in broken[1].detail
    assert "c" not in chat.MADE["a boom c"] and "c" not in chat.MADE["a reject c"]


@pytest.mark.parametrize("name", ["Chat", "AsyncChat"])
def test_closing_stream_chunks_midway_stops_the_model(chat: Any, name: str) -> None:
    service = container(chat, name)

    async def take_two() -> list[Any]:
        chunks = service.stream_chunks(chat.ChatIn(text="forever"))
        taken = [await anext(chunks), await anext(chunks)]
        await chunks.aclose()
        assert chat.CLOSED == ["forever"]  # the model's generator is closed by the time aclose returns
        made_when_closed.extend(chat.MADE["forever"])
        await asyncio.sleep(0.05)  # a generator left running would go on producing meanwhile
        return taken

    made_when_closed: list[str] = []
    assert asyncio.run(take_two()) == ["1", "2"]
    assert chat.MADE["forever"] == made_when_closed and chat.CLOSED == ["forever"]  # nothing made after the close
    assert made_when_closed[:2] == ["1", "2"] and len(made_when_closed) <= 2 + 1 + _AHEAD  # at most the pump's room


# ---- declaring one -----------------------------------------------------------------------------------------------


class Model(InferenceBase):
    def predict_stream(self, item: Any) -> Any:
        yield item


def test_a_streaming_service_without_config_is_an_error(config_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"NoConfig has no config: add `modal_config = ModalConfig\(\)`"):

        class NoConfig(StreamingService):
            inference_implementation = Model

    with pytest.raises(ConfigError, match=r"Misnamed\.settings: a ModalConfig must be named modal_config"):

        class Misnamed(StreamingService):
            inference_implementation = Model
            settings = ModalConfig()


def test_a_streaming_service_with_a_constructor_is_refused(config_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"WithInit\.__init__: Modal 1\.6 classes take no constructor"):

        class WithInit(StreamingService):
            inference_implementation = Model
            modal_config = ModalConfig()

            def __init__(self) -> None:
                self.ready = True


def test_an_intermediate_base_class_without_config_is_allowed(config_file: Path) -> None:
    class Base(StreamingService):
        pass

    class Leaf(Base):
        inference_implementation = Model
        modal_config = ModalConfig()

    assert "stream_request" not in Base.__dict__ and "load_artefacts" not in Base.__dict__
    assert raw(Leaf.__dict__["stream_request"]).params.is_generator is True
    assert Leaf.modal_config.model_names() == ["m"]


def test_the_web_function_streams_through_remote_gen(chat: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `modal deploy` serves: the web app over `ModalRuntime`, whose only stand-in is `remote_gen.aio`."""
    runtime, remote = runtime_of(chat.Chat, container(chat).stream_chunks, monkeypatch)
    app = create_web_endpoints(chat.Chat, input_model=chat.ChatIn, output_model=chat.ChatIn, runtime=runtime)

    async def post(text: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modal") as client:
            return await client.post("/predict_stream", json={"text": text})

    answer = asyncio.run(post("hello streaming world"))
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text == 'data: "hello"\n\ndata: "streaming"\n\ndata: "world"\n\nevent: done\ndata: {}\n\n'
    assert [item.text for item in remote.closed] == ["hello streaming world"]  # called with remote_gen.aio, closed
    broken = asyncio.run(post("one boom"))
    assert broken.text.startswith('data: "one"\n\nevent: error\ndata: {"detail": "inference failed: ValueError')
