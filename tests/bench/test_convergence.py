"""Convergence order and plateau NFE on constructed error curves of known order."""

import math

import pytest

from fewstep.bench.report.convergence import (
    PLATEAU_TOL,
    convergence,
    nominal_order,
)

GRID = (1, 2, 4, 6, 10, 15, 20, 25, 35, 50)


def _row(method: str, nfe: int, seed: int, err: float, teacher: str = "gmm") -> dict:
    return {"teacher": teacher, "method": method, "impl": "fewstep", "nfe_target": nfe,
            "nfe": float(nfe), "seed": seed, "time_per_sample_s": 1e-4 * nfe,
            "metrics": {"ode_rmse": err, "coverage": 0.5}, "status": "ok"}


def _curve(method: str, error, seeds=(0, 1, 2, 3)) -> list[dict]:
    return [_row(method, n, s, error(n, s)) for n in GRID for s in seeds]


def test_power_law_gives_its_order_and_no_plateau():
    """e = C_s N^-2 with a seed-dependent constant: every per-seed slope is exactly -2, so the
    order is 2 with a zero-width interval, and the error still falls at NFE 50."""
    rows = _curve("heun", lambda n, s: (1 + 0.3 * s) * n ** -2.0)
    (c,) = convergence(rows)
    assert c.order.mean == pytest.approx(2.0, abs=1e-9)
    assert c.order.lo == pytest.approx(2.0, abs=1e-9) and c.order.n == 4
    assert c.fit_nfe == (10, 15, 20, 25, 35, 50)
    assert not c.reached and c.plateau_nfe == 50 and c.max_nfe == 50


def test_per_seed_orders_give_an_interval_over_seeds():
    """Seed s converges at order 1 + 0.1 s: the mean order is 1.15 and the interval is the
    Student-t interval of (1.0, 1.1, 1.2, 1.3)."""
    import scipy.stats

    rows = _curve("ddim", lambda n, s: 2.0 * n ** -(1 + 0.1 * s))
    (c,) = convergence(rows)
    half = scipy.stats.t.ppf(0.975, 3) * math.sqrt(((0.15**2 + 0.05**2) * 2) / 3) / 2
    assert c.order.mean == pytest.approx(1.15)
    assert (c.order.lo, c.order.hi) == pytest.approx((1.15 - half, 1.15 + half))


def test_floor_gives_plateau_nfe_and_is_left_out_of_the_fit():
    """e = max(N^-3, 1e-4): the floor is met at N = 1e4^(1/3) = 21.5, so NFE 25 is the first
    budget within 10% of the plateau; the order is fitted on 10, 15, 20 only and is 3."""
    rows = _curve("dpmpp_3m", lambda n, s: max(n ** -3.0, 1e-4) * (1 + 0.01 * s))
    (c,) = convergence(rows)
    assert c.reached and c.plateau_nfe == 25
    assert c.plateau == pytest.approx(1e-4 * math.prod(1 + 0.01 * s for s in range(4)) ** 0.25)
    assert c.fit_nfe == (10, 15, 20)
    assert c.order.mean == pytest.approx(3.0, abs=1e-9)


def test_plateau_nfe_is_the_first_budget_within_tolerance():
    """The 10% rule exactly: an error 1.10 x the plateau counts, 1.11 x does not."""
    level = {35: 1.0 + PLATEAU_TOL + 0.01, 25: 1.0 + PLATEAU_TOL, 50: 1.0}
    rows = _curve("ipndm", lambda n, s: level.get(n, 100.0 / n))
    (c,) = convergence(rows)
    assert c.plateau_nfe == 25  # 35 is outside, but 25 is the smallest one within
    assert c.fit_nfe == (10, 15, 20) and c.order.mean == pytest.approx(1.0)


def test_too_few_asymptotic_budgets_give_no_order():
    """A plateau from NFE 15 on leaves one asymptotic budget (10): no slope is claimed."""
    rows = _curve("ipndm", lambda n, s: max(100.0 / n, 7.0))
    (c,) = convergence(rows)
    assert c.plateau_nfe == 15 and c.fit_nfe == () and math.isnan(c.order.mean)


def test_short_grids_and_baselines_are_left_out():
    rows = [_row("heun", n, s, n ** -2.0) for n in (2, 4, 8) for s in (0, 1)]
    rows += [_row("baseline:noise", 0, s, 1.0) for s in (0, 1)]
    assert convergence(rows) == []  # largest budget 8 < MIN_NFE, baselines never fitted


def test_only_error_metrics():
    with pytest.raises(ValueError, match="'coverage'"):
        convergence(_curve("heun", lambda n, s: n ** -2.0), metric="coverage")


def test_nominal_order_from_the_solver_registry():
    assert nominal_order("heun") == 2 and nominal_order("dpmpp_3m") == 3
    assert nominal_order("diffusers:ddim") is None and nominal_order("student:x") is None
