"""MiniLM served through `/predict` vs called directly in-process, at every load.

    python benchmarks/throughput.py [--clients 1 4 8 16 32 64] [--seconds 12]

With c clients, each sending its next request when the last is answered, a batch can hold at most
min(c, max_batch_size) items: the limit is the model alone at that batch size (no HTTP, no batcher, no
processes), measured in the same run. Target: served at least 0.90x of it at every c, with the example's YAML
unchanged (max_batch_size 32, wait_ms 10, max_containers 2).
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
MAX_BATCH = 32  # examples/minilm/modalkit.yaml


def direct_items_per_s(seconds: float, batch_size: int = 32) -> float:
    os.environ.setdefault("MODALKIT_CONFIG", str(ROOT / "examples/minilm/modalkit.yaml"))
    from modalkit.app_loader import import_app

    example = import_app(ROOT / APP)
    model = example.MiniLM("minilm", "models", {})
    batches = [
        [example.EmbedIn(text=t) for t in SENTENCES[i : i + batch_size]] for i in range(0, len(SENTENCES), batch_size)
    ]
    model.predict(batches[0])  # warm
    model.predict(batches[1])
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        done += len(model.predict(batches[i % len(batches)]))
        i += 1
    return done / (time.perf_counter() - start)


def containers(url: str) -> int:
    import httpx

    return int(next(iter(httpx.get(f"{url}/health", timeout=10).json()["models"].values()))["containers"])


def inference_seconds(url: str) -> float:
    """The containers' own inference time so far (modalkit_inference_seconds_sum): where served time goes."""
    import httpx

    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("modalkit_inference_seconds_sum"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()

    sizes = sorted({min(c, MAX_BATCH) for c in args.clients})
    direct = {size: direct_items_per_s(args.seconds / 2, size) for size in sizes}
    for size, rate in direct.items():
        print(f"direct in-process, batch {size}: {rate:,.1f} items/s")

    port = free_port()
    server = start_server(APP, port)
    rows = []
    try:
        bodies = [{"text": t} for t in SENTENCES]
        base = f"http://127.0.0.1:{port}"
        asyncio.run(closed_loop(f"{base}/predict", bodies, 8, 3))  # warm the server
        for clients in args.clients:
            asyncio.run(closed_loop(f"{base}/predict", bodies, clients, 2))  # the batcher learns this load (1-2 s)
            busy_before = inference_seconds(base)
            r = asyncio.run(closed_loop(f"{base}/predict", bodies, clients, args.seconds))
            busy = (inference_seconds(base) - busy_before) / args.seconds
            limit = direct[min(clients, MAX_BATCH)]
            ratio = r["requests_per_s"] / limit
            in_container = r["requests_per_s"] / busy if busy else 0.0
            rows.append(
                [clients, r["requests_per_s"], min(clients, MAX_BATCH), limit, f"{ratio:.2f}",
                 "met" if ratio >= 0.9 else "missed", f"{busy:.2f}", f"{in_container / limit:.2f}", r["p50_ms"],
                 r["p99_ms"], containers(base), int(r["errors"])]
            )  # fmt: skip
            print(f"{clients:>3} clients: {r['requests_per_s']:,.1f} items/s ({ratio:.2f}x direct), "
                  f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}")  # fmt: skip
    finally:
        stop_server(server)

    header = ["clients", "served items/s", "direct batch", "direct items/s", "served/direct", "target 0.90",
              "container busy", "model in container/direct", "p50 ms", "p99 ms", "containers", "errors"]  # fmt: skip
    table = markdown_table(header, rows)
    print(table)
    notes = (
        f"Closed loop for {args.seconds:g} s per row after 2 s at the same load, aiohttp load generator in the "
        "benchmark process on the same "
        f"{os.cpu_count()} cores as the server and its containers, so served figures include the client's CPU cost; "
        "direct: the model in the benchmark process at batch min(clients, 32), measured first in the same run. "
        "examples/minilm/modalkit.yaml unchanged: max_batch_size 32, wait_ms 10, max_containers 2; 'containers' is "
        f"how many ran at the end of the row. 1-minute load average at the start: {os.getloadavg()[0]:.1f}. "
        "'container busy': the share of the row's time the containers spent in inference (their own timing, "
        "modalkit_inference_seconds); 'model in container/direct': items/s of that inference time against direct, "
        "so served/direct = container busy x model in container/direct (with one container): the first says what "
        "HTTP, the batcher and the pipes leave of the time, the second how fast the model runs in its container."
    )
    write_section("throughput", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
