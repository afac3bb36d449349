"""One-off cost amortised over 10^3 and 10^6 samples, and the amortised-cost Pareto front."""

import math

import pytest

from fewstep.bench.report.cost import amortised, amortised_front, one_off_cost

SEEDS = (0, 1, 2)


def _row(method: str, nfe: int, seed: int, err: float, t: float, **extra) -> dict:
    return {"teacher": "moons", "method": method, "nfe_target": nfe, "nfe": float(nfe),
            "impl": "student" if method.startswith("student:") else "fewstep", "seed": seed,
            "n_samples": 100, "time_per_sample_s": t, "setup_time_s": 0.0, "status": "ok",
            "metrics": {"ode_rmse": err * (1 + 0.01 * seed)}, **extra}


def test_one_off_cost_fields_and_defaults():
    assert one_off_cost(_row("heun", 4, 0, 1, 1)) == (0.0, 0.0)  # training-free: free
    assert one_off_cost(_row("student:a", 1, 0, 1, 1, train_seconds=60.0,
                             train_teacher_nfe=5e4)) == (60.0, 5e4)
    tuned = _row("tuned:x", 4, 0, 1, 1, config={"tuning_seconds": 3.0})
    assert one_off_cost(tuned) == (3.0, 0.0)  # read from config; teacher NFE not recorded
    unknown = one_off_cost(_row("student:ext", 1, 0, 1, 1))  # a student without a record
    assert all(math.isnan(v) for v in unknown)
    assert all(math.isnan(v) for v in one_off_cost(
        _row("student:ext", 1, 0, 1, 1, train_seconds=None, train_teacher_nfe=None)))


def test_amortised_seconds_and_nfe_per_sample():
    """A student trained for 1000 s with 2e6 teacher NFE, sampling 1 NFE at 1 ms + set-up
    0.1 s per 100-sample batch: 1000/M + 0.001 + 0.001 seconds and 2e6/M + 1 NFE per sample."""
    rows = [_row("student:cd", 1, s, 0.2, 1e-3, setup_time_s=0.1, train_seconds=1000.0,
                 train_teacher_nfe=2e6) for s in SEEDS]
    (p,) = amortised(rows, "ode_rmse")
    assert p.per_sample_s == pytest.approx(2e-3)
    assert p.seconds(10**3) == pytest.approx(1.0 + 2e-3)
    assert p.seconds(10**6) == pytest.approx(1e-3 + 2e-3)
    assert p.teacher_nfe(10**3) == pytest.approx(2e3 + 1) and p.nfe == 1.0


def _suite_rows() -> list[dict]:
    rows = []
    for s in SEEDS:
        rows += [_row("heun", 20, s, 0.05, 4e-3),  # slow and good, free
                 _row("ddim", 4, s, 0.5, 1e-3),  # fast and poor, free
                 _row("student:cd", 1, s, 0.1, 2e-4, train_seconds=100.0,  # trained
                      train_teacher_nfe=1e6),
                 _row("student:ext", 1, s, 0.01, 1e-4),  # cost not known
                 _row("baseline:noise", 0, s, 10.0, 0.0)]
    return rows


def test_front_changes_with_the_number_of_samples():
    """At 10^3 samples the student costs 100/1000 + 0.2 ms = 0.1002 s per sample, slower than
    heun (4 ms) with a worse error, so the front is ddim (cheapest), heun (best). At 10^6
    samples it costs 0.3 ms: the cheapest, and better than ddim, which drops off the front."""
    pts = amortised(_suite_rows(), "ode_rmse")
    small = [p.agg.method for p in amortised_front(pts, 10**3)["moons"]]
    large = [p.agg.method for p in amortised_front(pts, 10**6)["moons"]]
    assert small == ["ddim", "heun"]
    assert large == ["student:cd", "heun"]


def test_unknown_cost_and_baselines_stay_off_the_front():
    pts = amortised(_suite_rows(), "ode_rmse")
    for samples in (10**3, 10**6):
        front = {p.agg.method for p in amortised_front(pts, samples)["moons"]}
        assert "student:ext" not in front and "baseline:noise" not in front
    ext = next(p for p in pts if p.agg.method == "student:ext")
    assert math.isnan(ext.seconds(10**6))  # reported as not known, never as free
