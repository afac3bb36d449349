"""Cross-checks: fewstep's solvers equal diffusers' schedulers on the same discrete-VP model
when configured identically (same timesteps, same start noise).

diffusers keeps its sigma tables in float32, so agreement is to ~1e-5 (DDIM, DPM-Solver++,
UniPC) and ~5e-4 for DEIS, whose closed-form log-rho integrals lose digits in float32."""

import pytest
import torch

from fewstep import GaussianMixture, ModelDenoiser, solvers
from fewstep.process import VPDiscrete

diffusers = pytest.importorskip("diffusers")

PROC = VPDiscrete("linear")
GM = GaussianMixture.random(6, 3, spread=1.5, std=0.4, seed=5)


def eps_model(x_t, t):
    """An eps-predicting 'network' in VP space: the exact eps of the mixture at (x_t, t)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
    sigma = PROC.sigma(t)
    alpha = (1 + sigma**2).rsqrt()[:, None]
    x = x_t / alpha
    return (x - GM(x, sigma)) / sigma[:, None] * 1.0


def run_diffusers(sched, x_T, steps, **step_kw):
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(eps_model(sched.scale_model_input(x, t), t), t, x, **step_kw).prev_sample
    return x, sched.timesteps


def run_fewstep(name, timesteps, x_T, final_sigma=0.0, sigmas=None, **knobs):
    """Run a fewstep solver on the scheduler's own sigmas (float32 in diffusers) when given,
    else on the exact sigmas of its timesteps followed by ``final_sigma``."""
    if sigmas is None:
        sigmas = torch.cat([PROC.sigma(timesteps.double()),
                            torch.tensor([final_sigma], dtype=torch.float64)])
    sigmas = sigmas.double()
    D = ModelDenoiser(eps_model, PROC, "eps")
    x = x_T * (1 + sigmas[0] ** 2).sqrt()  # VP start noise in sigma-space
    out = solvers.get(name)(D, x, sigmas, **knobs)
    return out / (1 + sigmas[-1] ** 2).sqrt()  # back to VP scale (alpha = 1 at sigma = 0)


@pytest.fixture
def x_T():
    return torch.randn(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_ddim(x_T, steps):
    sched = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False,
                                    set_alpha_to_one=True)
    theirs, ts = run_diffusers(sched, x_T, steps, eta=0.0)
    torch.testing.assert_close(run_fewstep("ddim", ts, x_T), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order,name", [(2, "dpmpp_2m"), (3, "dpmpp_3m")])
@pytest.mark.parametrize("steps", [6, 10, 20])
def test_dpmpp_multistep(x_T, order, name, steps):
    sched = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=order,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
    theirs, ts = run_diffusers(sched, x_T, steps)
    ours = run_fewstep(name, ts, x_T)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# diffusers' bh1 returns NaN when the last sigma is 0 (B(h) = h = -inf there), so bh1 is
# compared with final_sigmas_type="sigma_min"; fewstep's bh1 handles sigma = 0.
@pytest.mark.parametrize("variant,final", [("bh1", "sigma_min"), ("bh2", "zero"),
                                           ("bh2", "sigma_min")])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("steps", [5, 12])
def test_unipc(x_T, variant, final, order, corrector, steps):
    sched = diffusers.UniPCMultistepScheduler(
        beta_schedule="linear", solver_order=order, solver_type=variant, predict_x0=True,
        lower_order_final=True, final_sigmas_type=final,
        disable_corrector=[] if corrector else list(range(steps)))
    theirs, ts = run_diffusers(sched, x_T, steps)
    ours = run_fewstep("unipc_bh2", ts, x_T, final_sigma=float(sched.sigmas[-1]), order=order,
                       variant=variant, corrector=corrector)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_diffusers_unipc_bh1_defect_is_still_there(x_T):
    """Documents the peer defect the bench report notes; flips when diffusers fixes it."""
    sched = diffusers.UniPCMultistepScheduler(beta_schedule="linear", solver_type="bh1",
                                              final_sigmas_type="zero")
    theirs, ts = run_diffusers(sched, x_T, 5)
    assert theirs.isnan().any()
    assert torch.isfinite(run_fewstep("unipc_bh1", ts, x_T, order=2)).all()


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_deis_logrho(x_T, order, steps):
    sched = diffusers.DEISMultistepScheduler(beta_schedule="linear", solver_order=order,
                                             lower_order_final=True)
    theirs, ts = run_diffusers(sched, x_T, steps)
    ours = run_fewstep("deis", ts, x_T, final_sigma=float(sched.sigmas[-1]), order=order,
                       basis="log_sigma")
    torch.testing.assert_close(ours, theirs, rtol=5e-4, atol=5e-4)
