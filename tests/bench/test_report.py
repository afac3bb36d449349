"""Tests for the benchmark report: aggregation, leaderboard, Pareto front, plots and HTML."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from fewstep.bench.report import (
    aggregate,
    format_leaderboard,
    format_seconds,
    leaderboard,
    pareto_front,
    plot_pareto,
    plot_quality_vs_nfe,
    write_report,
)
from fewstep.bench.store import Store, case_key

SEEDS = (0, 1, 2)
PEER = "diffusers:dpmpp_2m"
# (teacher, method, nfe) -> base ode_rmse; seed s adds 0.01 * s.
BASE = {
    ("gmm", "euler", 4): 0.90, ("gmm", "dpmpp_2m", 4): 0.30, ("gmm", PEER, 4): 0.35,
    ("gmm", "euler", 8): 0.50, ("gmm", "dpmpp_2m", 8): 0.10, ("gmm", PEER, 8): 0.12,
    ("ring", "euler", 4): 0.80, ("ring", "dpmpp_2m", 4): 0.40, ("ring", PEER, 4): 0.20,
    ("ring", "euler", 8): 0.40, ("ring", "dpmpp_2m", 8): 0.15, ("ring", PEER, 8): 0.30,
}
NOTE = "diffusers <dpmpp_2m> forces lower_order_final"


def _time(method: str, nfe: int, seed: int) -> float:
    """Synthetic time per sample: 10 µs per evaluation, peers 1.5x slower."""
    return nfe * 1e-5 * (1.5 if ":" in method else 1.0) * (1 + 0.01 * seed)


def _row(teacher: str, method: str, nfe: int, seed: int, metrics: dict) -> dict:
    """A complete store row."""
    peer = ":" in method
    config = {"teacher": teacher, "method": method, "nfe": nfe, "seed": seed}
    if peer:
        config["notes"] = NOTE
    if "fd" in metrics:
        config["feature_space"] = "raw 2-d coordinates"
    return {"key": case_key(config), "suite": "smoke", "teacher": teacher, "method": method,
            "impl": "diffusers" if peer else "fewstep", "nfe_target": nfe, "seed": seed,
            "nfe": float(nfe + (1 if method == "euler" else 0)), "n_samples": 64,
            "metrics": metrics, "wall_s": 0.1, "time_per_sample_s": _time(method, nfe, seed),
            "network_s": 0.05, "overhead_per_step_s": 1e-6 * (seed + 1), "peak_mem_mb": 12.0,
            "mem_method": "tracemalloc", "energy_j": None, "energy_method": "not measured",
            "config": config, "status": "ok", "error": None,
            "env": {"versions": {"torch": "2.3.0", "fewstep": "0.1.0"}, "device": "cpu",
                    "dtype": "float64", "threads": 1, "git": "abc1234"}}


def _metrics(teacher: str, method: str, nfe: int, seed: int) -> dict:
    """ode_rmse everywhere; sw only on gmm (None on ring); fd on gmm."""
    v = BASE[(teacher, method, nfe)] + 0.01 * seed
    if teacher == "gmm":
        return {"ode_rmse": v, "sw": 2 * v, "fd": 3 * v}
    return {"ode_rmse": v, "sw": None}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Rows read back from a real store, plus rows with missing / NaN / error metrics."""
    store = Store(tmp_path_factory.mktemp("store") / "r.db")
    for (teacher, method, nfe) in BASE:
        for seed in SEEDS:
            store.put(_row(teacher, method, nfe, seed, _metrics(teacher, method, nfe, seed)))
    store.put(_row("gmm", "euler", 4, 3, {}))                        # no metrics at all
    store.put(_row("gmm", "euler", 4, 4, {"ode_rmse": float("nan")}))
    store.put({**_row("gmm", "euler", 4, 5, {"ode_rmse": 0.0}), "status": "error"})
    return store.rows()


