"""Smoke runs of the solver benchmarks (benchmarks/solver_overhead.py, solver_precision.py)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("network", ["eps", "sigma"])
def test_overhead_table_has_every_peer(network, monkeypatch):
    pytest.importorskip("diffusers")
    so = _load("solver_overhead")
    monkeypatch.setattr(so, "NETWORK", network)
    rows = so.measure((8, 2), nfe=5, repeats=1, device="cpu", K=so.k_sampling())
    assert [r[0] for r in rows] == [p.solver for p in so.PEERS]
    for _, ours, theirs, _ in rows:
        assert all(v > 0 and math.isfinite(v) for v in (*ours, *theirs))


def test_precision_table_rows_are_finite_and_bf16_is_near_the_network_floor():
    sp = _load("solver_precision")
    rows = sp.table(nfe=4, batch=8)
    assert len(rows) >= 20
    for name, fp16, bf16, floor in rows:
        assert math.isfinite(fp16) and math.isfinite(bf16), name
        # equal up to sigma's double rounding (float64 -> float32 -> bfloat16) in the floor
        assert bf16 <= 1.5 * floor, name
