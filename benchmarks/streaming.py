"""The chat example streamed through `POST /predict_stream` vs `predict_stream` called directly in-process.

    python benchmarks/streaming.py [--streams 1 16] [--tokens 64] [--seconds 10] [--rounds 3]

Each client streams one answer after another (a closed loop) for `--seconds`: `--tokens` tokens, temperature
0.8, seed = the client's number. Time to first token is from sending the request (calling `predict_stream`)
to the first chunk; tokens/s counts every token every client received. Direct is the model alone, loaded in this
process, one thread per client, as the server's container runs its streams: no HTTP, no SSE, no processes.
Targets: time to first token (median) within 10 ms of direct, tokens/s at least 0.9x direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, free_port, markdown_table, percentile, start_server, stop_server, write_section

APP = "examples/chat/app.py"
CONFIG = ROOT / "examples/chat/modalkit.yaml"
TTFT_SLACK_MS = 10.0
TOKENS_RATIO = 0.9


class EventStream:
    """Server-sent events from bytes as they arrive, in pieces of any size: `feed(data)` gives each whole
    event as (event, data), `event` being "message" when the server names none."""

    def __init__(self) -> None:
        self._pending = b""
        self._event = "message"
        self._data: list[str] = []

    def feed(self, data: bytes) -> Iterator[tuple[str, str]]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r").decode()
            if not line:  # a blank line ends the event
                if self._data:
                    yield self._event, "\n".join(self._data)
                self._event, self._data = "message", []
            elif not line.startswith(":"):  # a line starting with a colon is a comment
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)


@dataclass
class Tally:
    """What the clients of one run saw."""

    first_token_s: list[float] = field(default_factory=list)
    tokens: int = 0
    streams: int = 0
    errors: int = 0
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stream_done(self, first_token_s: float | None, tokens: int, ok: bool) -> None:
        with self.lock:
            self.streams += 1
            self.tokens += tokens
            self.errors += not ok
            if first_token_s is not None:
                self.first_token_s.append(first_token_s)

    def figures(self) -> dict[str, float]:
        ttft = self.first_token_s or [float("nan")]
        return {
            "ttft_p50_ms": percentile(ttft, 0.50) * 1000,
            "ttft_p95_ms": percentile(ttft, 0.95) * 1000,
            "ttft_mean_ms": statistics.fmean(ttft) * 1000,
            "tokens_per_s": self.tokens / self.elapsed,
            "streams": self.streams,
            "errors": self.errors,
        }


def body(client: int, tokens: int) -> dict[str, Any]:
    return {"prompt": "The sea", "max_tokens": tokens, "temperature": 0.8, "seed": client}


def load_direct() -> Any:
    """The chat model, loaded in this process as a container loads it."""
    os.environ.setdefault("MODALKIT_CONFIG", str(CONFIG))
    from modalkit.app_loader import import_app

    example = import_app(ROOT / APP)
    entry = example.config.model_settings.model_entries["tiny-chat"]
    model = example.TinyChat("tiny-chat", "models", {}, **entry)
    model.warmup()
    return example, model


def direct(tally: Tally, example: Any, model: Any, clients: int, tokens: int, seconds: float) -> None:
    """`clients` threads, each calling `predict_stream` in a loop until the time is up."""
    deadline = time.perf_counter() + seconds

    def one_client(client: int) -> None:
        item = example.ChatIn(**body(client, tokens))
        while time.perf_counter() < deadline:
            started, first, count = time.perf_counter(), None, 0
            for _ in model.predict_stream(item):
                if first is None:
                    first = time.perf_counter() - started
                count += 1
            tally.stream_done(first, count, count == tokens)

    started = time.perf_counter()
    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.elapsed += time.perf_counter() - started


async def served(tally: Tally, url: str, clients: int, tokens: int, seconds: float) -> None:
    """`clients` aiohttp clients, each reading one SSE answer after another until the time is up."""
    import aiohttp

    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one_client(client: int) -> None:
            payload = json.dumps(body(client, tokens)).encode()
            while time.perf_counter() < deadline:
                started, first, count, ended = time.perf_counter(), None, 0, None
                async with session.post(url, data=payload, headers=headers) as response:
                    events = EventStream()
                    async for data in response.content.iter_any():
                        for event, _ in events.feed(data):
                            if event == "message":
                                if first is None:
                                    first = time.perf_counter() - started
                                count += 1
                            else:
                                ended = event
                ok = response.status == 200 and ended == "done" and count == tokens
                tally.stream_done(first, count, ok)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        tally.elapsed += time.perf_counter() - started


HEADER = [
    "path",
    "streams",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "tokens/s",
    "TTFT p50 vs direct ms",
    "tokens/s vs direct",
    "answers",
    "errors",
]


def row(path: str, clients: int, figures: dict[str, float], ttft_gap: str, ratio: str) -> list[Any]:
    numbers = [figures[k] for k in ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s")]
    return [path, clients, *numbers, ttft_gap, ratio, int(figures["streams"]), int(figures["errors"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="direct and served take turns, this many times")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    loading = time.perf_counter()
    example, model = load_direct()
    load_s = time.perf_counter() - loading  # the example trains at load: this is what its container's start costs
    port = free_port()
    server = start_server(APP, port, config=str(CONFIG))
    baseline = {clients: Tally() for clients in args.streams}
    results = {clients: Tally() for clients in args.streams}
    try:
        url = f"http://127.0.0.1:{port}/predict_stream"
        asyncio.run(served(Tally(), url, 4, args.tokens, 3))  # the first stream starts the container; then warm
        for clients in args.streams:  # in turns, so that both paths see the same machine
            for _ in range(args.rounds):
                direct(baseline[clients], example, model, clients, args.tokens, args.seconds / args.rounds)
                asyncio.run(served(results[clients], url, clients, args.tokens, args.seconds / args.rounds))
            print(f"{clients:>2} streams: direct {baseline[clients].figures()}, served {results[clients].figures()}")
    finally:
        stop_server(server)

    rows, verdicts = [], []
    for clients in args.streams:
        d, s = baseline[clients].figures(), results[clients].figures()
        ttft_gap = s["ttft_p50_ms"] - d["ttft_p50_ms"]
        ratio = s["tokens_per_s"] / d["tokens_per_s"]
        rows.append(row("direct in-process", clients, d, "-", "-"))
        rows.append(row("modalkit /predict_stream", clients, s, f"{ttft_gap:+.1f}", f"{ratio:.2f}x"))
        ttft_met, ratio_met = ttft_gap <= TTFT_SLACK_MS, ratio >= TOKENS_RATIO
        verdicts.append(
            f"{clients} stream{'s' * (clients > 1)}: first token {'met' if ttft_met else 'missed'}, "
            f"tokens/s {'met' if ratio_met else 'missed'}"
        )
    table = markdown_table(HEADER, rows)
    print(table)
    per_token = 1000 / baseline[1].figures()["tokens_per_s"] if 1 in baseline else None
    notes = (
        f"Targets: time to first token (median) within {TTFT_SLACK_MS:.0f} ms of direct, tokens/s at least "
        f"{TOKENS_RATIO}x direct; {'; '.join(verdicts)}. "
        f"Each answer is {args.tokens} tokens (one character each, so one SSE event each), temperature 0.8, "
        f"seed = the client's number; closed loop for {args.seconds:.0f} s per row, in {args.rounds} turns of "
        "direct then served. "
        + (f"One stream alone: {per_token:.1f} ms per token. " if per_token else "")
        + "Direct: `TinyChat.predict_stream` in the benchmark process, one thread per stream. Served: `modalkit "
        "serve examples/chat/app.py` (one container, `max_concurrent_inputs: 16`), aiohttp clients reading the "
        "event stream, in the benchmark process on the same 2 cores as the server and its container, so served "
        f"figures include the client's CPU cost. Loading the model (it trains at load) took {load_s:.2f} s. "
        f"1-minute load average at the start: {load:.1f}."
    )
    write_section("streaming", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
