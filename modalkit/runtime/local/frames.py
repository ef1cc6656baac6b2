"""Length-prefixed pickle frames: the wire between the server and its container processes."""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import IO, Any

_HEADER = struct.Struct("!I")


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_async(reader: asyncio.StreamReader) -> Any:
    """The next message; raises `asyncio.IncompleteReadError` when the process has gone."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def read_blocking(stream: IO[bytes]) -> Any | None:
    """The next message, or None at end of stream (the server closed the pipe)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))
