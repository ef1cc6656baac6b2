"""A container's death is noticed when it happens: idle or busy, killed or unable to start; and the server's
signals are the server's: a SIGTERM to its process group drains the containers, a SIGKILL takes them along."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APPS, MODALKIT, ROOT, Server, free_port, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"
MIN_ONE = {"MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1"}


def predict(server: Server, text: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"text": text}, timeout=30)


def busy_pid(echo_log: Path) -> int | None:
    """The pid of the echo container whose "sleep:" batch is inside predict, once there is one."""
    busy = Path(f"{echo_log}.busy")
    return int(busy.read_text()) if busy.exists() and busy.read_text() else None


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(call()))
    thread.start()
    return thread, answer


@pytest.fixture
def echo_log(tmp_path: Path) -> Path:
    """ECHO_LOAD_LOG for the echo app: see `busy_pid`."""
    return tmp_path / "loads.txt"


@pytest.fixture
def serve_own_group(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    """`modalkit serve` as a service manager runs it: the leader of its own process group."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> Server:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        store = str(tmp_path / f"{port}.sqlite3")
        full_env = {**os.environ, "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": store, **env}
        cmd = [MODALKIT, "serve", str(ECHO), "--config", str(ECHO_CONFIG), "--port", str(port)]
        output = log.open("wb")
        process = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=output, stderr=output, start_new_session=True)
        started.append(process)
        server = Server(f"http://127.0.0.1:{port}", process, log)
        wait_for(lambda: _answers(server), timeout=120)
        return server

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _answers(server: Server) -> bool:
    if server.process.poll() is not None:
        pytest.fail(f"server exited with {server.process.returncode}:\n{server.log.read_text()[-4000:]}")
    try:
        return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_idle_container_killed_is_replaced_before_the_next_request(serve, echo_log: Path) -> None:
    env = {**MIN_ONE, "MODALKIT_APP_SETTINGS__LIMITS__REQUEST_TIMEOUT_SECONDS": "20", "ECHO_LOAD_LOG": str(echo_log)}
    server = serve(ECHO, ECHO_CONFIG, env=env)
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)
    (pid,) = server.model_health("echo")["pids"]
    os.kill(pid, signal.SIGKILL)
    job = httpx.post(f"{server.url}/predict_async", json={"message": {"text": "job"}}, timeout=10).json()["job_id"]
    # Noticed when it happens, not when the next batch is written to the dead process.
    wait_for(lambda: server.model_health("echo")["restarts"] == {"crash": 1}, timeout=5)

    started = time.monotonic()
    answer = predict(server, "after the kill")
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 10  # the replacement's load, not request_timeout_seconds
    assert answer.json()["pid"] != pid
    assert wait_for(lambda: _finished(server, job), timeout=10)["status"] == "succeeded"  # not `running` for ever


def test_a_sync_request_whose_container_is_killed_mid_batch_gets_503_at_once(serve, echo_log: Path) -> None:
    env = {"MODALKIT_APP_SETTINGS__LIMITS__REQUEST_TIMEOUT_SECONDS": "30", "ECHO_LOAD_LOG": str(echo_log)}
    server = serve(ECHO, ECHO_CONFIG, env=env)
    thread, answer = in_background(lambda: predict(server, "sleep:20"))
    busy = wait_for(lambda: busy_pid(echo_log))
    killed = time.monotonic()
    os.kill(busy, signal.SIGKILL)
    thread.join(timeout=30)
    assert answer and answer[0].status_code == 503
    assert time.monotonic() - killed < 3  # well under request_timeout_seconds (30 s)
    assert "signal 9" in answer[0].json()["detail"]
    wait_for(lambda: server.model_health("echo")["restarts"] == {"crash": 1}, timeout=5)


def test_an_async_job_whose_container_is_killed_mid_batch_is_retried_and_completes(serve, echo_log: Path) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"ECHO_LOAD_LOG": str(echo_log)})
    answer = httpx.post(f"{server.url}/predict_async", json={"message": {"text": "sleep:1"}}, timeout=10)
    job_id = answer.json()["job_id"]
    busy = wait_for(lambda: busy_pid(echo_log))
    os.kill(busy, signal.SIGKILL)

    job = wait_for(lambda: _finished(server, job_id), timeout=20)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2 and job["result"]["pid"] != busy  # retried, on a fresh container
    assert server.model_health("echo")["restarts"] == {"crash": 1}
    jobs = server.health()["jobs"]
    assert jobs["pending"] == 0 and jobs.get("running", 0) == 0  # its dispatcher slot was given back


