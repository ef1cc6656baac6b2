"""Acceptance: uploads to the served image classifier (`modalkit serve examples/image_classifier/app.py`).

A multipart and a raw upload of a PNG drawn with Pillow give the same prediction; 8 concurrent multipart requests
are batched together; a wrong content type gets 415; a 50 MB upload gets 413 before its body is sent; a corrupt
image in `/predict_batch` fails alone; and the `curl -F` examples of docs/files.md run as written.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT, Server


@pytest.fixture(scope="module")
def server(serve) -> Server:
    return serve(ROOT / "examples/image_classifier/app.py")


def png(shape: str = "square", size: int = 48) -> bytes:
    """A shape drawn with Pillow, as a user's photo would arrive: PNG bytes."""
    image = Image.new("RGB", (size, size), (20, 20, 30))
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        draw.ellipse(box, fill=(230, 200, 40))
    else:
        draw.rectangle(box, fill=(230, 200, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_multipart_and_raw_uploads_give_the_same_prediction(server: Server) -> None:
    image = png()
    multipart = httpx.post(f"{server.url}/predict", files={"image": ("s.png", image, "image/png")}, timeout=60)
    raw = httpx.post(f"{server.url}/predict", content=image, headers={"content-type": "image/png"}, timeout=60)
    assert multipart.status_code == raw.status_code == 200, (multipart.text, raw.text)
    assert multipart.json() == raw.json()
    assert multipart.json()["label"]


def test_eight_concurrent_uploads_are_batched(server: Server) -> None:
    def batches() -> dict[str, int]:
        sizes = httpx.get(f"{server.url}/health", timeout=10).json()["models"]
        return next(iter(sizes.values()))["batch_sizes"]

    before = batches()

    async def eight() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            files = [{"image": (f"{i}.png", png("circle" if i % 2 else "square"), "image/png")} for i in range(8)]
            return await asyncio.gather(*(client.post(f"{server.url}/predict", files=f) for f in files))

    answers = asyncio.run(eight())
    assert all(a.status_code == 200 for a in answers)
    after = batches()
    new = {int(size): after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert sum(size * n for size, n in new.items()) >= 8 and max(new) > 1, new


def test_a_wrong_content_type_gets_415(server: Server) -> None:
    raw = httpx.post(f"{server.url}/predict", content=b"hello", headers={"content-type": "text/plain"}, timeout=30)
    part = httpx.post(f"{server.url}/predict", files={"image": ("a.txt", b"hello", "text/plain")}, timeout=30)
    assert raw.status_code == part.status_code == 415


def test_a_50_mb_upload_gets_413_before_its_body_is_sent(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode())  # and not one byte of the body
        answer = whole_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "52428800 bytes" in answer


def whole_answer(sock: socket.socket) -> str:
    """The head and the whole body of one answer (they may arrive in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_corrupt_image_in_a_batch_fails_alone(server: Server) -> None:
    good = png()
    files = [("image", ("a.png", good, "image/png")), ("image", ("b.png", b"\x89PNG not really", "image/png")),
             ("image", ("c.png", png("circle"), "image/png"))]  # fmt: skip
    answer = httpx.post(f"{server.url}/predict_batch", files=files, timeout=60)
    assert answer.status_code == 200
    first, broken, third = answer.json()
    assert first["label"] and third["label"]
    assert broken["error"]["status_code"] == 422 and "image" in broken["error"]["detail"]


def test_the_curl_examples_of_the_docs_run(server: Server, tmp_path: Path) -> None:
    (tmp_path / "shape.png").write_bytes(png())
    page = (ROOT / "docs/files.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", page, re.S)[0].strip().splitlines()
    assert len(commands) == 3
    answers = []
    for command in commands:
        run = command.replace("http://127.0.0.1:8000", server.url)
        done = subprocess.run(["bash", "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answers.append(httpx.Response(200, content=done.stdout).json())
    assert answers[0] == answers[1] and answers[0]["label"] == answers[2][0]["label"] == answers[2][1]["label"]
