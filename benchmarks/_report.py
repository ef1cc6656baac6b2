"""Shared by the benchmarks: a closed-loop HTTP load, percentiles, and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SENTENCES = [
    f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank at dawn." for i in range(512)
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(url: str, bodies: list[Any], clients: int, seconds: float) -> dict[str, float]:
    """`clients` loops, each sending its next request as soon as the last one answered."""
    # aiohttp, not httpx: at 64 connections httpx's pool costs a whole core on the client side here.
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one_client(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=payloads[i % len(payloads)], headers=headers) as response:
                    await response.read()
                latencies.append(time.perf_counter() - start)
                errors += response.status != 200
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


@contextlib.contextmanager
def config_file(config: str | Path) -> Iterator[None]:
    """MODALKIT_CONFIG set to `config` for the block only, so that servers started later read their own."""
    previous = os.environ.get("MODALKIT_CONFIG")
    os.environ["MODALKIT_CONFIG"] = str(ROOT / config)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MODALKIT_CONFIG"]
        else:
            os.environ["MODALKIT_CONFIG"] = previous


def load_model(app: str | Path, config: str | Path, service: str) -> tuple[ModuleType, Any]:
    """APP's module and the model of its SERVICE, built and warmed in this process as a container builds it."""
    from modalkit.app_loader import import_app, user_class

    with config_file(config):
        module = import_app(ROOT / app)
        cls: Any = user_class(getattr(module, service))
        settings = cls.modal_config.model_settings
        name = cls.default_model_name()
        implementation = cls.inference_implementation
        folder = getattr(implementation, "model_folder_argument", "model_dir")
        model = implementation(
            model_name=name,
            common_settings=dict(settings.common),
            **{folder: settings.local_model_repository_folder},
            **settings.model_entries.get(name, {}),
        )
    model.on_restore()
    model.warmup()
    return module, model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session, so that stop_server can also end the worker processes it starts."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)


def answers(url: str, body: Any = None) -> bool:
    """Whether `url` answers 200: GET, or POST of `body` as JSON when a body is given."""
    try:
        response = httpx.get(url, timeout=2) if body is None else httpx.post(url, json=body, timeout=10)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def wait_until_answers(process: subprocess.Popen[bytes], url: str, body: Any = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url, body):
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            stop_server(process)  # and any workers it left behind
            raise RuntimeError(f"server exited with {process.returncode}" if exited else f"no answer from {url}")
        time.sleep(0.05)


def modalkit_command(app: str, port: int, config: str | None = None) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "modalkit"), "serve", app, "--port", str(port), "--log-level", "warning"]
    return cmd + (["--config", config] if config else [])


def start_server(app: str, port: int, extra_env: dict[str, str] | None = None,
                 config: str | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """`modalkit serve APP` (with `--config CONFIG` if given), once /health answers 200."""
    process = spawn(modalkit_command(app, port, config), extra_env)
    wait_until_answers(process, f"http://127.0.0.1:{port}/health")
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server, then SIGKILL to whatever is left of its process group (its workers)."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section between this benchmark's markers in docs/benchmarks.md."""
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    section = f"<!-- {name}:start -->\n## {name}\n\n`{command}` ({machine})\n\n{body}\n<!-- {name}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nMade by the scripts in `benchmarks/` (`make bench`).\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
