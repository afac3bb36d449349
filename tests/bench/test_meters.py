import subprocess

import torch

from fewstep.bench import meters
from fewstep.bench.meters import EnergyMeter, MemoryMeter, TimedDenoiser, environment


def test_timed_denoiser_counts_and_times():
    def slow(x, sigma):
        torch.linalg.matrix_exp(torch.randn(64, 64))
        return x

    t = TimedDenoiser(slow)
    for _ in range(3):
        t(torch.zeros(5, 2), torch.ones(5))
    assert (t.calls, t.rows) == (3, 15) and t.seconds > 0


def test_memory_meter_sees_an_allocation():
    meter = MemoryMeter()
    with meter.measure():
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        big += 1
    assert meter.peak_mb is not None and meter.peak_mb > 32
    assert "RSS" in meter.method


def test_energy_is_not_measured_without_a_meter():
    meter = EnergyMeter("cpu")
    with meter.measure() as result:
        pass
    if meter.monitor is None:
        assert result["joules"] is None and meter.method == "not measured"


def test_environment_records_what_the_report_needs():
    env = environment("cpu", torch.float32)
    for key in ("fewstep", "torch", "numpy", "diffusers", "device", "dtype", "threads", "git"):
        assert env[key] not in (None, "")
    assert env["dtype"] == "float32"


def test_environment_asks_git_once_per_process(monkeypatch):
    calls = []
    run = subprocess.run

    def counted(*args, **kwargs):
        calls.append(args[0])
        return run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counted)
    meters._git_revision.cache_clear()
    envs = [environment("cpu", torch.float32) for _ in range(5)]
    assert len(calls) == 2 and all(c[0] == "git" for c in calls)  # rev-parse and status
    assert len({e["git"] for e in envs}) == 1


def test_energy_meter_reads_zeus_when_present(monkeypatch):
    """The Zeus path, with a stand-in monitor (no NVML/RAPL on CI machines)."""
    import sys
    import types

    class Monitor:
        def __init__(self, gpu_indices, approx_instant_energy):
            self.gpu_indices = gpu_indices

        def begin_window(self, name):
            self.name = name

        def end_window(self, name):
            assert name == self.name
            return types.SimpleNamespace(total_energy=12.5)

    zeus = types.ModuleType("zeus")
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = Monitor
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    meter = EnergyMeter("cpu")
    with meter.measure() as result:
        pass
    assert meter.method == "zeus" and result["joules"] == 12.5
