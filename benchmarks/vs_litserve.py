"""modalkit vs LitServe vs the model called directly, on the same model, batching and load, at 1 to 64 clients.

    python benchmarks/vs_litserve.py [--models minilm echo] [--clients 1 8 32 64] [--rounds 2] [--seconds 10]

Both servers run the modalkit app's model class through `InferenceBase.run`, with the same max batch
size and batch timeout and one inference process each; one aiohttp closed loop loads them. "direct" is
the model called in this process at batch min(clients, max_batch_size): no HTTP, no batcher, no
processes. The three take turns (modalkit, LitServe, direct, modalkit, ...) so that drift on the
machine hits all of them; each figure is the median over rounds. The figures also go to
docs/img/vs_litserve.json, from which benchmarks/plots.py draws the pictures. `make bench` installs
LitServe and matplotlib first (neither is a modalkit dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (
    ROOT,
    SENTENCES,
    closed_loop,
    free_port,
    load_model,
    markdown_table,
    percentile,
    spawn,
    start_server,
    stop_server,
    wait_until_answers,
    write_section,
)

FIGURES = ROOT / "docs" / "img" / "vs_litserve.json"
SERVERS = ("modalkit", "litserve", "direct")
METRICS = ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")


class Model(NamedTuple):
    app: str
    config: str
    service: str
    input_model: str
    bodies: list[dict[str, str]]


MODELS = {
    "minilm": Model(
        "examples/minilm/app.py",
        "examples/minilm/modalkit.yaml",
        "Embedder",
        "EmbedIn",
        [{"text": s} for s in SENTENCES],
    ),
    "echo": Model(
        "benchmarks/apps/echo_app.py",
        "benchmarks/apps/echo.yaml",
        "EchoService",
        "Text",
        [{"text": f"item {i}"} for i in range(512)],
    ),
}


def throughput_target(clients: int) -> float:
    """Issue 18: modalkit/LitServe items/s at least 1.0 at every level, at least 1.3 from 8 clients up."""
    return 1.3 if clients >= 8 else 1.0


# The machine's cores as torch threads for LitServe's one worker (what modalkit gives its only container).
THREADS = {"OMP_NUM_THREADS": str(os.cpu_count()), "MKL_NUM_THREADS": str(os.cpu_count())}


def start_modalkit(model: Model, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    settings = {
        "BATCH_CONFIG__MAX_BATCH_SIZE": args.max_batch_size,
        "BATCH_CONFIG__WAIT_MS": args.wait_ms,
        "DEPLOYMENT_CONFIG__MIN_CONTAINERS": args.containers,
        "DEPLOYMENT_CONFIG__MAX_CONTAINERS": args.containers,
    }
    env = {f"MODALKIT_APP_SETTINGS__{key}": str(value) for key, value in settings.items()}
    return start_server(model.app, port, env, config=model.config)


def start_litserve(model: Model, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "benchmarks/litserve_server.py", model.app, model.config, model.service, model.input_model]
    cmd += ["--port", str(port), "--max-batch-size", str(args.max_batch_size), "--wait-ms", str(args.wait_ms)]
    cmd += ["--workers", str(args.containers)] + (["--fast-queue"] if args.fast_queue else [])
    process = spawn(cmd, THREADS)
    wait_until_answers(process, f"http://127.0.0.1:{port}/health")
    return process


def served(server: str, model: Model, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Start `server`, wait for its first answer, warm it, run the closed loop at each client count, stop it."""
    port = free_port()
    process = (start_modalkit if server == "modalkit" else start_litserve)(model, port, args)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        wait_until_answers(process, url, model.bodies[0])
        asyncio.run(closed_loop(url, model.bodies, 8, args.warmup))
        return {c: asyncio.run(closed_loop(url, model.bodies, c, args.seconds)) for c in args.clients}
    finally:
        stop_server(process)


