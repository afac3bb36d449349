"""The benchmark scripts run end to end (smoke scale) and resume from their cached results."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_suite.py"


def _run(out: Path, *extra: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--data", "moons", "--quick",
           "--scale", "0.005", *extra]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout


def test_distill_suite_smoke_and_resume(tmp_path):
    first = _run(tmp_path, "--methods", "kd,pd")
    scores = json.loads((tmp_path / "moons" / "scores.json").read_text())
    assert {"floor", "teacher", "kd", "pd"} <= set(scores)
    assert set(scores["teacher"]) == {"1", "2", "4", "10", "50"}
    assert scores["pd"]["cost"]["teacher_nfe"] > 0 and "2" in scores["pd"]["scores"]
    assert "| kd " in first and "## Summary" in first
    second = _run(tmp_path, "--methods", "kd,pd,cd")  # kd and pd are read back, cd trained
    assert "[moons] kd" in second and json.loads(
        (tmp_path / "moons" / "scores.json").read_text())["kd"] == scores["kd"]
    assert "Target (2-step consistency student" in second
    assert (tmp_path / "report.md").read_text().startswith("## moons")