def _finished(server: Server, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10).json()
    return job if job["status"] in ("succeeded", "failed") else None


def test_a_container_that_cannot_be_spawned_is_retried_with_backoff(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env=MIN_ONE)
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)
    # Out of file descriptors: the server keeps this open connection, and cannot open a pipe for a new process.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        echo = client.get("/health").json()["models"]["echo"]
        limits = resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (3, limits[1]))
        try:
            os.kill(echo["pids"][0], signal.SIGKILL)

            def spawn_failed() -> dict[str, Any] | None:
                model: dict[str, Any] = client.get("/health").json()["models"]["echo"]
                return model if "could not start" in (model["load_error"] or "") else None

            first = wait_for(spawn_failed, timeout=10)
            answer = client.post("/predict", json={"text": "x"})  # answered at once, not at request_timeout_seconds
            assert answer.status_code == 503 and "could not start" in answer.json()["detail"]
            time.sleep(2.0)  # the window over which attempts are counted; nothing to wait for
            attempts = client.get("/health").json()["models"]["echo"]["container_starts"] - first["container_starts"]
        finally:
            resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, limits)
    assert 1 <= attempts <= 2  # retried 1 s, then 2 s, 4 s... apart; without backoff, about 40 in 2 s
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1, timeout=15)
    assert predict(server, "fds are back").status_code == 200


def test_sigterm_to_the_process_group_drains_in_flight_requests(serve_own_group, echo_log: Path) -> None:
    grace = {"MODALKIT_APP_SETTINGS__LOCAL_CONFIG__SHUTDOWN_GRACE_SECONDS": "20"}
    env = {**MIN_ONE, **grace, "ECHO_LOAD_LOG": str(echo_log)}
    server = serve_own_group(env)
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)
    pids = [pid for model in server.health()["models"].values() for pid in model["pids"]]
    calls = [in_background(lambda: predict(server, "sleep:1"))]
    wait_for(lambda: busy_pid(echo_log))
    calls += [in_background(lambda i=i: predict(server, f"queued {i}")) for i in range(7)]
    wait_for(lambda: server.model_health("echo")["queued"] == 7)

    os.killpg(server.process.pid, signal.SIGTERM)  # Ctrl-C in a terminal, systemd, `docker stop`
    for thread, _ in calls:
        thread.join(timeout=30)
    assert [answer[0].status_code for _, answer in calls] == [200] * 8
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)


def test_containers_exit_when_the_server_is_killed(serve, echo_log: Path) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={**MIN_ONE, "ECHO_LOAD_LOG": str(echo_log)})
    wait_for(lambda: all(m["ready_containers"] == 1 for m in server.health()["models"].values()))
    pids = [pid for model in server.health()["models"].values() for pid in model["pids"]]
    thread, _ = in_background(lambda: _ignore_errors(lambda: predict(server, "sleep:60")))
    wait_for(lambda: busy_pid(echo_log))  # one container busy, one idle
    server.process.kill()
    server.process.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)
    thread.join(timeout=30)


def _ignore_errors(call: Callable[[], Any]) -> Any:
    with contextlib.suppress(httpx.HTTPError):
        return call()


def test_a_container_that_keeps_crashing_after_loading_is_replaced_with_backoff(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env=MIN_ONE)
    for crashes in (1, 2):
        pid = wait_for(lambda: server.model_health("echo")["pids"])[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda c=crashes: server.model_health("echo")["restarts"] == {"crash": c}, timeout=5)
    # The first crash is replaced at once; a second within seconds of loading waits 1 s, then 2 s, 4 s...
    wait_for(lambda: "replaced after crash, in 1s" in server.log.read_text(), timeout=5)
    assert "replaced after crash, in 0s" in server.log.read_text()
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1, timeout=10)