def direct(loaded: tuple[Any, Any], model: Model, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """The model called in this process at batch min(c, max_batch_size), each batch size for --direct-seconds.

    Latencies are those an ideal server's clients would see: one call, times clients/batch when more
    clients wait than one batch holds (each waits behind the other clients' batches).
    """
    module, instance = loaded
    inputs = [getattr(module, model.input_model).model_validate(body) for body in model.bodies]
    calls: dict[int, tuple[float, list[float]]] = {}
    for size in sorted({min(c, args.max_batch_size) for c in args.clients}):
        batches = [inputs[i : i + size] for i in range(0, len(inputs) - size + 1, size)]
        latencies: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.direct_seconds:
            began = time.perf_counter()
            instance.run(batches[len(latencies) % len(batches)])
            latencies.append(time.perf_counter() - began)
        calls[size] = (len(latencies) * size / (time.perf_counter() - start), latencies)
    results = {}
    for clients in args.clients:
        size = min(clients, args.max_batch_size)
        items_per_s, latencies = calls[size]
        waits = [latency * clients / size * 1000 for latency in latencies]
        results[clients] = {
            "requests_per_s": items_per_s,
            **{f"p{q}_ms": percentile(waits, q / 100) for q in (50, 95, 99)},
            "errors": 0,
        }
    return results


def measure(args: argparse.Namespace) -> dict[tuple[str, int, str], list[dict[str, float]]]:
    """Every (model, clients, server) measured once per round, the three in turn."""
    runs: dict[tuple[str, int, str], list[dict[str, float]]] = defaultdict(list)
    for name in args.models:
        model = MODELS[name]
        loaded = load_model(model.app, model.config, model.service)
        for r in range(args.rounds):
            for server in SERVERS:
                results = direct(loaded, model, args) if server == "direct" else served(server, model, args)
                for clients, result in results.items():
                    runs[name, clients, server].append(result)
                    figures = f"{result['requests_per_s']:,.1f} items/s, p99 {result['p99_ms']:.1f} ms"
                    print(
                        f"{name} round {r + 1} {server:>8} {clients:>3} clients: {figures}, errors {result['errors']}"
                    )
    return runs


def medians(runs: dict[tuple[str, int, str], list[dict[str, float]]]) -> dict[str, dict[str, dict[int, Any]]]:
    """{model: {server: {clients: {metric: median over rounds, "errors": total}}}}"""
    figures: dict[str, dict[str, dict[int, Any]]] = defaultdict(lambda: defaultdict(dict))
    for (name, clients, server), results in runs.items():
        figures[name][server][clients] = {m: round(statistics.median(r[m] for r in results), 2) for m in METRICS}
        figures[name][server][clients]["errors"] = sum(r["errors"] for r in results)
    return figures


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def tables(figures: dict[str, dict[str, dict[int, Any]]], clients: list[int]) -> str:
    """All figures, then the issue's targets: modalkit/LitServe items/s and p99, met or missed."""
    rows: list[list[Any]] = []
    ratios: list[list[Any]] = []
    for name, by_server in figures.items():
        for c in clients:
            for server in SERVERS:
                result = by_server[server][c]
                rows.append([name, c, server, *(result[m] for m in METRICS), result["errors"]])
            mk, ls, dr = (by_server[server][c] for server in SERVERS)
            throughput, p99 = mk["requests_per_s"] / ls["requests_per_s"], mk["p99_ms"] / ls["p99_ms"]
            target = throughput_target(c)
            versus_direct = mk["requests_per_s"] / dr["requests_per_s"]
            ratios.append([name, c, f"{throughput:.2f}", f"≥ {target:.1f}", met(throughput >= target)])
            ratios[-1] += [f"{p99:.2f}", "≤ 1.0", met(p99 <= 1.0), f"{versus_direct:.2f}"]
    header = ["model", "clients", "server", "items/s", "p50 ms", "p95 ms", "p99 ms", "errors"]
    ratio_header = ["model", "clients", "items/s modalkit/LitServe", "target", "", "p99 modalkit/LitServe", "target"]
    ratio_header += ["", "items/s modalkit/direct"]
    return f"{markdown_table(header, rows)}\n\n{markdown_table(ratio_header, ratios)}"


def notes(args: argparse.Namespace, load: tuple[float, float]) -> str:
    transport = "fast_queue=True (ZeroMQ)" if args.fast_queue else "its default transport (fast_queue=False)"
    return (
        f"LitServe {importlib.metadata.version('litserve')} with {transport}, max_batch_size and batch_timeout "
        f"set on its LitAPI, {args.containers} inference worker(s) (workers_per_device) and as many API server "
        f"processes (its default), {os.cpu_count()} torch threads; modalkit: {args.containers} local "
        f"container(s) (min = max). Both: max_batch_size {args.max_batch_size}, batch timeout {args.wait_ms:g} ms, "
        "the model class and `InferenceBase.run` of the modalkit app, inputs validated with its pydantic model. "
        "direct: the same model object in the benchmark process at batch min(clients, max_batch_size), for "
        f"{args.direct_seconds:g} s per batch size; its latencies are one call's, times clients/batch above "
        f"one batch (the wait of an ideal server's client). Median of {args.rounds} rounds taking turns, each "
        f"{args.seconds:g} s per client count after {args.warmup:g} s of warm-up; load generator as in "
        "`throughput` (aiohttp closed loop in the benchmark process, on the same cores). "
        f"Load average (1 min) on the machine: {load[0]:.2f} before the run, {load[1]:.2f} at its end (its own "
        "load included)."
    )


def pictures(figures: dict[str, dict[str, dict[int, Any]]]) -> str:
    """The section's links to what benchmarks/plots.py draws from FIGURES."""
    return (
        "![items/s vs clients: modalkit, LitServe, direct](img/throughput_vs_clients.png)\n"
        "![p99 latency vs clients: modalkit, LitServe, direct](img/p99_vs_clients.png)\n\n"
        f"Drawn by `benchmarks/plots.py` from [the figures](img/{FIGURES.name}) "
        f"({', '.join(figures)})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["minilm"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="of load per client count and server")
    parser.add_argument("--direct-seconds", type=float, default=5.0, help="per batch size, for direct")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each server's measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=10.0, help="batch timeout for both servers")
    parser.add_argument("--containers", type=int, default=1, help="modalkit containers = LitServe inference workers")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe with fast_queue=True (ZeroMQ)")
    args = parser.parse_args()
    if importlib.util.find_spec("litserve") is None:
        sys.exit("LitServe is not installed here: run `make bench` (it installs litserve into .venv first).")

    load_before = os.getloadavg()[0]
    figures = medians(measure(args))
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    body = tables(figures, args.clients)
    print(body)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        k: getattr(args, k) for k in ("clients", "rounds", "seconds", "max_batch_size", "wait_ms", "containers")
    }
    record: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "load_average_1min": load,
    }
    record |= {"litserve": importlib.metadata.version("litserve"), **settings, "models": figures}
    FIGURES.write_text(json.dumps(record, indent=1) + "\n")
    write_section("vs_litserve", f"{body}\n\n{notes(args, load)}\n\n{pictures(figures)}")


if __name__ == "__main__":
    main()
