"""On a GPU machine: modalkit's CUDA paths for real, and GPU throughput served vs direct.

    bash benchmarks/gpu_check.sh          (installs what the machine lacks from carried wheels, then runs this)

1. The model runs on CUDA in a local container (`modalkit serve`), batched.
2. A real device-side assert (an out-of-bounds index on the GPU) poisons the container's CUDA context: the request
   gets 503, the container is recycled (a new process), and the next request is served on the GPU again.
   Sixteen ordinary requests sent with the faulting one all get an answer (none hangs).
3. Items/s of the served model at 1, 32 and 64 clients (batches of up to 32) vs the model called directly at
   batch min(clients, 32).
Writes the table to $OUT/gpu_check.md (and prints it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SENTENCES, closed_loop, free_port, markdown_table, start_server, stop_server, write_section

APP, CONFIG = "benchmarks/apps/gpu_app.py", "benchmarks/apps/gpu.yaml"


def direct_items_per_s(batch_sizes: tuple[int, ...], seconds: float = 5.0) -> dict[int, float]:
    """The model called in this process at each batch size: items/s."""
    os.environ["MODALKIT_CONFIG"] = str(ROOT / CONFIG)
    from modalkit.app_loader import import_app

    example = import_app(ROOT / APP)
    model = example.GpuEncoder("encoder", "models", {})
    model.warmup()
    rates = {}
    for size in batch_sizes:
        batch = [example.TextIn(text=s) for s in SENTENCES[:size]]
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.run(batch)
            done += len(batch)
        rates[size] = done / (time.perf_counter() - started)
    return rates


def models_health(url: str) -> dict:
    return next(iter(httpx.get(f"{url}/health", timeout=10).json()["models"].values()))


async def fault_among_bystanders(url: str, bystanders: int = 16) -> tuple[httpx.Response, list[int | str]]:
    """The faulting request sent together with `bystanders` ordinary ones: every one must get an answer."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(body: dict) -> httpx.Response | str:
            try:
                return await client.post(f"{url}/predict", json=body)
            except httpx.TimeoutException:
                return "hung"

        others = (one({"text": f"by {i}"}) for i in range(bystanders))
        answers = await asyncio.gather(one({"text": "cuda-fault"}), *others)
    fault = answers[0]
    assert isinstance(fault, httpx.Response), "the faulting request hung"
    return fault, [a.status_code if isinstance(a, httpx.Response) else a for a in answers[1:]]


def check_cuda_recycle(url: str) -> list[list[str]]:
    first = httpx.post(f"{url}/predict", json={"text": "before"}, timeout=60).json()
    started = time.perf_counter()
    fault, others = asyncio.run(fault_among_bystanders(url))
    answered_s = time.perf_counter() - started
    deadline = time.monotonic() + 120
    after = None
    while time.monotonic() < deadline:
        answer = httpx.post(f"{url}/predict", json={"text": "after"}, timeout=120)
        if answer.status_code == 200:
            after = answer.json()
            break
        time.sleep(0.5)
    restarts = models_health(url)["restarts"]
    ok = (
        fault.status_code == 503
        and "CUDA" in fault.text
        and "hung" not in others
        and after is not None
        and after["device"] == "cuda"
        and after["pid"] != first["pid"]
        and restarts.get("cuda", 0) >= 1
    )
    statuses = ", ".join(f"{others.count(s)} x {s}" for s in sorted(set(others), key=str))
    return [
        ["served on", first["device"], f"pid {first['pid']}"],
        ["device-side assert", str(fault.status_code), fault.json().get("detail", "").splitlines()[0][:90]],
        ["16 requests sent with it", statuses, f"all answered within {answered_s:.1f} s (none hung)"],
        ["next request", after["device"] if after else "none", f"pid {after['pid'] if after else '-'} (new process)"],
        ["restarts", str(restarts), "PASS" if ok else "FAIL"],
    ]


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check")
        return 2
    gpu = torch.cuda.get_device_name(0)
    direct = direct_items_per_s((1, 32))
    port = free_port()
    server = start_server(APP, port, config=CONFIG)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        bodies = [{"text": s} for s in SENTENCES]
        asyncio.run(closed_loop(f"{url}/predict", bodies, 64, 3))  # warm
        for clients in (1, 32, 64):
            served = asyncio.run(closed_loop(f"{url}/predict", bodies, clients, 8))
            base = direct[min(clients, 32)]
            rows.append([f"modalkit /predict, {clients} client{'s' * (clients > 1)}", served["requests_per_s"],
                         served["p50_ms"], served["p99_ms"], int(served["errors"]),
                         f"direct at batch {min(clients, 32)}", f"{served['requests_per_s'] / base:.2f}"])  # fmt: skip
        lists = [[{"text": s} for s in SENTENCES[i : i + 32]] for i in range(0, 256, 32)]
        batched = asyncio.run(closed_loop(f"{url}/predict_batch", lists, 8, 8))
        rows.append(["modalkit /predict_batch (32 a request), 8 clients", 32 * batched["requests_per_s"],
                     batched["p50_ms"], batched["p99_ms"], int(batched["errors"]), "direct at batch 32",
                     f"{32 * batched['requests_per_s'] / direct[32]:.2f}"])  # fmt: skip
        batches = models_health(url)["batch_sizes"]
        cuda_rows = check_cuda_recycle(url)
    finally:
        stop_server(server)
    direct_rows = [[f"direct in-process (batch {b})", rate, "-", "-", "-", "-", "1.0"] for b, rate in direct.items()]
    throughput = markdown_table(
        ["path", "items/s", "p50 ms", "p99 ms", "errors", "against", "served/direct"], direct_rows + rows
    )
    body = (
        f"{gpu}, torch {torch.__version__}, {os.cpu_count()} CPU cores\n\n{throughput}\n\n"
        f"Batch sizes served: {batches}\n\n" + markdown_table(["CUDA path", "result", "detail"], cuda_rows)
    )
    print(body)
    write_section("gpu", body)
    out = Path(os.environ.get("OUT", "."))
    (out / "gpu_check.md").write_text(body + "\n")
    return 0 if cuda_rows[-1][-1] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
