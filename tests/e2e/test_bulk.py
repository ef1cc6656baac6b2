"""`modalkit run`: bulk inference over a JSONL file, killed halfway and resumed with nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from modalkit.bulk import completed_lines
from tests.conftest import APPS, MODALKIT, ROOT, wait_for


def run(input_file: Path, output: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(tmp_path / "jobs.sqlite3")}
    cmd = [MODALKIT, "run", str(APPS / "echo_app.py"), "--config", str(APPS / "echo.yaml"),
           "--input", str(input_file), "--output", str(output)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


def test_killed_halfway_then_resumed_without_loss_or_duplicates(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"text": f"sleep:0.02 #{i}"}) for i in range(160)]
    lines[7] = json.dumps({"txt": "a typo"})
    source.write_text("\n".join(lines) + "\n\n")

    first = run(source, output, tmp_path)
    wait_for(lambda: output.exists() and output.read_bytes().count(b"\n") >= 40, timeout=60)
    os.killpg(first.pid, signal.SIGKILL)  # the command and its container, mid-run
    first.wait()
    assert completed_lines(output) < 160

    second = run(source, output, tmp_path)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert b"were already in" in out

    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(answers) == 160
    for i, answer in enumerate(answers):
        if i == 7:
            assert answer["error"]["status_code"] == 422
        else:
            assert answer["text"] == f"sleep:0.02 #{i}"


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    assert completed_lines(output) == 2
    assert output.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_a_runtime_that_keeps_failing_stops_the_run_without_writing_its_lines(tmp_path: Path) -> None:
    """--modal with no Modal account: every call fails for the runtime's reasons, not the items'."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"text": "x"}) + "\n")
    env = {**os.environ, "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": "", "MODAL_SERVER_URL": "http://127.0.0.1:9"}
    cmd = [MODALKIT, "run", str(APPS / "echo_app.py"), "--config", str(APPS / "echo.yaml"),
           "--input", str(source), "--output", str(output), "--modal"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "run again to resume" in result.stderr
    assert completed_lines(output) == 0
