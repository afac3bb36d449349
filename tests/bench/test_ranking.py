"""Rankings: every metric in its registered direction, paired tie groups, sanity flags,
peers beside their twins, the decision table, metric disagreements and failed cases."""

import math

import numpy as np
import pytest

from fewstep.bench.report import (
    decide,
    disagreements,
    failure_summary,
    format_decision,
    format_leaderboard,
    leaderboard,
    write_report,
)
from fewstep.bench.store import Store, case_key
from fewstep.metrics import registry

SEEDS = range(5)
_NOISE = (0.01, -0.02, 0.015, -0.005, 0.0)  # zero-mean per-seed jitter


def row(method, nfe, seed, metrics, teacher="t", time=1e-4, status="ok", error=None):
    impl = method.split(":")[0] if ":" in method else "fewstep"
    config = {"teacher": teacher, "method": method, "nfe": nfe, "seed": seed}
    return {"key": case_key(config), "suite": "s", "teacher": teacher, "method": method,
            "impl": impl, "nfe_target": nfe, "seed": seed, "nfe": float(nfe),
            "metrics": metrics, "time_per_sample_s": time * (1 + 0.01 * seed),
            "overhead_per_step_s": 1e-6, "config": config, "env": {}, "status": status,
            "error": error}


def series(method, nfe, metric, values, **kw):
    return [row(method, nfe, s, {metric: v}, **kw) for s, v in zip(SEEDS, values, strict=True)]


def _good_bad(spec):
    """A clearly better and a clearly worse value inside the metric's range."""
    if spec.hi == 1.0:
        good, bad = 0.9, 0.5
    elif spec.lo == 0.0:
        good, bad = (1.0, 0.4) if spec.higher_is_better else (0.1, 0.5)
    else:
        good, bad = -2.0, 1.0
    return good, bad


@pytest.mark.parametrize("metric", registry.available())
def test_each_metric_is_ranked_in_its_own_direction(metric):
    spec = registry.get(metric)
    good, bad = _good_bad(spec)
    assert spec.better(good, bad)
    jitter = [good * (1 + e) if spec.lo == 0 else good + e for e in _NOISE]
    rows = [*series("A", 4, metric, [min(v, spec.hi) for v in jitter]),
            *series("B", 4, metric, [bad + e for e in _NOISE])]
    (entry,) = leaderboard(rows, metric)
    assert entry["best"] == "A" and entry["runner_up"] == "B" and entry["tied"] == []
    assert entry["lower_is_better"] == (not spec.higher_is_better)
    (d,) = decide(rows, metric)
    assert d.ranking.best.label == "A@4"
    assert f"{spec.direction} is better" in format_leaderboard([entry])


def test_high_quality_never_crowns_a_diverged_solver():
    """The reported fault: high_quality was ranked lower-is-better, so fractions of 0 won."""
    rows = [*series("diverged", 2, "high_quality", [0.0, 0.01, 0.0, 0.02, 0.0]),
            *series("fine", 2, "high_quality", [0.95, 0.97, 0.96, 0.94, 0.96])]
    assert leaderboard(rows, "high_quality")[0]["best"] == "fine"


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown metric 'fid'; available: .*high_quality"):
        leaderboard([], "fid")
    with pytest.raises(ValueError, match="unknown metric"):
        write_report([], "/nonexistent-never-written", metric="fid")


def test_clearly_different_pair_is_not_tied():
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    rows = [*series("A", 4, "sw", base), *series("B", 4, "sw", base * 1.2)]
    (e,) = leaderboard(rows, "sw")
    assert e["best"] == "A" and e["tied"] == []


def test_identical_but_noisy_pair_is_tied():
    """B is A with zero-mean multiplicative noise: no significant difference either way."""
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    rows = [*series("A", 4, "sw", base),
            *series("B", 4, "sw", base * (1 + np.array([0.02, -0.03, 0.01, 0.025, -0.02])))]
    (e,) = leaderboard(rows, "sw")
    assert {e["best"], *e["tied"]} == {"A", "B"}


def test_pairing_beats_overlapping_intervals():
    """Seed effects dominate but B is 5% worse on every seed: the intervals overlap, the
    paired test still separates them."""
    base = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    rows = [*series("A", 4, "sw", base), *series("B", 4, "sw", base * 1.05)]
    (e,) = leaderboard(rows, "sw")
    assert e["best_hi"] > e["runner_up_lo"]  # unpaired intervals overlap
    assert e["best"] == "A" and e["tied"] == []


def _noise_artefact_rows():
    """diffusers:deis@1 returns (rescaled) start noise: tied with baseline:noise, yet lower
    in mean than the honest solver at that budget."""
    noise = np.array([1.0, 1.2, 0.9, 1.1, 1.0])
    return [*series("baseline:noise", 0, "sw", noise),
            *series("baseline:mean", 0, "sw", noise * 1.5),
            *series("diffusers:deis", 1, "sw", noise * np.array([0.97, 1.02, 0.99, 0.98, 1.01])),
            *series("ddim", 1, "sw", noise * 1.3),
            *series("ddim", 4, "sw", noise * 0.3)]


