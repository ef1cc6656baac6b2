"""Async jobs on the echo service: how fast `POST /predict_async` accepts, and how fast jobs finish.

    python benchmarks/async_jobs.py [--jobs 5000] [--clients 64] [--sync-seconds 10]

Sync: the same server's `POST /predict` echo, C clients in a closed loop, half before the jobs and half after
them: the yardstick.
Accepted/s: N submissions from C concurrent clients, each answered 202 once the job is stored (committed).
The ratio is accepted jobs/s over sync requests/s, both measured here, on the one server.
End to end: from the first submission until /health counts every job finished (polled every 20 ms);
afterwards every job is read back with GET /predict_async/{job_id} and must be `succeeded` with its
input echoed. Each run uses a fresh SQLite job store in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import closed_loop, free_port, markdown_table, start_server, stop_server, wait_until_answers, write_section

APP, CONFIG = "benchmarks/apps/echo_app.py", "benchmarks/apps/echo.yaml"


async def run_all(session: aiohttp.ClientSession, clients: int, items: list[Any], call: Any) -> list[Any]:
    """`call(session, item)` for every item, `clients` at a time; results in item order."""
    results: list[Any] = [None] * len(items)
    indices = iter(range(len(items)))

    async def worker() -> None:
        for i in indices:
            results[i] = await call(session, items[i])

    await asyncio.gather(*(worker() for _ in range(clients)))
    return results


async def measure(base: str, jobs: int, clients: int) -> dict[str, Any]:
    async def submit(session: aiohttp.ClientSession, text: str) -> tuple[int, str | None]:
        async with session.post(f"{base}/predict_async", json={"text": text}) as response:
            body = await response.json()
            return response.status, body.get("job_id")

    async def read(session: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
        async with session.get(f"{base}/predict_async/{job_id}") as response:
            return await response.json()  # type: ignore[no-any-return]

    texts = [f"job {i}" for i in range(jobs)]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        started = time.perf_counter()
        accepted = await run_all(session, clients, texts, submit)
        submitted = time.perf_counter()
        stored = sum(status == 202 for status, _ in accepted)
        while True:  # one cheap request per poll instead of one per job
            async with session.get(f"{base}/health") as response:
                counts = (await response.json())["jobs"]
            if counts.get("succeeded", 0) + counts.get("failed", 0) >= stored:
                break
            if time.perf_counter() - submitted > 600:
                raise RuntimeError(f"jobs still unfinished after 600 s: {counts}")
            await asyncio.sleep(0.02)
        finished = time.perf_counter()
        ids = [job_id for _, job_id in accepted]
        views = await run_all(session, clients, ids, read)
    wrong = sum(
        v.get("status") != "succeeded" or v.get("result") != {"text": t} for v, t in zip(views, texts, strict=True)
    )
    return {  # in the order of the table's columns
        "accepted_per_s": jobs / (submitted - started),
        "not_202": jobs - stored,
        "e2e_s": f"{finished - started:.2f}",
        "e2e_per_s": jobs / (finished - started),
        "not_succeeded": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--sync-seconds", type=float, default=10.0, help="how long the sync echo is measured")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(Path(tmp) / "jobs.sqlite3"),
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__MAX_PENDING": str(max(100_000, args.jobs)),
        }
        port = free_port()
        server = start_server(APP, port, env, config=CONFIG)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_answers(server, f"{base}/predict", {"text": "warm"})  # a container is up
            bodies = [{"text": f"sync {i}"} for i in range(256)]
            asyncio.run(closed_loop(f"{base}/predict", bodies, args.clients, 2))  # warm
            # Half before the jobs and half after them, so that a burst of load from elsewhere falls on both.
            before = asyncio.run(closed_loop(f"{base}/predict", bodies, args.clients, args.sync_seconds / 2))
            r = asyncio.run(measure(base, args.jobs, args.clients))
            after = asyncio.run(closed_loop(f"{base}/predict", bodies, args.clients, args.sync_seconds / 2))
        finally:
            stop_server(server)

    sync_per_s = (before["requests"] + after["requests"]) / sum(
        half["requests"] / half["requests_per_s"] for half in (before, after)
    )
    ratio = r["accepted_per_s"] / sync_per_s
    print(f"sync echo {sync_per_s:,.0f} req/s, accepted {r['accepted_per_s']:,.0f} jobs/s: {ratio:.2f}")
    header = [
        "jobs",
        "clients",
        "sync echo req/s",
        "accepted jobs/s",
        "accepted / sync",
        "not 202",
        "end-to-end s",
        "end-to-end jobs/s",
        "not succeeded",
    ]
    accepted, *rest = r.values()
    row = [args.jobs, args.clients, sync_per_s, accepted, f"{ratio:.2f}", *rest]
    table = markdown_table(header, [row])
    print(table)
    notes = (
        "Echo service (benchmarks/apps/echo_app.py: no model, max_batch_size 32, wait_ms 2), one local "
        "container, SQLite job store (WAL) on the local disk; clients are aiohttp in the benchmark process "
        "on the same cores. End to end runs from the first submission to the last job recorded `succeeded`. "
        "Sync echo: `POST /predict` on the same server, half just before the jobs and half just after them, the "
        "same clients in a closed loop. A 202 means the job is committed to the store."
    )
    write_section("async_jobs", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
