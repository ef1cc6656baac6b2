from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent

# One tracer provider for the whole test process, installed before any app is built (an app leaves an
# existing provider alone), so tests/test_telemetry.py can read every span from SPANS.
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)
APPS = Path(__file__).resolve().parent / "apps"
MODALKIT = str(Path(sys.executable).parent / "modalkit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=5).json()  # type: ignore[no-any-return]

    def model_health(self, model: str) -> dict[str, Any]:
        return self.health()["models"][model]  # type: ignore[no-any-return]


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start `modalkit serve APP` as a user would; every server is stopped when the module ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(app: Path, config: Path | None = None, env: dict[str, str] | None = None, wait: bool = True) -> Server:
        port = free_port()
        folder = tmp_path_factory.mktemp("server")
        log = folder / "server.log"
        env = {"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(folder / "jobs.sqlite3"), **(env or {})}
        cmd = [MODALKIT, "serve", str(app), "--port", str(port)]
        if config is not None:
            cmd += ["--config", str(config)]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
        process = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_for(lambda: _ready(url, process, log), timeout=120)
        return Server(url, process, log)

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis on 127.0.0.1:6379. Missing Redis fails the run: these tests never skip."""
    import redis

    url = os.environ.get("MODALKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {url} and is not reachable: {exc}")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
