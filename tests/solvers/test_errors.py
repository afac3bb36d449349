"""Bad input gets a clear error naming the bad value."""

import pytest
import torch

from fewstep import NonFiniteError, solvers

from ..conftest import planned_solvers


def ok(x, sigma):
    return torch.zeros_like(x)


@pytest.mark.parametrize("name", planned_solvers())
def test_increasing_sigmas(name):
    with pytest.raises(ValueError, match=r"strictly decreasing; sigmas\[1\]=1 <= sigmas\[2\]=5"):
        solvers.get(name)(ok, torch.randn(2, 3), torch.tensor([10.0, 1.0, 5.0, 0.0]))


@pytest.mark.parametrize("name", planned_solvers())
def test_nan_from_model(name):
    def bad(x, sigma):
        return torch.full_like(x, float("nan"))

    p = solvers.plan(name, solvers.get(name).min_nfe + 1, sigma_max=10.0)
    with pytest.raises(NonFiniteError, match=r"NaN/inf at sigma=(10|14.14)"):
        solvers.get(name)(bad, torch.randn(2, 3), p.sigmas, **p.knobs)


@pytest.mark.parametrize("name", planned_solvers())
def test_wrong_output_shape(name):
    def wrong(x, sigma):
        return torch.zeros(x.shape[0], 7)

    p = solvers.plan(name, solvers.get(name).min_nfe)
    with pytest.raises(ValueError, match=r"returned shape \(2, 7\) for input shape \(2, 3\)"):
        solvers.get(name)(wrong, torch.randn(2, 3), p.sigmas, **p.knobs)


@pytest.mark.parametrize("x,match", [(torch.randn(3), r"shape \(batch, \.\.\.\)"),
                                     (torch.arange(6).reshape(2, 3), "floating-point"),
                                     (torch.tensor([[float("nan")]]), "start noise")])
def test_bad_start_sample(x, match):
    with pytest.raises((ValueError, TypeError, NonFiniteError), match=match):
        solvers.get("ddim")(ok, x, torch.tensor([1.0, 0.0]))


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match=r"unknown solver 'dpm_solver_9'; available: .*ddim"):
        solvers.plan("dpm_solver_9", 10)


def test_nfe_below_minimum_is_named():
    with pytest.raises(ValueError, match="nfe=3 is below the minimum of 4 for solver 'dpm_sol"):
        solvers.plan("dpm_solver_3", 3)


@pytest.mark.parametrize("knobs,match", [({"orders": [2, 2]}, "step to sigma=0 must be first"),
                                         ({"orders": [1]}, "1 entries for 2 steps"),
                                         ({"orders": [3, 1]}, "orders must lie in 1..2")])
def test_bad_orders(knobs, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("heun")(ok, torch.randn(2, 3), torch.tensor([5.0, 1.0, 0.0]), **knobs)


@pytest.mark.parametrize("name,knobs,match", [
    ("dpmpp_2m", {"order": 5}, "order must be 1, 2 or 3; got 5"),
    ("unipc_bh2", {"variant": "bh3"}, "unknown UniPC variant 'bh3'"),
    ("deis", {"basis": "rho"}, "unknown DEIS basis 'rho'"),
    ("ddim", {"eta": -1.0}, "eta must be >= 0"),
])
def test_bad_knobs(name, knobs, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name)(ok, torch.randn(2, 3), torch.tensor([5.0, 1.0, 0.0]), **knobs)


def test_adaptive_range_is_checked():
    with pytest.raises(ValueError, match="sigma_min > 0"):
        solvers.get("rk45")(ok, torch.randn(2, 3), torch.tensor([5.0, 0.0]))


def test_finiteness_check_is_exact():
    """One reduction decides the common case; an overflowing sum of finite values is not an
    error, any NaN or inf is."""
    from fewstep.solvers.driver import all_finite

    assert all_finite(torch.full((4,), 6e4, dtype=torch.float16))  # the sum overflows fp16
    for bad in (float("nan"), float("inf"), -float("inf")):
        v = torch.zeros(3, 5)
        v[1, 2] = bad
        assert not all_finite(v)
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))  # sum is NaN
