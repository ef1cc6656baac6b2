"""The connection edge of `modalkit serve`: uvicorn's httptools protocol, with the limits a public server needs.

- `limits.header_timeout_seconds`: a request's headers must be complete this long after its first byte (after
  the connection opened, for the first request), else the connection is closed: silent and slowloris clients.
- `limits.max_header_bytes` (request line and header lines) and `limits.max_headers`: 431, counted as the
  bytes arrive, so a header that never ends is cut off before it grows.
- `limits.max_connections` (fewer if `ulimit -n` leaves no room for them): past it, the connection that has
  waited longest for its first request's headers is closed to make room, so silent connections cannot lock
  clients out; when every connection has sent a request, the new one is answered 503 with Retry-After unread.

A refused connection gets its answer, then what the client still sends is read and dropped for a moment
before the close, so the answer is not lost to a TCP reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modalkit.config.schema import LimitsConfig

logger = logging.getLogger("modalkit.http_edge")

_LINGER_S = 2.0  # how long a refused connection is read and dropped before it is closed
_LOG_EVERY_S = 10.0  # a flood of refusals is one warning per period, not one line per connection
_OWN_FILES = 256  # the server's descriptors beside its connections: containers' pipes, the job store, logs


def edge_protocol(limits: LimitsConfig, max_connections: int | None = None) -> type[EdgeProtocol]:
    """The protocol class to give uvicorn as `http=`, holding these limits (`max_connections`: see `fit_open_files`)."""

    class LimitedEdgeProtocol(EdgeProtocol):
        pass

    LimitedEdgeProtocol.limits = limits
    LimitedEdgeProtocol.max_connections = max_connections or limits.max_connections
    LimitedEdgeProtocol.first_waiting = {}
    return LimitedEdgeProtocol


def fit_open_files(max_connections: int) -> int:
    """The connections this process can hold: it raises its soft limit on open files so `max_connections` fit
    beside its own files, or, when `ulimit -n` forbids that, holds fewer (and says so).

    Out of descriptors, a server drops every new connection unseen; below the limit it can still make room.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _OWN_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):
        raised = soft
    if raised >= wanted:
        return max_connections
    allowed = max(1, raised - _OWN_FILES)
    logger.warning(
        "open files are limited to %d (ulimit -n): holding at most %d connections, not limits.max_connections (%d)",
        raised,
        allowed,
        max_connections,
    )
    return allowed


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[LimitsConfig] = LimitsConfig()
    max_connections: ClassVar[int] = LimitsConfig().max_connections
    # Connections whose first request's headers are unfinished, oldest first: the ones to close to make room.
    first_waiting: ClassVar[dict[EdgeProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # from the end of one request to the end of the next one's headers
        self._header_bytes = 0  # received meanwhile: a header that never ends is cut off by this count
        self._chunk_bytes = 0  # the latest read, which may hold a whole header section
        self._header_started: float | None = None  # when the unfinished headers began to arrive
        self._header_timer: asyncio.TimerHandle | None = None  # one per connection, re-armed only when it fires
        self._refusal: tuple[int, str] | None = None  # decided during a parse, answered after it
        self._refused = False  # answered and lingering: what arrives now is dropped unread

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse(503, f"more than {self.max_connections} connections are open (limits.max_connections)")
            return
        self.first_waiting[self] = None
        self._header_started = self.loop.time()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._check_header_time)

    def connection_lost(self, exc: Exception | None) -> None:
        self.first_waiting.pop(self, None)
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._chunk_bytes = len(data)
        if self._in_headers:
            if self._header_started is None:
                self._header_started = self.loop.time()
            self._header_bytes += len(data)
        super().data_received(data)
        if self._refusal is None and self._in_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refusal = (431, self._header_bytes_detail())
        if self._refusal is not None and not self._refused:
            self._refuse(*self._refusal)

    # Parser callbacks. A refusal is answered once the parser has finished the chunk it is reading.
    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._header_started = None
        self._in_headers = False
        self.first_waiting.pop(self, None)
        near_limit = max(self._header_bytes, self._chunk_bytes) > self.limits.max_header_bytes
        self._header_bytes = 0
        if len(self.headers) > self.limits.max_headers:
            self._refusal = (431, f"more than {self.limits.max_headers} header lines (limits.max_headers)")
        elif near_limit and self._header_size() > self.limits.max_header_bytes:
            self._refusal = (431, self._header_bytes_detail())
        else:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is None:
            self._in_headers = True
            super().on_message_complete()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its first request; False if there is none."""
        if not self.first_waiting:
            return False
        oldest = next(iter(self.first_waiting))
        del self.first_waiting[oldest]
        oldest._disarm_header_timer()
        oldest.transport.close()
        return True

    def _header_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)  # ": " and CRLF

    def _header_bytes_detail(self) -> str:
        return f"request headers larger than {self.limits.max_header_bytes} bytes (limits.max_header_bytes)"

    def _check_header_time(self) -> None:
        """Close the connection if its headers are late, else look again when they would be (no timer per request).

        The timer was armed at most a timeout after the latest headers began, so it never fires past their deadline.
        """
        if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed, or now a WebSocket
            self._header_timer = None
            return
        timeout = self.limits.header_timeout_seconds
        waited = 0.0 if self._header_started is None else self.loop.time() - self._header_started
        if waited >= timeout:
            self._header_timer = None
            self.first_waiting.pop(self, None)
            self.transport.close()
        else:
            self._header_timer = self.loop.call_later(timeout - waited, self._check_header_time)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` and close, unless a response is under way (pipelined requests): then only close."""
        self._refused = True
        self.first_waiting.pop(self, None)
        self._disarm_header_timer()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        _refusal_log.add(status, detail)
        body = json.dumps({"detail": detail}).encode()
        retry = b"retry-after: 1\r\n" if status == 503 else b""
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n"
        self.transport.write(STATUS_LINE[status] + head % (len(body), retry) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(_LINGER_S, self.transport.close)


class _RefusalLog:
    """A flood of refusals makes one warning per period, with their number, not one line per connection."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.count = 0
        self.logged_at = float("-inf")

    def add(self, status: int, detail: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= self.period_s:
            logger.warning(
                "refused %d connection(s) since the last report; the latest: %d %s", self.count, status, detail
            )
            self.count, self.logged_at = 0, now


_refusal_log = _RefusalLog(_LOG_EVERY_S)
