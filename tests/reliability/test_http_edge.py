"""The connection edge of `modalkit serve`: clients that leave, a bounded queue, silent and slow connections,
huge headers, too many connections, bodies that are not JSON, and what `/health` tells a stranger."""

from __future__ import annotations

import asyncio
import json
import resource
import selectors
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from modalkit.config.schema import LimitsConfig
from modalkit.web.body import parse_async
from tests.conftest import APPS, Server, wait_for

ECHO, TALLY, CONFIG = APPS / "echo_app.py", APPS / "tally_app.py", APPS / "echo.yaml"
KEY = "edge-key-5d2b"
LIMITS = "MODALKIT_APP_SETTINGS__LIMITS__"
ONE_CONTAINER = {"MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1"}


@pytest.fixture(scope="module")
def echo(serve) -> Server:
    server: Server = serve(ECHO, CONFIG, env={f"{LIMITS}HEADER_TIMEOUT_SECONDS": "1"})
    return server


def raw_request(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return 1024 * int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def all_closed_by_server(sockets: list[socket.socket], timeout: float) -> None:
    """Wait until the server has closed every one of `sockets` (EOF or reset); fail at the deadline."""
    waiting = selectors.DefaultSelector()
    for sock in sockets:
        waiting.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while waiting.get_map():
        if time.monotonic() > deadline:
            pytest.fail(f"{len(waiting.get_map())} of {len(sockets)} connections still open after {timeout} s")
        for key, _ in waiting.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(65536):
                    continue  # an answer (a 503 or 431) comes before the close
            except OSError:
                pass
            waiting.unregister(sock)


def test_requests_whose_clients_left_never_reach_the_model(serve, tmp_path: Path) -> None:
    tally = tmp_path / "tally.log"
    server = serve(TALLY, CONFIG, env={"TALLY_LOG": str(tally), **ONE_CONTAINER})
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)
    for i in range(50):  # 15 s of model time in all, each abandoned as soon as it is sent
        with socket.create_connection(address(server), timeout=10) as conn:
            conn.sendall(raw_request("/predict", json.dumps({"text": f"sleep:0.3 {i}"}).encode()))
    started = time.monotonic()
    canary = httpx.post(f"{server.url}/predict", json={"text": "canary"}, timeout=30)
    waited = time.monotonic() - started
    assert canary.status_code == 200
    computed = tally.read_text().splitlines()
    assert computed[-1] == "canary"
    # Only what was already in a container ran: the batch running and the one sent ahead to it (max_batch_size 8
    # each); the other abandoned requests were dropped.
    assert len(computed) - 1 <= 2 * 8 + 2, computed
    # So the canary waits for at most those two batches of 0.3 s items (4.8 s), never for all 50 (15 s).
    assert waited < 2 * 8 * 0.3 + 1.5, f"the canary waited {waited:.1f} s behind abandoned work"


def test_the_request_queue_is_bounded_and_answers_503_with_retry_after(serve) -> None:
    batch_of_one = {"MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE": "1"}
    env = {f"{LIMITS}MAX_QUEUED_REQUESTS": "2", **batch_of_one, **ONE_CONTAINER}
    server = serve(ECHO, CONFIG, env=env)
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = (client.post(f"{server.url}/predict", json={"text": f"sleep:1 {i}"}) for i in range(10))
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    ok = [a for a in answers if a.status_code == 200]
    full = [a for a in answers if a.status_code == 503]
    assert 2 <= len(ok) <= 4 and len(ok) + len(full) == 10, [a.status_code for a in answers]
    assert all(a.headers["retry-after"] == "1" and "max_queued_requests" in a.json()["detail"] for a in full)
    assert httpx.post(f"{server.url}/predict", json={"text": "after"}, timeout=10).status_code == 200


def test_silent_and_slow_connections_are_closed_and_a_canary_still_answers(serve) -> None:
    server = serve(ECHO, CONFIG, env={f"{LIMITS}HEADER_TIMEOUT_SECONDS": "1"})
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (1024, 1024))  # as if under `ulimit -n 1024`
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test process holds 1,500 sockets
    silent: list[socket.socket] = []
    try:
        for i in range(1500):
            sock = socket.create_connection(address(server), timeout=10)
            silent.append(sock)
            if i % 2:  # half of them send half a request line, and nothing more
                with suppress(OSError):  # a server out of file descriptors drops what it cannot accept
                    sock.sendall(b"GET /heal")

        def canary() -> bool:
            try:
                return httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        started = time.monotonic()
        wait_for(canary, timeout=15, interval=0.2)
        assert time.monotonic() - started < 3  # room is made: the canary need not wait for the header timeout
        all_closed_by_server(silent, timeout=20)
    finally:
        for sock in silent:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_slowloris_request_is_closed_at_the_header_timeout(echo: Server) -> None:
    with socket.create_connection(address(echo), timeout=0.2) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        closed = False
        while not closed and time.monotonic() - started < 5:
            try:
                conn.sendall(b"x")  # one byte of a header line every 0.2 s: it never ends
                closed = conn.recv(100) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 3, "the connection outlived header_timeout_seconds (1 s)"