@pytest.fixture(scope="module")
def report(rows: list[dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The written HTML report (path, text)."""
    path = write_report(rows, tmp_path_factory.mktemp("report"))
    return path, path.read_text(encoding="utf-8")


def _by_key(aggs):
    return {(a.teacher, a.method, a.nfe_target): a for a in aggs}


def test_aggregate_matches_hand_computation(rows):
    aggs = aggregate(rows, "ode_rmse")
    assert len(aggs) == len(BASE)
    a = _by_key(aggs)[("gmm", "dpmpp_2m", 4)]
    logs = np.log([0.30, 0.31, 0.32])  # ode_rmse is in [0, inf): log-scale interval
    half = scipy.stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert a.summary.n == 3
    assert a.summary.mean == pytest.approx(math.exp(logs.mean()))  # geometric mean
    assert (a.summary.lo, a.summary.hi) == pytest.approx(
        (math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert [s for s, _ in a.per_seed] == [0, 1, 2]
    assert [v for _, v in a.per_seed] == pytest.approx([0.30, 0.31, 0.32])
    assert a.impl == "fewstep" and a.metric == "ode_rmse" and a.nfe == pytest.approx(4.0)
    times = [_time("dpmpp_2m", 4, s) for s in SEEDS]
    assert a.time_per_sample.mean == pytest.approx(np.mean(times))
    assert a.overhead_per_step == pytest.approx(2e-6)
    assert _by_key(aggs)[("gmm", PEER, 8)].impl == "diffusers"


def test_aggregate_skips_missing_nan_and_error_rows(rows):
    euler = _by_key(aggregate(rows, "ode_rmse"))[("gmm", "euler", 4)]
    assert euler.summary.n == 3
    assert euler.summary.mean == pytest.approx(scipy.stats.gmean([0.90, 0.91, 0.92]))
    assert euler.nfe == pytest.approx(5.0)
    sw = aggregate(rows, "sw")
    assert {a.teacher for a in sw} == {"gmm"} and len(sw) == 6
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; available: .*ode_rmse"):
        aggregate(rows, "nope")


def test_aggregate_single_seed_has_no_interval(rows):
    one = [r for r in rows if r["seed"] == 0]
    a = _by_key(aggregate(one, "ode_rmse"))[("ring", "euler", 8)]
    assert a.summary.n == 1 and a.summary.mean == pytest.approx(0.40)
    assert math.isnan(a.summary.lo) and math.isnan(a.summary.hi)


def test_leaderboard_picks_best_runner_up_and_peer(rows):
    """The peer runs the same algorithm as dpmpp_2m, so it is shown beside, never crowned."""
    board = {(e["teacher"], e["nfe_target"]): e for e in leaderboard(rows)}
    assert set(board) == {("gmm", 4), ("gmm", 8), ("ring", 4), ("ring", 8)}
    for (teacher, nfe), e in board.items():
        ranked = sorted((m for (t, m, n) in BASE if (t, n) == (teacher, nfe) and m != PEER),
                        key=lambda m, t=teacher, n=nfe: BASE[(t, m, n)])
        assert e["best"] == ranked[0] and e["runner_up"] == ranked[1]
        assert e["peer"] == PEER and "peer of dpmpp_2m" in e["flagged"][PEER]
        seeds = [0.01 * s for s in SEEDS]  # geometric means over the seeds
        assert e["peer_mean"] == pytest.approx(
            scipy.stats.gmean([BASE[(teacher, PEER, nfe)] + d for d in seeds]))
        assert e["best_mean"] == pytest.approx(
            scipy.stats.gmean([BASE[(teacher, ranked[0], nfe)] + d for d in seeds]))
        assert e["best_lo"] < e["best_mean"] < e["best_hi"]
        assert e["tied"] == []  # euler is consistently worse on every seed
    # ring@4: the peer has the lowest ode_rmse but is dpmpp_2m's twin
    assert board[("ring", 4)]["best"] == "dpmpp_2m" and board[("ring", 4)]["best_impl"] == "fewstep"
    assert board[("ring", 4)]["best_time_per_sample_s"] == pytest.approx(
        np.mean([_time("dpmpp_2m", 4, s) for s in SEEDS]))


def test_leaderboard_without_peer(rows):
    own = [r for r in rows if r["impl"] == "fewstep"]
    board = leaderboard(own)
    assert board and all(e["peer"] is None and e["peer_mean"] is None for e in board)
    assert "dpmpp_2m" in format_leaderboard(board)


def test_format_leaderboard_contains_rows(rows):
    text = format_leaderboard(leaderboard(rows))
    lines = text.splitlines()
    assert len(lines) == 3 + 4
    assert all(len(line) <= 100 for line in lines)
    assert "ode_rmse" in lines[0] and "lower is better" in lines[0]
    assert any(line.startswith("ring") and PEER in line and "µs" in line for line in lines)
    assert "0.11 [" in text  # gmm@8 best mean with its interval
    assert format_leaderboard([]) == "(empty leaderboard)"


def test_format_seconds_units():
    assert format_seconds(2.5) == "2.5 s"
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(4.56e-5) == "45.6 µs"
    assert format_seconds(7e-9) == "7 ns"
    assert format_seconds(None) == "-" and format_seconds(float("nan")) == "-"


def test_pareto_front_hand_example():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.5), (4.0, 1.0), (2.5, 2.0), (1.0, 6.0),
           (4.0, 1.0), (float("nan"), 0.0), (5.0, 1.0)]
    # (3,3.5) dominated by (2,3); (1,6) by (1,5); (2,3) by (2.5,2)? no: 2 < 2.5.
    # (5,1) dominated by (4,1); the duplicate (4,1) pair both stay; NaN ignored.
    assert pareto_front(pts) == [0, 1, 4, 3, 6]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_plots_handle_edge_cases(rows, tmp_path):
    aggs = aggregate([r for r in rows if r["seed"] == 0], "ode_rmse")  # n=1: no bands
    assert plot_pareto(aggs, tmp_path / "p.png").stat().st_size > 1000
    assert plot_quality_vs_nfe([], tmp_path / "empty.png").exists()
    neg = [{**r, "metrics": {"nll": -1.0 - 0.1 * r["seed"]}} for r in rows]
    assert plot_quality_vs_nfe(aggregate(neg, "nll"), tmp_path / "nll.png").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_write_report_contents(report):
    path, text = report
    assert path.name == "report.html" and path.exists()
    for name in ("euler", "dpmpp_2m", PEER, "gmm", "ring"):
        assert name in text
    assert "not measured" in text
    assert "2.3.0" in text and "abc1234" in text and "float64" in text
    assert "raw 2-d coordinates" in text  # the stated feature space
    assert "diffusers &lt;dpmpp_2m&gt; forces lower_order_final" in text
    assert "<dpmpp_2m>" not in text
    assert 'class="sortable"' in text and "<script>" in text
    assert "http://" not in text and "https://" not in text


def test_write_report_embeds_and_saves_pngs(report):
    path, text = report
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # primary ode_rmse plus sw and fd: two plots each (quality vs NFE; Pareto over time), and
    # the primary's amortised cost.
    assert len(embedded) == 7
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert len(pngs) == 7 and "pareto_ode_rmse.png" in pngs and "quality_vs_nfe_sw.png" in pngs
    assert "amortised_ode_rmse.png" in pngs
    assert all((path.parent / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not list(path.parent.glob(".*tmp"))


def test_write_report_from_store_and_empty(tmp_path, rows):
    store = Store(tmp_path / "r.db")
    for r in rows[:6]:  # one metric only, to keep the plot count (and test time) small
        store.put({**r, "metrics": {"sw": (r["metrics"] or {}).get("sw")}})
    html_path = write_report(store, tmp_path / "out", suite="smoke", metric="sw")
    text = html_path.read_text(encoding="utf-8")
    # quality vs NFE, Pareto and amortised cost
    assert "Leaderboard (sw" in text and text.count("data:image/png;base64,") == 3
    empty = write_report([], tmp_path / "empty").read_text(encoding="utf-8")
    assert "No data" in empty and "Notes" in empty


def test_html_names_students_by_short_unambiguous_labels(tmp_path):
    """Student method strings (long paths) show as their run names, the full string in a
    title tooltip and in the environment legend; two students whose run names collide keep
    their full strings (issue 11)."""
    cd = "student:/home/u/experiments/2026/runs/moons-cd"
    kd_a, kd_b = "student:/scratch/a/moons-kd", "student:/scratch/b/moons-kd"
    rows = []
    for seed in SEEDS:
        for method, v in ((cd, 0.2), (kd_a, 0.25), (kd_b, 0.3), ("dpmpp_2m", 0.5)):
            r = _row("gmm", method, 1, seed, {"ode_rmse": v + 0.01 * seed})
            if method.startswith("student:"):
                r.update(train_seconds=12.0, train_teacher_nfe=100.0)
            rows.append(r)
    html = write_report(rows, tmp_path).read_text()
    body, env = html.split("<h2>Run environment</h2>")
    assert f'<span title="{cd}">moons-cd</span>' in body
    assert f"<span title=\"{cd}\">moons-cd@1</span>" in body  # case labels keep their NFE
    assert cd not in re.sub(r'title="[^"]*"', "", body)  # the full path only in tooltips
    assert kd_a in body and kd_b in body and 'title="student:/scratch' not in body
    assert f"moons-cd = <code>{cd}</code>" in env and "moons-kd =" not in env
