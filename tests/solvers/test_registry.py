"""Every registered solver: plan spends exactly the NFE it promises, counted."""

import re

import pytest
import torch

import fewstep
from fewstep import CountingDenoiser, solvers

from ..conftest import planned_solvers


def test_available_lists_every_family():
    names = set(solvers.available())
    for n in ["euler", "ddim", "ddpm", "euler_ancestral", "heun", "heun_churn", "dpm_solver_1",
              "dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
              "unipc_bh1", "unipc_bh2", "unip_bh2", "ipndm", "ipndm_v", "deis",
              "dpm_solver_adaptive", "rk45"]:
        assert n in names
    assert "euler" not in solvers.available(aliases=False)
    assert solvers.get("euler").alias_of == "ddim"


@pytest.mark.parametrize("name", planned_solvers())
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 6, 7, 10, 15])
def test_plan_spends_exactly_nfe(name, nfe, mixture):
    spec = solvers.get(name)
    if nfe < spec.min_nfe:
        with pytest.raises(ValueError, match=f"nfe={nfe} is below the minimum"):
            solvers.plan(name, nfe)
        return
    p = solvers.plan(name, nfe, sigma_max=20.0)
    counter = CountingDenoiser(mixture)
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64)
    gens = solvers.generators([0, 1, 2]) if spec.stochastic else None
    knobs = {"generator": gens} if gens else {}
    out = spec(counter, x, p.sigmas, **p.knobs, **knobs)
    assert counter.nfe == nfe == p.nfe
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", planned_solvers())
@pytest.mark.parametrize("extra", [0, 3])
def test_plan_without_final_denoise_spends_exactly_nfe(name, extra, mixture):
    spec = solvers.get(name)
    nfe = max(4, spec.min_nfe) + extra
    p = solvers.plan(name, nfe, sigma_min=0.05, sigma_max=20.0, denoise_to_zero=False)
    assert float(p.sigmas[-1]) == pytest.approx(0.05)
    counter = CountingDenoiser(mixture)
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64)
    knobs = {"generator": solvers.generators([0, 1, 2])} if spec.stochastic else {}
    spec(counter, x, p.sigmas, **p.knobs, **knobs)
    assert counter.nfe == nfe


@pytest.mark.parametrize("name", solvers.available(kind="adaptive"))
def test_adaptive_solvers_report_their_count(name, mixture):
    counter, info = CountingDenoiser(mixture), {}
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64)
    solvers.get(name)(counter, x, torch.tensor([20.0, 0.01, 0.0]), info=info)
    assert info["nfe"] == counter.rows / x.shape[0] > 0  # evaluations per sample
    with pytest.raises(ValueError, match="adaptive"):
        solvers.plan(name, 10)


@pytest.mark.parametrize("name", solvers.available(kind="adaptive"))
def test_adaptive_plan_error_suggests_what_is_accepted(name, mixture):
    """The error's suggested sigmas, filled in, run (it used to suggest [sigma_max, 0], which
    the ODE and SDE solvers refuse); it names the solver's own tolerance knobs."""
    with pytest.raises(ValueError) as e:
        fewstep.sample(mixture, torch.randn(2, 4, dtype=torch.float64), name, nfe=10)
    suggested = re.search(r"sigmas=(\[[a-z_, 0-9]+\])", str(e.value)).group(1)
    sigmas = eval(suggested, {"sigma_max": 20.0, "sigma_min": 0.01})
    tolerances = [k for k in solvers.get(name).fn.knobs if k in ("rtol", "atol", "tol")]
    assert tolerances and f"follows {'/'.join(tolerances)}" in str(e.value)
    spec = solvers.get(name)
    knobs = {"generator": solvers.generators([0, 1])} if spec.stochastic else {}
    out = fewstep.sample(mixture, 20.0 * torch.randn(2, 4, dtype=torch.float64), name,
                         sigmas=sigmas, **knobs)
    assert torch.isfinite(out).all()


def test_sample_convenience(mixture):
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64)
    a = fewstep.sample(mixture, x, "dpmpp_2m", nfe=8, schedule_kwargs={"sigma_max": 20.0})
    p = solvers.plan("dpmpp_2m", 8, sigma_max=20.0)
    torch.testing.assert_close(a, solvers.sample_dpmpp_multistep(mixture, x, p.sigmas))
    with pytest.raises(ValueError, match="exactly one of"):
        fewstep.sample(mixture, x, "ddim")


def test_singlestep_orders_cover_the_budget():
    assert solvers.singlestep_orders(7, 3) == [3, 3, 1]
    assert solvers.singlestep_orders(6, 3) == [3, 2, 1]
    assert solvers.singlestep_orders(6, 2) == [2, 2, 1, 1]
    assert solvers.singlestep_orders(7, 3, denoise_to_zero=False) == [3, 3, 1]
    for nfe in range(1, 30):
        for k in (1, 2, 3):
            assert sum(solvers.singlestep_orders(nfe, k)) == nfe


def test_unknown_schedule_kwarg_is_named():
    with pytest.raises(ValueError, match="schedule 'karras' has no option 'sigma_mx'; it accepts "
                                         "sigma_min, sigma_max, rho, final_zero"):
        solvers.plan("ddim", 5, sigma_mx=20.0)