def test_a_huge_header_and_too_many_headers_get_431(echo: Server) -> None:
    huge = httpx.get(f"{echo.url}/health", headers={"x-big": "a" * 1_000_000}, timeout=10)
    assert huge.status_code == 431 and "max_header_bytes" in huge.json()["detail"]
    many = b"".join(b"x-h%d: a\r\n" % i for i in range(10_000))  # a raw socket: httpx takes seconds to send these
    with socket.create_connection(address(echo), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 431 ") and b"max_headers" in answer
    assert httpx.get(f"{echo.url}/health", headers={"x-fine": "a" * 1000}, timeout=10).status_code == 200


def test_unfinished_huge_headers_are_cut_off_before_they_grow(echo: Server) -> None:
    before = rss_bytes(echo.process.pid)
    chunk = b"a" * (1 << 20)

    def send_forever(conn: socket.socket) -> None:
        try:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(32):  # 32 MB of one header that never ends
                conn.sendall(chunk)
        except OSError:
            pass  # cut off

    connections = [socket.create_connection(address(echo), timeout=10) for _ in range(8)]
    senders = [threading.Thread(target=send_forever, args=(c,)) for c in connections]
    for sender in senders:
        sender.start()
    try:
        for sender in senders:
            sender.join(timeout=30)
        assert rss_bytes(echo.process.pid) - before < 8 * 2**20
        all_closed_by_server(connections, timeout=10)
    finally:
        for conn in connections:
            conn.close()


def test_past_max_connections_a_silent_connection_makes_room_else_503(serve) -> None:
    server = serve(ECHO, CONFIG, env={f"{LIMITS}MAX_CONNECTIONS": "8"})
    silent = [socket.create_connection(address(server), timeout=10) for _ in range(8)]
    try:
        # A ninth connection (accepted after these) closes the one that has waited longest, and is answered.
        assert _answers(server)
        assert silent[0].recv(100) == b""
        silent[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            silent[1].recv(100)
    finally:
        for conn in silent:
            conn.close()
    busy = []  # connections that have each sent a request (kept alive): nothing to close to make room
    for _ in range(8):
        conn = socket.create_connection(address(server), timeout=10)
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        busy.append(conn)

    def refused() -> httpx.Response | None:
        answer = httpx.get(f"{server.url}/health", timeout=5)
        return answer if answer.status_code == 503 else None

    try:
        answer = wait_for(refused)
        assert answer.headers["retry-after"] == "1" and "max_connections" in answer.json()["detail"]
    finally:
        for conn in busy:
            conn.close()
    wait_for(lambda: _answers(server))


def _answers(server: Server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_nan_and_infinity_in_a_body_are_422(echo: Server) -> None:
    not_json = [
        ("/predict", b'{"text": "a", "score": NaN}'),
        ("/predict", b'{"text": "a", "x": -Infinity}'),
        ("/predict_batch", b'[{"text": "a", "x": Infinity}]'),
    ]
    for path, body in not_json:
        answer = httpx.post(echo.url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
        assert answer.status_code == 422, (path, body)
        detail = answer.json()["detail"][0]
        assert detail["loc"] == ["body"] and "NaN and Infinity" in detail["msg"]
    quoted = httpx.post(f"{echo.url}/predict", json={"text": "NaN"}, timeout=10)  # a string, not a number
    assert quoted.status_code == 200


def test_only_json_bodies_are_accepted(echo: Server) -> None:
    for path in ("/predict", "/predict_batch", "/predict_async"):
        form = httpx.post(echo.url + path, data={"text": "a"}, timeout=10)
        assert form.status_code == 415 and "application/json" in form.json()["detail"], path
        text = httpx.post(echo.url + path, content=b'{"text": "a"}', headers={"content-type": "text/plain"}, timeout=10)
        assert text.status_code == 415, path
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        headers = {"content-type": content_type} if content_type else {}
        fine = httpx.post(f"{echo.url}/predict", content=b'{"text": "a"}', headers=headers, timeout=10)
        assert fine.status_code == 200, content_type


def test_health_shows_container_details_only_with_the_key(serve) -> None:
    env = {"MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY_ENV": "EDGE_KEY", "EDGE_KEY": KEY, **ONE_CONTAINER}
    server = serve(ECHO, CONFIG, env=env)
    stranger = httpx.get(f"{server.url}/health", timeout=5)
    assert stranger.status_code == 200 and stranger.json() == {"status": "ready"}
    assert httpx.get(f"{server.url}/health", headers={"x-api-key": "wrong"}, timeout=5).json() == {"status": "ready"}
    detailed = httpx.get(f"{server.url}/health", headers={"x-api-key": KEY}, timeout=5).json()
    assert {"pids", "load_error", "ready_containers"} <= detailed["models"]["echo"].keys()


def test_big_bodies_are_parsed_off_the_event_loop() -> None:
    limits = LimitsConfig(parse_in_thread_bytes=10)

    async def threads() -> list[str]:
        def where(raw: bytes) -> str:
            return threading.current_thread().name

        return [await parse_async(b"x" * n, limits, where) for n in (10, 11)]

    small, big = asyncio.run(threads())
    assert small == threading.current_thread().name and big.startswith("modalkit-parse")
