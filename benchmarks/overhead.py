"""Per-request overhead alone: the echo model (no work) through `POST /predict`.

    python benchmarks/overhead.py [--clients 1 8 64] [--seconds 15] [--wait-ms 0]

With nothing to compute, latency and throughput are modalkit's own cost: HTTP, validation, the batcher,
the trip to the container process and back. The load generator shares the same 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import closed_loop, free_port, markdown_table, start_server, stop_server, write_section

APP, CONFIG = "benchmarks/apps/echo_app.py", "benchmarks/apps/echo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--wait-ms", type=int, default=0, help="batch_config.wait_ms of the echo service")
    args = parser.parse_args()

    port = free_port()
    env = {"MODALKIT_APP_SETTINGS__BATCH_CONFIG__WAIT_MS": str(args.wait_ms)}
    server = start_server(APP, port, env, config=CONFIG)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}/predict"
        bodies = [{"text": f"hello {i}"} for i in range(256)]
        asyncio.run(closed_loop(url, bodies, 8, 3))  # warm
        for clients in args.clients:
            r = asyncio.run(closed_loop(url, bodies, clients, args.seconds))
            rows.append([clients, r["requests_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"]])
            print(f"{clients:>3} clients: {r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms")
    finally:
        stop_server(server)
    table = markdown_table(["clients", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows)
    print(table)
    notes = (
        f"Echo service (`{CONFIG}`: one container, max_batch_size 32, wait_ms {args.wait_ms}); p50 is the whole "
        "round trip as the client sees it, so it is the overhead. Load: aiohttp closed loop on the same 2 cores."
    )
    write_section("overhead", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
