"""modalkit vs LitServe on the same model, batch size, batch timeout, load generator and clients.

    python benchmarks/vs_litserve.py [--models minilm echo] [--clients 64] [--rounds 2] [--seconds 20]

Servers alternate (modalkit, LitServe, modalkit, LitServe, ...) so that drift on the machine hits both;
each figure is the median over rounds. LitServe runs benchmarks/litserve_server.py, which builds the
model exactly as modalkit does; `make bench` installs LitServe (it is not a modalkit dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (
    SENTENCES,
    closed_loop,
    free_port,
    markdown_table,
    spawn,
    start_server,
    stop_server,
    wait_until_answers,
    write_section,
)


class Model(NamedTuple):
    app: str
    config: str
    service: str
    input_model: str
    bodies: list[dict[str, str]]


MODELS = {
    "minilm": Model("examples/minilm/app.py", "examples/minilm/modalkit.yaml", "Embedder", "EmbedIn",
                    [{"text": s} for s in SENTENCES]),
    "echo": Model("benchmarks/apps/echo_app.py", "benchmarks/apps/echo.yaml", "EchoService", "Text",
                  [{"text": f"item {i}"} for i in range(512)]),
}  # fmt: skip


# One inference process each, with the machine's cores as torch threads (what modalkit gives its only container).
THREADS = {"OMP_NUM_THREADS": str(os.cpu_count()), "MKL_NUM_THREADS": str(os.cpu_count())}


def start_modalkit(model: Model, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    settings = {
        "BATCH_CONFIG__MAX_BATCH_SIZE": args.max_batch_size,
        "BATCH_CONFIG__WAIT_MS": args.wait_ms,
        "DEPLOYMENT_CONFIG__MIN_CONTAINERS": 1,
        "DEPLOYMENT_CONFIG__MAX_CONTAINERS": 1,
    }
    env = {f"MODALKIT_APP_SETTINGS__{key}": str(value) for key, value in settings.items()}
    return start_server(model.app, port, env, config=model.config)


def start_litserve(model: Model, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "benchmarks/litserve_server.py", model.app, model.config, model.service, model.input_model]
    cmd += ["--port", str(port), "--max-batch-size", str(args.max_batch_size), "--wait-ms", str(args.wait_ms)]
    process = spawn(cmd + (["--fast-queue"] if args.fast_queue else []), THREADS)
    wait_until_answers(process, f"http://127.0.0.1:{port}/health")
    return process


SERVERS = {"modalkit": start_modalkit, "litserve": start_litserve}


def one_round(server: str, model: Model, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Start `server`, wait for its first answer, warm it, run the closed loop at each client count, stop it."""
    port = free_port()
    process = SERVERS[server](model, port, args)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        wait_until_answers(process, url, model.bodies[0])
        asyncio.run(closed_loop(url, model.bodies, 8, args.warmup))
        return {c: asyncio.run(closed_loop(url, model.bodies, c, args.seconds)) for c in args.clients}
    finally:
        stop_server(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--clients", type=int, nargs="+", default=[64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=10.0, help="batch timeout for both servers")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe with fast_queue=True (ZeroMQ)")
    args = parser.parse_args()
    if importlib.util.find_spec("litserve") is None:
        sys.exit("LitServe is not installed here: run `make bench` (it installs litserve into .venv first).")

    runs: dict[tuple[str, int, str], list[dict[str, float]]] = defaultdict(list)
    for name in args.models:
        for r in range(args.rounds):
            for server in SERVERS:
                for clients, result in one_round(server, MODELS[name], args).items():
                    runs[name, clients, server].append(result)
                    print(f"{name} round {r + 1} {server:>8} {clients:>3} clients: {result['requests_per_s']:,.1f} "
                          f"items/s, p99 {result['p99_ms']:.1f} ms, errors {result['errors']}")  # fmt: skip

    def median(key: tuple[str, int, str], metric: str) -> float:
        return statistics.median(r[metric] for r in runs[key])

    rows: list[list[Any]] = []
    ratios: list[list[Any]] = []
    for name in args.models:
        for clients in args.clients:
            for server in SERVERS:
                key = (name, clients, server)
                medians = [median(key, metric) for metric in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")]
                rows.append([name, clients, server, *medians, sum(r["errors"] for r in runs[key])])
            mk, ls = (name, clients, "modalkit"), (name, clients, "litserve")
            throughput = median(mk, "requests_per_s") / median(ls, "requests_per_s")
            ratios.append([name, clients, f"{throughput:.2f}", f"{median(mk, 'p99_ms') / median(ls, 'p99_ms'):.2f}"])

    table = markdown_table(["model", "clients", "server", "items/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows)
    ratio_table = markdown_table(["model", "clients", "items/s modalkit/litserve", "p99 modalkit/litserve"], ratios)
    print(f"{table}\n\n{ratio_table}")
    notes = (
        f"LitServe {importlib.metadata.version('litserve')}"
        f"{' with fast_queue=True' if args.fast_queue else ' with its default transport (fast_queue=False)'}, "
        "one inference worker and one API server process; modalkit: one local container (min = max = 1). Both: "
        f"{os.cpu_count()} torch threads, "
        f"max_batch_size {args.max_batch_size}, batch timeout {args.wait_ms:g} ms, the model class and "
        "`InferenceBase.run` of the modalkit app, inputs validated with its pydantic model. "
        f"Median of {args.rounds} alternating rounds of {args.seconds:g} s after {args.warmup:g} s of warm-up; "
        "load generator as in `throughput` (aiohttp closed loop in the benchmark process, same cores)."
    )
    write_section("vs_litserve", f"{table}\n\n{ratio_table}\n\n{notes}")


if __name__ == "__main__":
    main()
