"""Random ids drawn in bulk from urandom: unique, 128 bits, and a forked child never repeats its parent's."""

from __future__ import annotations

import os

from modalkit.ids import random_hex
from modalkit.jobs import new_job_id, new_webhook_id


def test_ids_are_128_bit_hex_and_never_repeat_across_many_pool_refills() -> None:
    ids = [random_hex() for _ in range(5000)] + [new_job_id() for _ in range(500)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert new_webhook_id().startswith("msg_") and len(new_webhook_id()) == 36
    assert len(random_hex(5000)) == 10000  # more than one draw at once


def test_a_forked_child_does_not_repeat_the_ids_its_parent_will_draw() -> None:
    random_hex()  # the pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(random_hex() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1024).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(random_hex() for _ in range(4))
    assert len(child) == 128 and child != parent
    assert not {child[i : i + 32] for i in range(0, 128, 32)} & {parent[i : i + 32] for i in range(0, 128, 32)}
