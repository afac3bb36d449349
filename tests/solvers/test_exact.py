"""Closed-form answers: Dirac data and the single-Gaussian flow."""

import math

import pytest
import torch

from fewstep import schedules, solvers

from ..conftest import deterministic_solvers

MU = torch.tensor([[1.5, -0.5, 0.25]], dtype=torch.float64)


def dirac(x, sigma):
    return MU.expand_as(x)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "unipc_bh1",
                                  "dpm_solver_1", "deis", "ipndm"])
def test_one_step_is_exact_on_dirac_data(name):
    x = 50.0 * torch.randn(4, 3, dtype=torch.float64)
    p = solvers.plan(name, 1, sigma_max=50.0)
    torch.testing.assert_close(solvers.get(name)(dirac, x, p.sigmas), MU.expand(4, 3))


@pytest.mark.parametrize("name", deterministic_solvers())
def test_every_deterministic_solver_follows_the_dirac_flow(name):
    """For a Dirac the PF-ODE is x(s) = mu + (x - mu) s / s0: every solver is exact."""
    x = 10.0 * torch.randn(4, 3, dtype=torch.float64)
    sig = schedules.karras(7, 0.05, 10.0, final_zero=False)
    spec = solvers.get(name)
    knobs = {"orders": [spec.order] * 6} if spec.kind == "singlestep" else {}
    out = spec(dirac, x, sig, **knobs)
    torch.testing.assert_close(out, MU + (x - MU) * 0.05 / 10.0, rtol=1e-10, atol=1e-10)


def _slope(name, gaussian, Ns):
    spec = solvers.get(name)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 200
    exact = gaussian.flow(x, 200.0, 0.1)
    errs = []
    for N in Ns:
        sig = schedules.log_snr(N + 1, 0.1, 200.0, final_zero=False)
        knobs = {"orders": [spec.order] * N} if spec.kind == "singlestep" else {}
        if "lower_order_final" in spec.fn.knobs:
            knobs["lower_order_final"] = False
        errs.append(float((spec(gaussian, x, sig, **knobs) - exact).abs().max()))
    return math.log(errs[-2] / errs[-1]) / math.log(Ns[-1] / Ns[-2]), errs


def expected_order(name: str) -> float:
    """Nominal order; a multistep method warms up with a first-order step whose O(h^2) local
    error bounds its global order at 2, unless a corrector raises the warm-up (UniPC)."""
    spec = solvers.get(name)
    if spec.kind == "singlestep":
        return spec.order
    if name.startswith("unipc"):
        return min(spec.order, 3)
    if name in ("ipndm",):  # fixed Adams weights on a non-uniform grid: order 2
        return 2
    if name.startswith("deis") or name == "ipndm_v":
        return min(spec.order, 2.5)
    return min(spec.order, 2)


@pytest.mark.parametrize("name", deterministic_solvers())
def test_convergence_order_matches_nominal(name, single_gaussian):
    """Log-log slope of max error vs steps (40 -> 80, log-SNR grid, sigma 200 -> 0.1) is at
    least the expected order minus 0.25."""
    slope, errs = _slope(name, single_gaussian, [40, 80])
    assert slope >= expected_order(name) - 0.25, (slope, errs)
    assert errs[-1] < 0.1
