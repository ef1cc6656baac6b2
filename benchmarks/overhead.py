"""Per-request overhead alone: the echo model (no work) through `POST /predict`, beside a bare FastAPI echo.

    python benchmarks/overhead.py [--clients 1 8 64] [--seconds 15] [--wait-ms 0]

With nothing to compute, latency and throughput are modalkit's own cost: HTTP, validation, request ids, metrics,
tracing, the batcher, the trip to the container process and back. The yardstick, measured in the same run, is
`benchmarks/apps/bare_echo.py`: the same echo as a plain FastAPI route on uvicorn (uvloop, httptools, one worker),
nothing else. A third server, `benchmarks/apps/inline_echo.py`, is the modalkit app with the echo answered in the
server process (no container): it splits modalkit's cost into the web layer and the trip to the container. The
load generator shares the same 2 cores; only the ratios of one run are worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (
    closed_loop,
    free_port,
    markdown_table,
    spawn,
    start_server,
    stop_server,
    wait_until_answers,
    write_section,
)

APP, CONFIG = "benchmarks/apps/echo_app.py", "benchmarks/apps/echo.yaml"
BARE, INLINE = "benchmarks/apps/bare_echo.py", "benchmarks/apps/inline_echo.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--wait-ms", type=int, default=0, help="batch_config.wait_ms of the echo service")
    args = parser.parse_args()

    env = {"MODALKIT_APP_SETTINGS__BATCH_CONFIG__WAIT_MS": str(args.wait_ms)}
    modalkit_port, bare_port, inline_port = free_port(), free_port(), free_port()
    modalkit = start_server(APP, modalkit_port, env, config=CONFIG)
    bare = spawn([sys.executable, BARE, str(bare_port)])
    inline = spawn([sys.executable, INLINE, str(inline_port)], env)
    rows = []
    try:
        wait_until_answers(bare, f"http://127.0.0.1:{bare_port}/health")
        wait_until_answers(inline, f"http://127.0.0.1:{inline_port}/health")
        urls = {
            "modalkit": f"http://127.0.0.1:{modalkit_port}/predict",
            "bare": f"http://127.0.0.1:{bare_port}/predict",
            "inline": f"http://127.0.0.1:{inline_port}/predict",
        }
        bodies = [{"text": f"hello {i}"} for i in range(256)]
        for url in urls.values():
            asyncio.run(closed_loop(url, bodies, 8, 3))  # warm
        for clients in args.clients:
            # Interleaved halves, so that a burst of load from elsewhere falls on every server alike.
            halves: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            for name in [*urls, *reversed(urls)]:
                halves[name].append(asyncio.run(closed_loop(urls[name], bodies, clients, args.seconds / 2)))
            m, b, w = (merged(*halves[name]) for name in urls)
            ratio = m["requests_per_s"] / b["requests_per_s"]
            web_ratio = w["requests_per_s"] / b["requests_per_s"]
            rows.append(
                [
                    clients,
                    m["requests_per_s"],
                    b["requests_per_s"],
                    f"{ratio:.2f}",
                    f"{m['p50_ms']:.2f}",
                    f"{b['p50_ms']:.2f}",
                    f"{m['p50_ms'] - b['p50_ms']:+.2f}",
                    f"{m['p99_ms']:.2f}",
                    f"{b['p99_ms']:.2f}",
                    int(m["errors"] + b["errors"]),
                    w["requests_per_s"],
                    f"{web_ratio:.2f}",
                    f"{w['p50_ms']:.2f}",
                ]
            )
            print(
                f"{clients:>3} clients: modalkit {m['requests_per_s']:,.0f} req/s, bare {b['requests_per_s']:,.0f} "
                f"req/s, ratio {ratio:.2f}; p50 {m['p50_ms']:.2f} vs {b['p50_ms']:.2f} ms; web layer alone "
                f"{w['requests_per_s']:,.0f} req/s ({web_ratio:.2f}, p50 {w['p50_ms']:.2f} ms)",
                flush=True,
            )
    finally:
        stop_server(modalkit)
        stop_server(bare)
        stop_server(inline)
    header = [
        "clients",
        "modalkit req/s",
        "bare req/s",
        "ratio",
        "modalkit p50 ms",
        "bare p50 ms",
        "p50 diff ms",
        "modalkit p99 ms",
        "bare p99 ms",
        "errors",
        "web layer alone req/s",
        "web layer / bare",
        "web layer p50 ms",
    ]
    table = markdown_table(header, rows)
    print(table)
    notes = (
        f"Echo service (`{CONFIG}`: one container, max_batch_size 32, wait_ms {args.wait_ms}) against a bare "
        f"FastAPI echo (`{BARE}`: uvicorn, uvloop, httptools, one worker), measured in the same run, in "
        'interleaved halves. p50 is the whole round trip as the client sees it. "Web layer alone" is the same '
        f"modalkit app with the echo answered in the server process (`{INLINE}`: no batcher, no container): the "
        "difference between it and modalkit is the trip to the container. Load: aiohttp closed loop on the same "
        "2 cores."
    )
    write_section("overhead", f"{table}\n\n{notes}")


def merged(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """Two halves of one measurement: rates summed over their time, percentiles weighted by request count."""
    n1, n2 = first["requests"], second["requests"]
    seconds = n1 / first["requests_per_s"] + n2 / second["requests_per_s"]
    out = {"requests_per_s": (n1 + n2) / seconds, "errors": first["errors"] + second["errors"], "requests": n1 + n2}
    for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"):
        out[key] = (first[key] * n1 + second[key] * n2) / (n1 + n2)
    return out


if __name__ == "__main__":
    main()
