"""The `modalkit` command as a user runs it: `serve --reload` restarts on an edit, `run` fails when an item fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APPS, MODALKIT, ROOT, free_port, wait_for


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answer(url: str, text: str) -> dict[str, object] | None:
    try:
        response = httpx.post(f"{url}/predict", json={"text": text}, timeout=30)
    except httpx.HTTPError:
        return None  # the server is between two lives
    return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes], Path]]:
    """`modalkit serve --reload --access-log --log-level warning` on a copy of the echo app, as app.py."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "app.py").write_text((APPS / "echo_app.py").read_text())
    (folder / "modalkit.yaml").write_text((APPS / "echo.yaml").read_text())
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(tmp_path / "jobs.sqlite3")}
    env.pop("MODALKIT_CONFIG", None)  # the modalkit.yaml beside app.py, as a user's project has it
    cmd = [MODALKIT, "serve", str(folder / "app.py"), "--reload", "--port", str(port)]
    cmd += ["--access-log", "--log-level", "warning"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    yield f"http://127.0.0.1:{port}", folder, process, log
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=120)


def test_reload_restarts_the_server_and_its_containers_on_an_edit(reloading) -> None:
    url, folder, supervisor, log = reloading
    first = wait_for(lambda: answer(url, "hi"), timeout=120)
    assert first["text"] == "hi"
    app = folder / "app.py"
    app.write_text(app.read_text().replace("text=self.prefix + item.text,", "text=self.prefix + item.text.upper(),"))

    second = wait_for(lambda: (a := answer(url, "hi")) and a["text"] == "HI" and a, timeout=120)
    assert second["pid"] != first["pid"]
    wait_for(lambda: not alive(first["pid"]), timeout=60)  # the old container was stopped, not left behind
    output = log.read_text()
    assert "app.py changed; restarting the server" in output
    access = [json.loads(line) for line in output.splitlines() if '"modalkit.access"' in line]
    assert access and access[-1]["route"] == "/predict"  # --access-log shows requests at --log-level warning
    assert "Application startup complete" not in output  # ...which hides the other info lines

    supervisor.terminate()  # as `kill` does: the supervisor stops the server, which stops its container
    assert supervisor.wait(timeout=120) == 0
    wait_for(lambda: not alive(second["pid"]), timeout=60)


def test_run_exits_1_and_counts_the_failed_items(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in [{"text": "a"}, {"txt": "typo"}, {"text": "c"}]) + "\n")
    env = {**os.environ, "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(tmp_path / "jobs.sqlite3")}
    cmd = [MODALKIT, "run", str(APPS / "echo_app.py"), "--config", str(APPS / "echo.yaml")]
    cmd += ["--input", str(source), "--output", str(output)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Error: 1 of 3 items failed" in done.stderr
    assert [("error" in json.loads(line)) for line in output.read_text().splitlines()] == [False, True, False]


def test_a_port_in_use_stops_serve_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [MODALKIT, "serve", str(APPS / "echo_app.py"), "--config", str(APPS / "echo.yaml")]
        env = {**os.environ, "MODALKIT_PORT": str(port)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another with --port or MODALKIT_PORT\n"
    )
