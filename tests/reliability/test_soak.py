"""Soak: the MiniLM example at 80% of its measured saturation throughput, for MODALKIT_SOAK_SECONDS
(20 s in `make test`, 300 s in `make soak`): zero errors, flat memory, no growth in open files."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ROOT, Server, wait_for

SOAK_SECONDS = float(os.environ.get("MODALKIT_SOAK_SECONDS", "20"))
BODIES = [
    json.dumps({"text": f"soak sentence {i}: the quick brown fox jumps over the lazy dog"}).encode() for i in range(256)
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(server: Server) -> dict[str, Any]:
    pids = [server.process.pid, *server.model_health("minilm")["pids"]]
    return {"rss_mib": {p: round(rss_mib(p), 1) for p in pids}, "fds": {p: open_files(p) for p in pids}}


async def load(url: str, rate: float | None, seconds: float, clients: int = 64) -> dict[str, float]:
    """Closed loop when rate is None (to find saturation), else `rate` requests/s with at most `clients` open."""
    done = errors = 0
    gate = asyncio.Semaphore(clients)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int) -> None:
            nonlocal done, errors
            try:
                async with session.post(url, data=BODIES[i % len(BODIES)],
                                        headers={"content-type": "application/json"}) as response:  # fmt: skip
                    await response.read()
                    done += 1
                    errors += response.status != 200
            finally:
                gate.release()

        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while (now := time.perf_counter() - start) < seconds:
            if rate is not None:
                await asyncio.sleep(max(0.0, i / rate - now))
            await gate.acquire()  # closed loop: a new request as soon as one of `clients` answers
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"requests": done, "errors": errors, "per_second": done / elapsed}


def test_soak_at_80_percent_of_saturation(serve) -> None:
    env = {"MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1",
           "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MAX_CONTAINERS": "1"}  # fmt: skip
    server = serve(ROOT / "examples/minilm/app.py", env=env)
    wait_for(lambda: server.model_health("minilm")["ready_containers"] == 1, timeout=120)
    url = f"{server.url}/predict"
    saturation = asyncio.run(load(url, None, 10))
    assert saturation["errors"] == 0
    rate = 0.8 * saturation["per_second"]
    asyncio.run(load(url, rate, 5))  # warm: caches, allocator pools
    before = snapshot(server)
    soak = asyncio.run(load(url, rate, SOAK_SECONDS))
    after = snapshot(server)
    report = {"seconds": SOAK_SECONDS, "saturation_rps": round(saturation["per_second"], 1), "rate_rps": round(rate, 1),
              **soak, "before": before, "after": after}  # fmt: skip
    print("soak:", json.dumps(report))

    assert soak["errors"] == 0
    assert soak["requests"] >= 0.9 * rate * SOAK_SECONDS
    for pid, start in before["rss_mib"].items():
        assert after["rss_mib"][pid] <= start * 1.10 + 25, (pid, start, after["rss_mib"][pid])
    for pid, start in before["fds"].items():
        assert after["fds"][pid] <= start + 4, (pid, start, after["fds"][pid])
