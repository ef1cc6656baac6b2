"""The image classifier served through `POST /predict` with multipart uploads vs called directly in-process.

    python benchmarks/images.py [--clients 32] [--batch 16] [--sizes 128 512] [--seconds 10] [--rounds 2]

Each client uploads one PNG after another (a closed loop): an aiohttp `FormData` with the PNG as a file part
named `image` (content type image/png). Direct is the same work without the server: `ShapeClassifier.run` on
batches of 32 `ImageIn`s holding the same PNG bytes, Pillow decoding them in `preprocess`, as the container does.
The images are drawn by the example's own generator at each `--sizes` (PNG, a few KB to tens of KB).
Target: served images/s at least 0.9x direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, free_port, markdown_table, percentile, start_server, stop_server, write_section

APP = "examples/image_classifier/app.py"
CONFIG = ROOT / "examples/image_classifier/modalkit.yaml"
BATCH = 32
TARGET = 0.9
RAW = {"content-type": "image/png"}


def load_direct() -> tuple[ModuleType, Any]:
    """The example module and its model, loaded in this process as a container loads it."""
    os.environ.setdefault("MODALKIT_CONFIG", str(CONFIG))
    from modalkit.app_loader import import_app

    example = import_app(ROOT / APP)
    entry = example.config.model_settings.model_entries["shapes"]
    model = example.ShapeClassifier("shapes", "models", {}, **entry)
    model.warmup()
    return example, model


def pngs(example: ModuleType, size: int, count: int = 160) -> list[tuple[str, bytes]]:
    """`count` PNGs of `size` x `size`, the shapes in turn, each with its label."""
    shapes = [example.SHAPES[i % len(example.SHAPES)] for i in range(count)]
    return [(shape, example.sample_png(shape, seed=i, size=size)) for i, shape in enumerate(shapes)]


def direct_images_per_s(example: ModuleType, model: Any, images: list[tuple[str, bytes]], seconds: float) -> float:
    """`model.run` on batches of BATCH uploads, as `process_request` calls it, for `seconds`."""
    items = [
        example.ImageIn(image=example.File(data=data, filename=f"{i}.png", content_type="image/png"))
        for i, (_, data) in enumerate(images)
    ]
    batches = [items[i : i + BATCH] for i in range(0, len(items) - BATCH + 1, BATCH)]
    model.run(batches[0])  # warm
    done, i, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        outputs = model.run(batches[i % len(batches)])
        done += sum(isinstance(o, example.ImageOut) for o in outputs)
        i += 1
    return done / (time.perf_counter() - started)


def upload(data: bytes, name: str) -> Any:
    """The multipart body of one `/predict`: the PNG as the file part `image`."""
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    return form


async def served(
    url: str, images: list[tuple[str, bytes]], clients: int, seconds: float, raw: bool = False
) -> dict[str, float]:
    """`clients` aiohttp clients uploading one PNG after another for `seconds`, as multipart bodies (or, `raw`,
    as the PNG bytes themselves with content type image/png); answers checked against the drawn labels."""
    import aiohttp

    latencies: list[float] = []
    errors = wrong = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one_client(offset: int) -> None:
            nonlocal errors, wrong
            i = offset
            while time.perf_counter() < deadline:
                label, data = images[i % len(images)]
                start = time.perf_counter()
                body = data if raw else upload(data, f"{i}.png")
                async with session.post(url, data=body, headers=RAW if raw else None) as response:
                    answer = await response.json(content_type=None)
                latencies.append(time.perf_counter() - start)
                if response.status != 200:
                    errors += 1
                else:
                    wrong += answer["label"] != label
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "requests": len(latencies),
        "errors": errors,
        "wrong": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--batch",
        type=int,
        default=16,
        help="max_batch_size served, and the direct batch (half the clients: one "
        "batch runs while the next fills; at one batch of all the clients the model idles between batches)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="PNG width and height")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="direct and served take turns, this many times")
    parser.add_argument("--no-raw", dest="raw", action="store_false", help="skip the raw-body rows")
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch

    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    loading = time.perf_counter()
    example, model = load_direct()
    load_s = time.perf_counter() - loading  # the CNN trains at load: this is what its container's start costs
    started = time.perf_counter()
    batch = [example.ImageIn(image=example.File(data=d)) for _, d in pngs(example, 32, BATCH)]
    runs = 50
    for _ in range(runs):
        model.run(batch)
    per_batch_ms = (time.perf_counter() - started) / runs * 1000
    port = free_port()
    server = start_server(APP, port, {"MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE": str(BATCH)}, str(CONFIG))
    url = f"http://127.0.0.1:{port}/predict"
    rows, verdicts = [], []
    try:
        for size in args.sizes:
            images = pngs(example, size)
            asyncio.run(served(url, images, args.clients, 2))  # warm
            direct, results, raw = [], [], []
            for _ in range(args.rounds):  # in turns, so that both paths see the same machine
                direct.append(direct_images_per_s(example, model, images, args.seconds / args.rounds))
                results.append(asyncio.run(served(url, images, args.clients, args.seconds / args.rounds)))
                if args.raw:
                    raw.append(asyncio.run(served(url, images, args.clients, args.seconds / args.rounds, raw=True)))
            d = statistics.fmean(direct)
            png_kb = statistics.fmean(len(data) for _, data in images) / 1024
            rows.append([f"direct in-process (batch {BATCH})", size, png_kb, "-", d, "-", "-", "-", "-"])
            for path, runs in (("modalkit /predict, multipart", results), ("modalkit /predict, raw body", raw)):
                if runs:
                    s = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
                    rows.append(
                        [path, size, png_kb, args.clients, s["images_per_s"], s["p50_ms"], s["p99_ms"],
                         f"{s['images_per_s'] / d:.2f}x", f"{int(s['errors'])} / {int(s['wrong'])}"]
                    )  # fmt: skip
            ratio = statistics.fmean(r["images_per_s"] for r in results) / d
            verdicts.append(f"{size}x{size} multipart: {ratio:.2f}x, {'met' if ratio >= TARGET else 'missed'}")
            print(f"{size}x{size}: direct {d:,.0f} images/s; " + "; ".join(f"{r[0]} {r[4]:,.0f}" for r in rows[-3:]))
    finally:
        stop_server(server)

    header = ["path", "image px", "PNG KB", "clients", "images/s", "p50 ms", "p99 ms", "served/direct",
              "errors / wrong"]  # fmt: skip
    table = markdown_table(header, rows)
    print(table)
    notes = (
        f"Target: served at least {TARGET}x direct; {'; '.join(verdicts)}. "
        f"Direct: `ShapeClassifier.run` on batches of {BATCH} uploads in the benchmark process (Pillow decodes in "
        f"`preprocess`, one forward pass per batch; {per_batch_ms:.1f} ms per batch of {BATCH} 32x32 PNGs). "
        f"Served: `modalkit serve {APP}` (one container, max_batch_size {BATCH}, wait_ms 10), "
        f"{args.clients} aiohttp clients in a closed loop, each request a multipart body built with `FormData` "
        "(the PNG as the file part `image`); the raw-body rows send the PNG itself as the body (content type "
        "image/png), to show what multipart parsing costs. Errors are answers other than 200, wrong are labels that "
        "differ from the drawn shape. Clients, server and container share the same 2 cores, so served figures "
        f"include the clients' CPU cost. {args.seconds:.0f} s per row, in {args.rounds} turns of direct then served. "
        f"Loading the model (the CNN trains at load, on generated images) took {load_s:.2f} s. "
        f"1-minute load average at the start: {load:.1f}."
    )
    write_section("images", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
