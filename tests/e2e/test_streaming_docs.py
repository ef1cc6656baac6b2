"""The examples of docs/streaming.md and docs/openai.md, run as written against the served examples.

The pages assume `modalkit serve examples/chat/app.py` on port 8000 and the MiniLM example on 8001; the test
serves both on free ports and puts their addresses in. Every `curl` block and every `python` block of
docs/openai.md runs (the python block of docs/streaming.md is a sketch with `...` for the model).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Server

DOCS = ROOT / "docs"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def blocks(page: str, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall((DOCS / page).read_text()) if lang == language]


@pytest.fixture(scope="module")
def servers(serve) -> dict[str, Server]:
    return {"8000": serve(ROOT / "examples/chat/app.py"), "8001": serve(ROOT / "examples/minilm/app.py")}


def with_servers(code: str, servers: dict[str, Server]) -> str:
    for port, server in servers.items():
        code = code.replace(f"http://127.0.0.1:{port}", server.url)
    return code


@pytest.mark.parametrize("page", ["streaming.md", "openai.md"])
def test_curl_examples_stream(page: str, servers: dict[str, Server]) -> None:
    commands = blocks(page, "bash")
    assert commands, f"docs/{page} has no curl example"
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", with_servers(command, servers)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        events = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) > 3, done.stdout
        assert "event: done" in done.stdout or events[-1] == "data: [DONE]", done.stdout


def test_openai_python_examples_run(servers: dict[str, Server]) -> None:
    programs = blocks("openai.md", "python")
    assert len(programs) == 2
    for program in programs:
        done = subprocess.run(
            [sys.executable, "-c", with_servers(program, servers)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), "the example prints its answer"
