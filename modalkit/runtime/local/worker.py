"""A local container: a process that runs `load_artefacts` once, then serves batches until stopped.

Run by the container pool as `python -m modalkit.runtime.local.worker APP_PATH ATTRIBUTE MODEL_NAME`, or forked
from the container template (`template_process`), which then calls `run`. Frames arrive on stdin and leave on
stdout, and anything the model prints goes to stderr. The server alone decides when a container stops: it ends at
a "stop" frame, at the end of stdin, or when the server dies.
A `StreamingService` loads with `open_local` and serves streams instead of batches (`stream_worker`).
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import IO, Any

import pydantic_core

from modalkit.app_loader import ServiceRef, load_service, user_class
from modalkit.iomodel import reported_error
from modalkit.outcome import Encoded, Failure, Reported
from modalkit.runtime.local import container_logs, frames, stream_worker

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(argv: list[str]) -> int:
    app_path, attribute, model_name = argv
    return run(ServiceRef(app_path, attribute), model_name)


def run(ref: ServiceRef, model_name: str) -> int:
    """The container's whole life, in a process whose stdin and stdout are the server's pipes (spawned, or forked
    from the container template)."""
    _live_and_die_with_the_server()
    frames_in, frames_out = _take_over_stdio()
    container_logs.configure(model_name)
    try:
        service = load_service(ref)
        service_class: Any = user_class(service)
        streaming = stream_worker.is_streaming(service_class)
        loaded: Any = service_class.open_local(model_name) if streaming else _batch_runner(service, model_name)
    except BaseException as exc:
        _send(frames_out, ("load_failed", f"{type(exc).__name__}: {exc}"))
        return 3
    _send(frames_out, ("ready", None))
    if streaming:
        return stream_worker.serve(loaded, frames_in, frames_out)
    run_batch, unhealthy = loaded
    return _serve_batches(run_batch, unhealthy, frames_in, frames_out)


def _batch_runner(service: Any, model_name: str) -> tuple[Callable[[list[Any]], list[Any]], Callable[[], str | None]]:
    """The loaded service's batch function, and its health check (`None`: healthy; else why not)."""
    obj = service(**_parameters(service, model_name))
    run_batch: Callable[[list[Any]], list[Any]] = obj.process_request.local  # bound once: Modal binds per access
    run_batch([])  # the first local call runs @modal.enter: load_artefacts, once
    return run_batch, partial(_unhealthy, obj)


def _unhealthy(obj: Any) -> str | None:
    """Why the model's `health()` says it cannot serve now, or None when it can."""
    check = getattr(getattr(obj, "_model", None), "health", None)
    if check is None:
        return None
    try:
        verdict = check()
    except Exception as exc:
        return f"health() raised {type(exc).__name__}: {exc}"
    if verdict is True or verdict is None:
        return None
    return verdict if isinstance(verdict, str) and verdict else f"health() returned {verdict!r}"


def _serve_batches(
    run_batch: Callable[[list[Any]], list[Any]],
    unhealthy: Callable[[], str | None],
    frames_in: IO[bytes],
    frames_out: IO[bytes],
) -> int:
    for message in _read_ahead(frames_in):
        if message[0] == "stop":
            return 0
        if message[0] == "health":
            _send(frames_out, ("health", unhealthy()))
            continue
        _, items, threads, trace_id = message
        _use_threads(threads)
        started_ns = time.time_ns()
        with container_logs.batch_trace(trace_id):
            results = [_encoded(r) for r in run_batch(items)]
        _send(frames_out, ("results", results, (started_ns, time.time_ns())), fallback_size=len(items))
        if any(isinstance(r, Failure) and r.recycles_container for r in results):
            return 0  # recycled: the server saw why in the results, and waits for this exit to replace it
    return 0


def _read_ahead(stream: IO[bytes]) -> Iterator[Any]:
    """The server's frames until the end of stdin, read and unpickled on a thread of their own: the server sends
    a full batch ahead while one runs, and it is ready when that one ends."""
    read: queue.Queue[Any] = queue.Queue(maxsize=2)

    def reader() -> None:
        try:
            while (message := frames.read_blocking(stream)) is not None:
                read.put(message)
        except BaseException as exc:  # a broken frame ends the container, as it would in the main thread
            read.put(exc)
        read.put(None)

    threading.Thread(target=reader, name="modalkit-frames", daemon=True).start()
    while (message := read.get()) is not None:
        if isinstance(message, BaseException):
            raise message
        yield message


def _live_and_die_with_the_server() -> None:
    """A SIGINT or SIGTERM meant for the server (systemd signals every process of the service) must not kill
    the batch in flight: the server drains its containers, then stops them. A killed server kills them."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore)
    os.register_at_fork(after_in_child=_default_signals)  # processes the model forks keep the usual signals
    if sys.platform == "linux":  # even mid-batch or mid-load, when the end of stdin would not be read yet
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _ignore(signum: int, frame: object) -> None:
    pass  # a handler rather than SIG_IGN: a program the model runs (exec) starts with the default again


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def _use_threads(threads: int) -> None:
    """Follow the pool's share of the cores; only torch can change it after start (OMP_NUM_THREADS cannot)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _encoded(result: Any) -> Any:
    """Outputs leave as JSON: smaller to send, and the server answers with these bytes unchanged."""
    if isinstance(result, Failure):
        return result
    try:
        return (Reported if reported_error(result) else Encoded)(pydantic_core.to_json(result))
    except Exception as exc:
        return Failure("error", f"output is not JSON-serialisable: {type(exc).__name__}: {exc}")


def _take_over_stdio() -> tuple[IO[bytes], IO[bytes]]:
    frames_in = os.fdopen(os.dup(0), "rb")
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a print() in user code must not corrupt the frames
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    return frames_in, frames_out


def _parameters(service: Any, model_name: str) -> dict[str, Any]:
    declared = getattr(user_class(service), "model_name", None)
    return {"model_name": model_name} if type(declared).__name__ == "_Parameter" else {}


def _send(stream: IO[bytes], message: Any, fallback_size: int = 0) -> None:
    try:
        data = frames.encode(message)
    except Exception as exc:  # an output that cannot be pickled fails its batch, not the container
        failure = Failure("error", f"output could not be sent back: {type(exc).__name__}: {exc}")
        data = frames.encode(("results", [failure] * fallback_size, message[2]))
    stream.write(data)
    stream.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
