"""The pictures in docs/benchmarks.md, drawn from the figures that benchmarks/vs_litserve.py wrote.

    python benchmarks/plots.py [--figures docs/img/vs_litserve.json]

Writes docs/img/throughput_vs_clients.png and docs/img/p99_vs_clients.png: modalkit, LitServe and the
model called directly, one panel per model measured. matplotlib is installed by `make bench` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT

IMAGES = ROOT / "docs" / "img"
STYLES = {
    "modalkit": {"label": "modalkit", "color": "tab:blue", "marker": "o"},
    "litserve": {"label": "LitServe", "color": "tab:orange", "marker": "s"},
    "direct": {"label": "model called directly", "color": "tab:gray", "marker": "^", "linestyle": "--"},
}


def draw(record: dict[str, Any], metric: str, ylabel: str, path: Path, log_y: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    models = record["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.2), squeeze=False)
    for ax, (name, by_server) in zip(axes[0], models.items(), strict=True):
        for server, style in STYLES.items():
            points = sorted((int(c), figures[metric]) for c, figures in by_server.get(server, {}).items())
            ax.plot([c for c, _ in points], [v for _, v in points], **style)
        clients = sorted(int(c) for c in by_server["modalkit"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.xaxis.set_minor_locator(NullLocator())
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}: max_batch_size {record['max_batch_size']}, batch timeout {record['wait_ms']:g} ms")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    load = ", ".join(f"{v:.1f}" for v in record["load_average_1min"])
    fig.suptitle(
        f"{record['cores']} cores, {record['date']}, load average {load} (before the run, at its end)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, default=IMAGES / "vs_litserve.json")
    args = parser.parse_args()
    if not args.figures.exists():
        sys.exit(f"{args.figures}: no figures yet; run `python benchmarks/vs_litserve.py` first.")
    record = json.loads(args.figures.read_text())
    IMAGES.mkdir(parents=True, exist_ok=True)
    draw(record, "requests_per_s", "items/s", IMAGES / "throughput_vs_clients.png")
    draw(record, "p99_ms", "p99 latency, ms (log scale)", IMAGES / "p99_vs_clients.png", log_y=True)


if __name__ == "__main__":
    main()
