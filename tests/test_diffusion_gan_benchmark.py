"""benchmarks/diffusion_gan.py: a smoke run that resumes, and its report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diffusion_gan.py"


def _run(out: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env,
                          check=True, capture_output=True, text=True).stdout


@pytest.mark.slow  # minutes on a loaded 2-core machine (the floor and PRDC dominate)
def test_smoke_run_resumes_and_reports(tmp_path):
    common = ("--data", "moons", "--seeds", "0", "--sample-seeds", "1", "--scale", "0.001",
              "--T", "2", "--quick")
    first = _run(tmp_path, *common)
    assert "[moons ddgan T=2 seed 0]" in first and "[moons siddm T=2 seed 0]" in first
    rec = json.loads((tmp_path / "moons" / "siddm-T2" / "seed0.json").read_text())
    assert rec["cost"]["steps"] == 3 and len(rec["test"]) == 1 and "gaussian" in rec
    assert isinstance(rec["diverged"], bool)
    assert _run(tmp_path, *common) == ""  # finished runs are read back, not retrained
    report = _run(tmp_path, "--report")
    assert "| ddgan " in report and "| siddm " in report and "Data floor" in report
