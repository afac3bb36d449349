import pytest
import torch

from fewstep.process import EDM, VE, RectifiedFlow, VPContinuous, VPDiscrete, ddpm_betas

PROCESSES = {
    "vp_discrete_linear": VPDiscrete("linear"),
    "vp_discrete_cosine": VPDiscrete("cosine"),
    "vp_discrete_scaled": VPDiscrete("scaled_linear", beta_start=0.00085, beta_end=0.012),
    "vp_linear": VPContinuous("linear"),
    "vp_cosine": VPContinuous("cosine"),
    "ve": VE(),
    "edm": EDM(),
    "rectified_flow": RectifiedFlow(),
}


@pytest.mark.parametrize("name", PROCESSES)
def test_sigma_time_round_trip(name):
    p = PROCESSES[name]
    t = torch.linspace(p.t_min, p.t_max, 37, dtype=torch.float64)[1:-1]
    sigma = p.sigma(t)
    assert (sigma[1:] > sigma[:-1]).all(), "sigma must increase with t"
    torch.testing.assert_close(p.t(sigma), t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.lambda_(t), -sigma.log())
    torch.testing.assert_close(p.t_of_lambda(p.lambda_(t)), t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sigma, p.std(t) / p.alpha(t))


@pytest.mark.parametrize("name", PROCESSES)
def test_sigma_space_maps_are_inverse(name):
    p = PROCESSES[name]
    x0, eps = torch.randn(2, 5, 3, dtype=torch.float64).unbind(0)
    t = torch.full((5,), 0.5 * (p.t_min + p.t_max), dtype=torch.float64)
    x_t = p.alpha(t)[:, None] * x0 + p.std(t)[:, None] * eps
    x = p.to_sigma_space(x_t, t)
    torch.testing.assert_close(x, x0 + p.sigma(t)[:, None] * eps)
    torch.testing.assert_close(p.from_sigma_space(x, p.sigma(t)), x_t)


@pytest.mark.parametrize("name", PROCESSES)
def test_time_derivatives_match_finite_differences(name):
    p = PROCESSES[name]
    t = torch.tensor([0.3 * p.t_min + 0.7 * p.t_max], dtype=torch.float64)
    dt = 1e-6 * (p.t_max - p.t_min)
    for f, df in ((p.alpha, p.d_alpha_dt), (p.std, p.d_std_dt)):
        fd = (f(t + dt) - f(t - dt)) / (2 * dt)
        torch.testing.assert_close(df(t), fd, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    ours = ddpm_betas(kind, 1000, beta_start=0.00085, beta_end=0.012)
    theirs = diffusers.DDPMScheduler(beta_schedule=kind, beta_start=0.00085,
                                     beta_end=0.012).betas.double()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_discrete_integer_timesteps_are_exact():
    p = VPDiscrete("linear")
    t = torch.arange(0, 1000, 7)
    ab = p.alphas_cumprod[t]
    torch.testing.assert_close(p.sigma(t.double()), ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(p.t(((1 - ab) / ab).sqrt()), t.double(), rtol=0, atol=1e-9)


def test_discrete_fractional_timesteps_interpolate_log_sigma():
    p = VPDiscrete("linear")
    s = p.sigma(torch.tensor([10.25], dtype=torch.float64))
    expected = (0.75 * p.log_sigmas[10] + 0.25 * p.log_sigmas[11]).exp()
    torch.testing.assert_close(s, expected.reshape(1))


def test_rectified_flow_sigma():
    p = RectifiedFlow()
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(p.sigma(t), t / (1 - t))


@pytest.mark.parametrize("bad", [lambda: ddpm_betas("nope"), lambda: VPContinuous("nope"),
                                 lambda: VPDiscrete(torch.tensor([0.5, 1.5]))])
def test_bad_process_arguments_raise(bad):
    with pytest.raises(ValueError):
        bad()
