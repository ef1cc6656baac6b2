"""MiniLM served through `/predict` vs called directly in-process at batch 32.

    python benchmarks/throughput.py [--clients 1 8 32 64] [--seconds 20]

The direct figure is the limit: the model alone, batch 32, no HTTP, no batcher, no processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SENTENCES, closed_loop, free_port, markdown_table, start_server, stop_server, write_section

APP = "examples/minilm/app.py"


def direct_items_per_s(seconds: float, batch_size: int = 32) -> float:
    os.environ.setdefault("MODALKIT_CONFIG", str(ROOT / "examples/minilm/modalkit.yaml"))
    from modalkit.app_loader import import_app

    example = import_app(ROOT / APP)
    model = example.MiniLM("minilm", "models", {})
    batches = [
        [example.EmbedIn(text=t) for t in SENTENCES[i : i + batch_size]] for i in range(0, len(SENTENCES), batch_size)
    ]
    model.predict(batches[0])  # warm
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        done += len(model.predict(batches[i % len(batches)]))
        i += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    direct = direct_items_per_s(args.seconds)
    print(f"direct in-process, batch 32: {direct:,.1f} items/s")

    port = free_port()
    server = start_server(APP, port)
    rows = [["direct in-process (batch 32)", "-", direct, "-", "-", "-", 1.0]]
    try:
        bodies = [{"text": t} for t in SENTENCES]
        url = f"http://127.0.0.1:{port}/predict"
        asyncio.run(closed_loop(url, bodies, 8, 3))  # warm the server
        for clients in args.clients:
            r = asyncio.run(closed_loop(url, bodies, clients, args.seconds))
            rows.append(
                ["modalkit /predict", clients, r["requests_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                 r["requests_per_s"] / direct]
            )  # fmt: skip
            print(f"{clients:>3} clients: {r['requests_per_s']:,.1f} items/s, p99 {r['p99_ms']:.1f} ms, "
                  f"errors {r['errors']}")  # fmt: skip
    finally:
        stop_server(server)

    table = markdown_table(["path", "clients", "items/s", "p50 ms", "p95 ms", "p99 ms", "served/direct"], rows)
    print(table)
    notes = (
        "Load generator: aiohttp, closed loop, in the benchmark process on the same 2 cores as the "
        "server and its container, so served figures include the client's CPU cost. "
        "max_batch_size 32, wait_ms 10 (examples/minilm/modalkit.yaml), one local container."
    )
    write_section("throughput", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
