"""Random ids (request ids, job ids, webhook ids) from the OS's cryptographic source, drawn in bulk.

`os.urandom` is one system call per id otherwise, and on a virtual machine that call costs as much as a
tenth of a small request. The ids are exactly as unguessable: the bytes are urandom's, each used once. A forked
process starts with an empty pool, so it never repeats its parent's ids.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096  # bytes drawn at once: 256 ids of 128 bits


class _Pool:
    def __init__(self) -> None:
        self.bytes = b""
        self.at = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self.lock:
            if self.at + n > len(self.bytes):
                self.bytes, self.at = os.urandom(max(_CHUNK, n)), 0
            start, self.at = self.at, self.at + n
            return self.bytes[start : self.at]

    def forget(self) -> None:
        self.bytes, self.at, self.lock = b"", 0, threading.Lock()


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)


def random_hex(nbytes: int = 16) -> str:
    """`nbytes` random bytes as hex (16: 128 bits, as many as a UUID4 has, in 32 characters)."""
    return _pool.take(nbytes).hex()
