"""What the machine's cores are doing, for the local pool's scaling: how many are spare, and how many one
model container uses. Read from /proc (Linux); elsewhere nothing is measured and scaling keeps Modal's rule
(another container adds capacity). And how many GPUs this machine lends a GPU model's containers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from modalkit.config import ModalConfig

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SMOOTHING = 0.5  # weight of the newest sample


def machine_ticks() -> tuple[int, int] | None:
    """(all, idle) CPU time of the machine since boot, in clock ticks; None where /proc/stat is not there."""
    try:
        first = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[3] + values[4]


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far; None if it is gone or /proc is not there."""
    if pid is None:
        return None
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) ": state is field 0, utime 11, stime 12
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CoreMeter:
    """The machine's spare (idle) cores, and the cores a container uses while it runs a batch, each a moving
    average; None until measured.

    `sample` is cheap enough for every scaling tick: it reads /proc at most every `interval_s`. A container's
    cores are its CPU time over its busy time (the inference time of its batches), summed over the ready
    containers and over samples until `MIN_BUSY_S` of busy time is in: /proc counts CPU time in ticks of 10 ms,
    so one short batch says nothing.
    """

    MIN_BUSY_S = 0.2

    def __init__(self, cores: int, interval_s: float = 0.25) -> None:
        self.cores = cores
        self.interval_s = interval_s
        self.spare_cores: float | None = None
        self.cores_per_container: float | None = None
        self._at: float | None = None
        self._machine = machine_ticks()
        self._cpu: dict[int, float] = {}  # each ready container's CPU seconds at the last sample
        self._busy = 0.0  # the pool's busy seconds at the last sample
        self._cpu_in = self._busy_in = 0.0  # gathered since the last estimate

    def sample(self, now: float, pids: Iterable[int], busy_seconds: float) -> None:
        """Take a sample: `pids` are the ready containers, `busy_seconds` all their batches' inference time."""
        if self._at is not None and now - self._at < self.interval_s:
            return
        machine = machine_ticks()
        if self._at is not None and machine is not None and self._machine is not None:
            total, idle = machine[0] - self._machine[0], machine[1] - self._machine[1]
            if total > 0:
                self.spare_cores = _smooth(self.spare_cores, self.cores * idle / total)
        cpu = {pid: seconds for pid in pids if (seconds := process_cpu_seconds(pid)) is not None}
        if self._at is not None:
            self._cpu_in += sum(seconds - self._cpu[pid] for pid, seconds in cpu.items() if pid in self._cpu)
            self._busy_in += busy_seconds - self._busy
            if self._busy_in >= self.MIN_BUSY_S:
                self.cores_per_container = _smooth(self.cores_per_container, self._cpu_in / self._busy_in)
                self._cpu_in = self._busy_in = 0.0
        self._at, self._machine, self._cpu, self._busy = now, machine, cpu, busy_seconds


def _smooth(last: float | None, new: float) -> float:
    """A moving average that weighs the newest figure `_SMOOTHING`."""
    return new if last is None else (1 - _SMOOTHING) * last + _SMOOTHING * new


def local_gpus(config: ModalConfig) -> list[str] | None:
    """The GPUs of this machine for a GPU model's local containers, as each container's CUDA_VISIBLE_DEVICES
    (as many GPUs each as `deployment_config.gpu` asks, "H100:2" two); None for a CPU model, or where this
    machine has too few GPUs for one container (the model then runs on what it finds, as before)."""
    gpu = config.app_settings.deployment_config.gpu
    if gpu is None:
        return None
    first = gpu if isinstance(gpu, str) else gpu[0]
    count = first.rpartition(":")[2]
    each = int(count) if ":" in first and count.isdigit() else 1
    devices = _visible_devices()
    groups = [",".join(devices[i : i + each]) for i in range(0, len(devices) - each + 1, each)]
    return groups or None


def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(n) for n in range(sum(line.startswith("GPU ") for line in listing.splitlines()))]
