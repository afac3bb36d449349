"""benchmarks/rectified_flow.py: a smoke run at tiny scale, its report and its resumption."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rectified_flow.py"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--data", "moons", "--quick",
           "--scale", "0.01", "--k", "2", "--train-seeds", "0,1", "--sample-seeds", "2", *extra]
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow  # about a minute on an idle core
def test_rectified_flow_bench_smoke_report_and_resume(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    scores = json.loads((tmp_path / "moons" / "seed1" / "rf_scores.json").read_text())
    stages = {"1-rf", "2-rf", "1-rf+distill", "2-rf+distill"}
    assert stages | {"setup", "couplings", "pairs:1-rf", "pairs:2-rf"} == set(scores)
    assert {"val", "test"} <= set(scores["pairs:2-rf"])  # each flow at the coupling NFE
    for stage in ("1-rf", "2-rf"):
        rows = scores[stage]["scores"]
        assert {"1", "2", "4", "straightness"} <= set(rows)
        assert rows["1"]["val"] == min(rows["1"]["val_by_solver"].values())  # chosen on val.
        assert len(rows["1"]["test"]) == 2
    assert set(scores["2-rf+distill"]["scores"]) == {"1"}
    assert scores["2-rf"]["cost"]["teacher_nfe"] > 0 == scores["1-rf"]["cost"]["teacher_nfe"]
    assert [d["evaluations"] for d in scores["couplings"]] == [31 * 256] * 2
    assert "| 2-rf " in first.stdout and "couplings from 2-RF" in first.stdout
    again = _run(tmp_path, "--train-seeds", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "moons" / "seed1" / "rf_scores.json").read_text()) == scores
    bad = _run(tmp_path, "--k", "0")
    assert bad.returncode == 2 and "--k must be >= 1" in bad.stderr
