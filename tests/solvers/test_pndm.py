"""PNDM as published: pseudo Runge-Kutta warm-up then pseudo linear multistep, cross-checked
against diffusers' PNDMScheduler with its Runge-Kutta steps on (skip_prk_steps=False)."""

import pytest
import torch

from fewstep import CountingDenoiser, schedules, solvers
from fewstep.solvers.pndm import pndm_orders


def test_published_budget_has_three_warmup_steps():
    """F-PNDM: 3 pseudo Runge-Kutta steps = 12 evaluations, then 1 per multistep step."""
    assert pndm_orders(19) == [4, 4, 4] + [1] * 7
    assert pndm_orders(10) == [4, 4, 1, 1]  # short budget: fewer warm-up steps
    assert pndm_orders(4) == [1, 1, 1, 1]   # no Runge-Kutta step fits before the step to 0
    assert pndm_orders(4, denoise_to_zero=False) == [4]
    p = solvers.plan("pndm", 19, sigma_max=20.0)
    assert p.steps == 10 and p.knobs["orders"] == (4, 4, 4) + (1,) * 7


def test_warmup_is_rk4_in_sigma(single_gaussian):
    """With the default sigma midpoints a pseudo Runge-Kutta step is classical RK4 on
    dx/dsigma = eps: fourth-order convergence against the closed-form flow."""
    x = 20.0 * torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errs = []
    for n in (20, 40):
        sig = schedules.log_snr(n + 1, 0.5, 20.0, final_zero=False)
        out = solvers.get("pndm")(single_gaussian, x, sig, orders=[4] * n)
        errs.append(float((out - single_gaussian.flow(x, 20.0, 0.5)).abs().max()))
    assert errs[0] / errs[1] > 2 ** 3.75, errs


def test_default_orders_are_the_published_structure(mixture):
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64)
    sig = schedules.karras(10, 0.002, 20.0)
    counter = CountingDenoiser(mixture)
    out = solvers.get("pndm")(counter, x, sig)
    assert counter.nfe == 12 + 7
    torch.testing.assert_close(out, solvers.get("pndm")(mixture, x, sig,
                                                         orders=[4, 4, 4] + [1] * 7))


@pytest.mark.parametrize("knobs,match", [
    ({"orders": [4, 2, 1]}, "must be 4 .* or 1"),
    ({"orders": [4, 4, 4]}, "step to sigma=0 must be a multistep step"),
    ({"orders": [4, 1, 1], "mid_sigmas": [3.0, 2.0]}, "2 entries for 1 pseudo"),
    ({"orders": [4, 1, 1], "mid_sigmas": [6.0]}, "mid sigma 6 is not inside step"),
])
def test_bad_knobs_are_named(knobs, match, mixture):
    with pytest.raises(ValueError, match=match):
        solvers.get("pndm")(mixture, torch.randn(2, 4, dtype=torch.float64),
                            [5.0, 1.0, 0.5, 0.0], **knobs)


def test_agrees_with_diffusers_pndm(single_gaussian):
    """Same model, same timesteps: diffusers' PNDMScheduler (skip_prk_steps=False) on a
    linear-beta DDPM eps model, against fewstep's PNDM in sigma-space with the scheduler's
    grid and half-step midpoints sigma(t - delta/2)."""
    diffusers = pytest.importorskip("diffusers")
    n = 10
    sched = diffusers.PNDMScheduler(beta_schedule="linear", skip_prk_steps=False,
                                    set_alpha_to_one=True)
    sched.set_timesteps(n)
    acp = sched.alphas_cumprod.double()

    def sigma(t):
        return float(((1 - acp[t]) / acp[t]).sqrt())

    def eps_model(x_vp, t):
        a, s = float(acp[t].sqrt()), sigma(t)
        x = x_vp / a
        return (x - single_gaussian(x, torch.full((x.shape[0],), s, dtype=x.dtype))) / s

    x_vp = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    theirs = x_vp.clone()
    for t in sched.timesteps:
        theirs = sched.step(eps_model(theirs, int(t)), t, theirs).prev_sample
    assert len(sched.timesteps) == 12 + 7  # F-PNDM's 12 warm-up evaluations

    ratio = 1000 // n
    grid = [900 - ratio * i for i in range(n)]
    sigmas = [sigma(t) for t in grid] + [0.0]
    mids = [sigma(t - ratio // 2) for t in grid[:3]]
    x = x_vp / float(acp[grid[0]].sqrt())
    counter = CountingDenoiser(single_gaussian)
    ours = solvers.get("pndm")(counter, x, sigmas, mid_sigmas=mids)
    assert counter.nfe == 19
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_no_plan_below_the_published_warmup_and_ddim_accuracy_from_it():
    """Below 13 evaluations (3 pseudo Runge-Kutta steps + the step to 0) the plan degenerated to
    orders like (4, 1): 10x DDIM's error at NFE 5 on this 16-d mixture. From the minimum on
    pndm stays within 1.5x of DDIM (1.48x at 13, its four steps span 80 -> 0) and is at
    least as accurate from 14 evaluations (measured ratios 0.69-0.99 up to 24)."""
    from fewstep.analytic import GaussianMixture
    from fewstep.solvers import reference_solution

    assert solvers.get("pndm").min_nfe == 13
    with pytest.raises(ValueError, match="nfe=12 is below the minimum of 13 for solver 'pndm'"):
        solvers.plan("pndm", 12)
    m = GaussianMixture.random(16, 8, seed=0)
    x = 80.0 * torch.randn(256, 16, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
    ref = reference_solution(m, x, 80.0)

    def rmse(name, nfe):
        p = solvers.plan(name, nfe)
        return float((solvers.get(name)(m, x, p.sigmas, **p.knobs) - ref).pow(2).mean().sqrt())

    start = solvers.get("pndm").min_nfe
    ratios = {nfe: rmse("pndm", nfe) / rmse("ddim", nfe) for nfe in range(start, 25)}
    assert max(ratios.values()) <= 1.5, ratios
    assert all(r <= 1.0 for nfe, r in ratios.items() if nfe > 13), ratios
