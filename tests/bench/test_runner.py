"""The runner: measured rows, resume after a kill without recomputation, shards that merge."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fewstep.bench.runner import parse_shard, run_suite
from fewstep.bench.store import Store, merge
from fewstep.bench.suite import Suite, load_suite


def tiny(**kw):
    base = dict(name="tiny", teachers=["gmm2"], methods=["ddim", "heun", "ddpm",
                                                         "diffusers:dpmpp_2m"],
                nfe=[3, 5], seeds=[0, 1], n_samples=32, reference_rtol=1e-5)
    return Suite(**{**base, **kw})


def test_rows_are_measured_and_counted(tmp_path):
    summary = run_suite(tiny(), tmp_path, progress=False)
    assert summary.failed == 0 and summary.ran == summary.total == 16
    rows = Store(tmp_path / "results.sqlite").rows()
    assert len(rows) == 16
    for r in rows:
        assert r["nfe"] == r["nfe_target"]  # counted, not assumed
        assert r["rounds"] == r["nfe_target"]  # sequential solvers: one call per evaluation
        assert r["time_per_sample_s"] > 0 and r["network_s"] > 0
        assert r["energy_j"] is None and r["energy_method"] == "not measured"
        assert {"ode_rmse", "sw", "mmd", "nll", "mode_coverage"} <= set(r["metrics"])
        assert r["env"]["torch"] and r["env"]["threads"] >= 1 and r["env"]["git"]
    peer = [r for r in rows if r["impl"] == "diffusers"]
    assert peer and all(r["config"]["notes"] for r in peer)


def test_rerun_skips_finished_cases(tmp_path):
    run_suite(tiny(), tmp_path, progress=False)
    again = run_suite(tiny(), tmp_path, progress=False)
    assert again.ran == 0 and again.already_done == 16


def test_shards_partition_the_suite_and_merge(tmp_path):
    parts = [run_suite(tiny(), tmp_path / f"s{i}", shard=(i, 3), progress=False)
             for i in range(3)]
    assert sum(p.total for p in parts) == 16
    n = merge(tmp_path / "all.sqlite", [tmp_path / f"s{i}" / "results.sqlite" for i in range(3)])
    assert n == 16 and len(Store(tmp_path / "all.sqlite").done()) == 16


@pytest.mark.parametrize("bad", ["1/1", "2", "a/b", "-1/2"])
def test_bad_shard(bad):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(bad)


def test_killed_run_resumes_without_recomputing(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "killme"\nteachers = ["gmm2"]\n'
                     'methods = ["ddim", "heun", "dpmpp_2m", "unipc_bh2", "ipndm"]\n'
                     'nfe = [3, 4, 5, 6, 8, 10, 12, 15, 20, 25]\nseeds = [0, 1, 2, 3]\n'
                     'n_samples = 64\nreference_rtol = 1e-5\n')
    total = len(load_suite(suite).cases())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fewstep.cli", "bench", "--suite", str(suite), "--out",
           str(out), "--quiet", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db, deadline = out / "results.sqlite", time.time() + 120
    try:
        while time.time() < deadline:
            if db.exists() and len(Store(db).done()) >= 5:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    finally:
        proc.wait()
    before = {r["key"]: r["created"] for r in Store(db).rows(status=None)}
    assert 5 <= len(before) < total, "the run must be killed part-way"
    assert all(r["status"] == "ok" and r["metrics"] for r in Store(db).rows(status=None))
    summary = run_suite(load_suite(suite), out, progress=False)
    assert summary.already_done == len(before) and summary.ran == total - len(before)
    after = {r["key"]: r["created"] for r in Store(db).rows()}
    assert len(after) == total
    assert all(after[k] == v for k, v in before.items())  # finished rows were not recomputed
