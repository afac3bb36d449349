"""Meters: network time, peak memory, energy and the run environment.

Nothing is estimated: a quantity no meter can read is recorded as ``None`` with the method
"not measured".
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser

__all__ = ["EnergyMeter", "MemoryMeter", "TimedDenoiser", "environment", "synchronize"]


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on an accelerator so timers read real durations."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TimedDenoiser:
    """Counts evaluated rows and accumulates wall-clock spent inside the denoiser. A denoiser
    that evaluates its network more than once per row (classifier-free guidance: the
    conditional and the null-label rows) says so in ``evaluations_per_row``, and the rows
    count that many times."""

    def __init__(self, denoiser: Denoiser, device: torch.device | str = "cpu"):
        self.denoiser, self.device = denoiser, device
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        synchronize(self.device)
        t0 = time.perf_counter()
        out = self.denoiser(x, sigma, **cond)
        synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.rows += x.shape[0] * getattr(self.denoiser, "evaluations_per_row", 1)
        return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@dataclass
class MemoryMeter:
    """Peak memory of a block: CUDA's allocator peak, else the resident-set increase over the
    block's start, sampled every ``interval`` seconds from /proc."""

    device: str = "cpu"
    interval: float = 0.002
    peak_mb: float | None = None
    method: str = "not measured"

    @contextmanager
    def measure(self):
        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            yield self
            self.peak_mb = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
            self.method = "cuda max_memory_allocated over start"
            return
        base = _rss_bytes()
        if base == 0:
            yield self
            return
        peak, stop = [base], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                stop.wait(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], _rss_bytes())
            self.peak_mb = (peak[0] - base) / 2**20
            self.method = f"RSS increase over start, sampled every {self.interval * 1e3:g} ms"


class EnergyMeter:
    """Energy of a block through Zeus (NVML on GPUs, RAPL on CPUs where readable)."""

    def __init__(self, device: str = "cpu"):
        self.device, self.monitor, self.method = device, None, "not measured"
        try:  # optional dependency: absent or unreadable hardware means "not measured"
            from zeus.monitor import ZeusMonitor

            dev = torch.device(device)
            gpus = [dev.index or 0] if dev.type == "cuda" else []
            self.monitor = ZeusMonitor(gpu_indices=gpus, approx_instant_energy=False)
            self.method = "zeus"
        except Exception:
            self.monitor = None

    @contextmanager
    def measure(self):
        """Yield a dict that holds ``{"joules": float | None}`` after the block."""
        result: dict[str, float | None] = {"joules": None}
        if self.monitor is None:
            yield result
            return
        self.monitor.begin_window("fewstep")
        try:
            yield result
        finally:
            m = self.monitor.end_window("fewstep")
            joules = float(m.total_energy)
            result["joules"] = joules if joules > 0 else None


@functools.cache  # two subprocesses: once per process, not once per case
def _git_revision() -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Versions, device, dtype, threads, CPU and git revision of this run (the revision is
    read from git once per process)."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() \
        or platform.machine()
    return {
        "fewstep": _version("fewstep"), "torch": torch.__version__, "numpy": _version("numpy"),
        "diffusers": _version("diffusers"), "python": platform.python_version(),
        "device": str(dev), "device_name": name, "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "git": _git_revision(),
    }