def test_method_returning_noise_is_flagged_and_never_best():
    rows = _noise_artefact_rows()
    board = {e["nfe_target"]: e for e in leaderboard(rows, "sw")}
    assert set(board) == {1, 4}  # baselines are comparators, not budgets
    assert board[1]["best"] is None  # deis has the lowest mean but is noise; ddim is worse
    assert board[1]["flagged"]["diffusers:deis"] == "no better than baseline:noise"
    assert "baseline:noise" in board[1]["flagged"]["ddim"]
    assert board[4]["best"] == "ddim"
    decisions = {d.budget: d for d in decide(rows, "sw")}
    assert decisions[1].ranking.best is None and decisions[4].ranking.best.label == "ddim@4"
    text = format_decision(list(decisions.values()))
    assert "(none beats baselines)" in text and "ddim@4" in text
    assert all(not a.is_baseline for d in decisions.values() for a in d.ranking.tie_group)


def test_peer_twin_is_shown_beside_not_crowned():
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    rows = [*series("dpmpp_2m", 4, "sw", base), *series("diffusers:dpmpp_2m", 4, "sw", base * 0.9),
            *series("diffusers:euler", 4, "sw", base * 0.8)]  # twin (ddim) absent: a rival
    (e,) = leaderboard(rows, "sw")
    assert e["best"] == "diffusers:euler" and e["peer"] == "diffusers:euler"
    assert e["flagged"] == {"diffusers:dpmpp_2m": "peer of dpmpp_2m (shown beside it)"}


def test_decision_is_cumulative_over_budgets_and_has_a_time_front():
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    rows = [*series("fast", 2, "sw", base * 2, time=1e-5),
            *series("fast", 4, "sw", base, time=2e-5),
            *series("slow", 8, "sw", base * 1.5, time=1e-3)]
    d = {d.budget: d for d in decide(rows, "sw")}
    assert d[2].ranking.best.label == "fast@2"
    assert d[8].ranking.best.label == "fast@4"  # a cheaper case can win a larger budget
    assert [a.label for a in d[8].front] == ["fast@2", "fast@4"]  # slow@8 is dominated


def test_disagreeing_metrics_are_reported(tmp_path):
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    rows = [row(m, 4, s, {"sw": base[s] * f_sw, "mmd": base[s] * f_mmd})
            for m, f_sw, f_mmd in (("A", 1.0, 2.0), ("B", 2.0, 1.0)) for s in SEEDS]
    (d,) = disagreements(rows, ["sw", "mmd"])
    assert (d["best_a"], d["best_b"], d["metric_a"], d["metric_b"]) == ("A", "B", "sw", "mmd")
    agreeing = [r for r in rows if r["method"] == "A"]
    assert disagreements(agreeing, ["sw", "mmd"]) == []
    text = write_report(rows, tmp_path, metric="sw").read_text(encoding="utf-8")
    assert "Where metrics disagree" in text and "mmd: B" in text


def test_all_failed_cases_are_reported(tmp_path):
    """A corrupt image fails every case: the report lists the error, not just 'rows: 0'."""
    msg = "UnidentifiedImageError: cannot identify image file '/data/bad.png'"
    store = Store(tmp_path / "results.sqlite")
    for s in range(3):
        for m in ("ddim", "heun"):
            store.put(row(m, 4, s, {}, status="error", error=msg))
    store.put(row("ddim", 8, 0, {}, status="error", error="RuntimeError: other"))
    summary = failure_summary(store.rows(status=None))
    assert [(m, n) for m, n, _ in summary] == [(msg, 6), ("RuntimeError: other", 1)]
    text = write_report(store, tmp_path / "out").read_text(encoding="utf-8")
    assert "All 7 cases failed" in text and "Failed cases" in text
    assert "cannot identify image file &#x27;/data/bad.png&#x27;" in text
    assert summary[0][2]["key"] in text and ">6<" in text


def test_some_failed_cases_counted_beside_results(tmp_path):
    rows = [*series("A", 4, "sw", [0.3, 0.31, 0.32, 0.3, 0.29]),
            row("B", 4, 0, {}, status="error", error="ValueError: boom")]
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    assert "1 of 6 cases failed" in text and "ValueError: boom" in text
    assert text.index("Decision (") < text.index("Leaderboard (") < text.index("Plots")


def test_intervals_in_the_report_stay_in_range():
    """RMSE-like values spread over seeds: the t-interval went below 0; the log one cannot."""
    rows = series("A", 4, "ode_rmse", [0.01, 0.5, 0.02, 0.9, 0.03])
    (e,) = leaderboard(rows, "ode_rmse")
    assert 0 < e["best_lo"] < e["best_mean"] < e["best_hi"]
    frac = series("A", 4, "mode_coverage", [1.0, 1.0, 0.5, 1.0, 1.0])
    (f,) = leaderboard(frac, "mode_coverage")
    assert 0 <= f["best_lo"] < f["best_mean"] < f["best_hi"] <= 1.0
    assert math.isclose(f["best_mean"], 0.9)


def test_few_seeds_are_called_out():
    base = np.array([0.30, 0.33, 0.29, 0.31, 0.32])
    five = [*series("A", 4, "sw", base), *series("B", 4, "sw", base * 1.2)]
    assert "seed(s)" not in format_decision(decide(five, "sw"))
    two = [r for r in five if r["seed"] < 2]
    assert "Only 2 seed(s)" in format_decision(decide(two, "sw"))
