"""fewstep solver -> diffusers scheduler: FewstepScheduler drives DDPMPipeline / DDIMPipeline
end to end, spends exactly ``num_inference_steps`` network calls, and gives the result of the
same solver run directly on the loaded denoiser (same plan, start noise and generator).

Tolerance: pipeline vs direct differ only in where float32 rounding happens (the scheduler
maps the output to x0 with float64 coefficients of the planned sigma, the denoiser with those
of the float32 sigma it is called with): relative 1e-5 of the sample's scale; measured 1e-7
to 6e-7 (dpmpp_2m_sde: 2e-6).
"""

import threading

import pytest
import torch

from fewstep import GaussianMixture, NonFiniteError, solvers
from fewstep.interop import FewstepScheduler, load_denoiser, probe
from fewstep.schedules import default_schedule

diffusers = pytest.importorskip("diffusers")

SHAPE = (4, 1, 8, 8)
MULTISTEP = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "unipc_2", "ipndm", "ipndm_v", "deis",
             "ddpm", "ddim_eta", "dpmpp_2m_sde"]
SINGLESTEP = ["heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s"]


@pytest.fixture(scope="module")
def loaded_pipes(pipeline_dir):
    out = {}
    for cls in (diffusers.DDPMPipeline, diffusers.DDIMPipeline):
        p = cls.from_pretrained(pipeline_dir, local_files_only=True)
        p.set_progress_bar_config(disable=True)
        out[cls.__name__] = p
    return out


@pytest.fixture
def pipes(loaded_pipes):
    """The pipelines with their saved DDPMScheduler back (tests swap schedulers)."""
    for p in loaded_pipes.values():
        p.scheduler = diffusers.DDPMScheduler()
    return loaded_pipes


@pytest.fixture(scope="module")
def D(pipeline_dir):
    return load_denoiser(pipeline_dir)


def run(pipe, steps, seed=1):
    """Run the pipeline counting network calls; return the raw final sample and the count."""
    calls, finals = [0], []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    step = pipe.scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        finals.append(out.prev_sample)
        return out

    pipe.scheduler.step = recording_step
    try:
        pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(seed),
             num_inference_steps=steps, output_type="pt")
    finally:
        del pipe.scheduler.step
        hook.remove()
    return finals[-1], calls[0]


def direct(D, sched, seed=1):
    """The scheduler's solver run directly on the denoiser with the scheduler's plan."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=g)
    plan = sched._plan
    rng = {"generator": g} if sched.spec.stochastic else {}
    with torch.no_grad():
        x = D.initial_sample(noise, float(plan.sigmas[0]))
        return sched.spec(D, x, plan.sigmas, **plan.knobs, **rng)


def assert_close_scaled(ours, theirs, rtol=1e-5):
    scale = float(theirs.abs().max())
    diff = float((ours - theirs).abs().max())
    assert diff <= rtol * scale, f"max |diff| = {diff:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("solver", MULTISTEP + SINGLESTEP)
def test_drives_ddpm_pipeline(pipes, D, solver):
    pipe = pipes["DDPMPipeline"]
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver)
    final, calls = run(pipe, 7)
    assert calls == 7 == len(pipe.scheduler.timesteps)
    assert_close_scaled(final, direct(D, pipe.scheduler))


@pytest.mark.parametrize("solver", ["unipc_bh2", "dpm_solver_3"])
def test_drives_ddim_pipeline(pipes, D, solver):
    pipe = pipes["DDIMPipeline"]  # passes eta=0.0 and use_clipped_model_output to step()
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver)
    final, calls = run(pipe, 6)
    assert calls == 6
    assert_close_scaled(final, direct(D, pipe.scheduler))


PEERS = {  # fewstep solver and timestep spacing -> the diffusers scheduler it reproduces
    "ddim": ("leading", diffusers.DDIMScheduler, {"clip_sample": False}, "DDIMPipeline"),
    "dpmpp_2m": ("trailing", diffusers.DPMSolverMultistepScheduler,
                 {"timestep_spacing": "trailing"}, "DDPMPipeline"),
    "ddpm": ("leading", diffusers.DDPMScheduler, {"clip_sample": False}, "DDPMPipeline"),
}


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("solver", sorted(PEERS))
def test_reproduces_diffusers_scheduler(pipes, solver, steps):
    """FewstepScheduler on diffusers' timestep spacing == diffusers' own scheduler in the same
    pipeline: float32 tables vs float64 ones, measured 2e-7 to 4e-7 relative. ``ddpm`` (DDIM
    eta = 1, Song et al. 2021a) is DDPM's ancestral step and draws the same noise from the
    pipeline's generator in the same order."""
    spacing, cls, kw, pipeline = PEERS[solver]
    pipe = pipes[pipeline]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    theirs, _ = run(pipe, steps)
    expected_timesteps = pipe.scheduler.timesteps.float()
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver,
                                                  schedule="uniform_t",
                                                  schedule_kwargs={"spacing": spacing})
    ours, _ = run(pipe, steps)
    torch.testing.assert_close(pipe.scheduler.timesteps, expected_timesteps)
    assert_close_scaled(ours, theirs)


def test_every_planned_solver_publishes_nfe_timesteps():
    sched = FewstepScheduler()
    for name in solvers.available():
        spec = solvers.get(name)
        if not spec.plannable:
            continue
        nfe = max(spec.min_nfe, 7)
        p = solvers.plan(name, nfe, sigma_min=0.01, sigma_max=40.0)
        evals, starts = probe(spec, p.sigmas, p.knobs)
        assert len(evals) == nfe and len(starts) == p.steps, name
        if not spec.defaults.get("S_churn"):  # churn evaluates at a raised sigma_hat
            assert [evals[i] for i in starts] == pytest.approx(p.sigmas[:-1].tolist()), name
    sched.set_timesteps(9)
    assert sched.timesteps.shape == (9,) and sched.sigmas.shape == (10,)


GM = GaussianMixture.random(4, 3, spread=1.5, std=0.4, seed=2)


def oracle_net(config, prediction_type):
    """A diffusers-style network returning the exact target of the mixture GM (1x2x2 images),
    in the scheduler's own conventions."""
    flow = prediction_type == "flow_prediction"
    table = None if flow else diffusers.DDPMScheduler.from_config(config).alphas_cumprod.double()

    def net(sample, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(sample.shape[0])
        if flow:
            a, s = 1 - t / 1000, t / 1000
        else:  # fractional timesteps: interpolate log-sigma as the denoiser does
            lo = t.floor().long().clamp(max=998)
            w = (t - lo)[:, None, None, None]
            ls = (0.5 * ((1 - table) / table).log())
            ls = (1 - w) * ls[lo].reshape(w.shape) + w * ls[lo + 1].reshape(w.shape)
            a = (1 + (2 * ls).exp()).rsqrt().flatten()
            s = a * ls.exp().flatten()
        a, s = a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
        x, sigma = sample / a, s / a
        x0 = GM(x.flatten(1), sigma.flatten()).view_as(sample)
        eps = (x - x0) / sigma
        return {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0,
                "flow_prediction": eps - x0}[prediction_type]

    return net


@pytest.mark.parametrize("prediction_type,sched", [
    ("epsilon", diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012)),
    ("v_prediction", diffusers.DDPMScheduler(prediction_type="v_prediction",
                                             beta_schedule="squaredcos_cap_v2")),
    ("sample", diffusers.DDPMScheduler(prediction_type="sample")),
    ("flow_prediction", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)),
])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun"])
def test_predictions_through_scheduler_match_exact_denoiser(prediction_type, sched, solver):
    """A diffusers-style loop with FewstepScheduler on an oracle network equals the solver run
    on the exact mixture denoiser itself: the x0 conversion of every prediction type is right."""
    ours = FewstepScheduler.from_config(sched.config, solver=solver)
    ours.set_timesteps(8)
    net = oracle_net(sched.config, prediction_type)
    noise = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    x = noise * ours.init_noise_sigma
    for t in ours.timesteps:
        x = ours.step(net(ours.scale_model_input(x, t), t), t, x).prev_sample

    def exact(x, sigma):
        return GM(x.flatten(1), sigma).view_as(x)

    sigmas = ours._plan.sigmas
    start = noise / ours._alpha(float(sigmas[0]))
    expected = ours.spec(exact, start, sigmas, **ours._plan.knobs)
    # timesteps are published in float32, so the network sees t to ~1e-7 relative
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)


def test_flow_scheduler_shifted_grid():
    """The default is the measured one (benchmarks/default_schedules.py); the config's
    shifted uniform grid stays one name away."""
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    default = FewstepScheduler.from_config(flow.config, solver="ddim")
    assert default.schedule_name == default_schedule("flow")
    sched = FewstepScheduler.from_config(flow.config, solver="ddim", schedule="flow_shift")
    sched.set_timesteps(5)
    assert sched.prediction == "velocity"
    t = sched.timesteps / 1000
    assert t[0] == pytest.approx(0.999, rel=1e-6)  # sigma-space cannot start at t = 1
    assert t[-1] == pytest.approx(3e-3 / (1 + 2e-3), rel=1e-4)  # shifted 1/T
    u = t / (3 - 2 * t)  # undo the shift: uniform grid
    torch.testing.assert_close(u.diff(), u.diff()[:1].expand(4), rtol=1e-4, atol=0)


def test_start_at_step_boundary_like_img2img(pipes, D):
    pipe = pipes["DDPMPipeline"]
    sched = FewstepScheduler.from_config(pipe.scheduler.config, solver="dpm_solver_2")
    sched.set_timesteps(9)
    plan = sched._plan
    j = 2
    i = plan.starts[j]
    x0 = torch.rand(SHAPE) * 2 - 1
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x = sched.add_noise(x0, noise, sched.timesteps[i:i + 1])
    sched.set_begin_index(i)
    with torch.no_grad():
        start = x / sched._alpha(plan.evals[i])
        for t in sched.timesteps[i:]:
            x = sched.step(pipe.unet(x, t).sample, t, x).prev_sample
        expected = sched.spec(D, start, plan.sigmas[j:], orders=plan.knobs["orders"][j:])
    assert_close_scaled(x, expected)
    sched.set_timesteps(9)
    sched.set_begin_index(plan.starts[1] + 1)  # the midpoint evaluation of a step
    with pytest.raises(ValueError, match="intermediate evaluation"):
        sched.step(torch.zeros(SHAPE), sched.timesteps[plan.starts[1] + 1], torch.zeros(SHAPE))


def test_add_noise_matches_diffusers():
    ddpm = diffusers.DDPMScheduler()
    sched = FewstepScheduler.from_config(ddpm.config)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 400, 999])
    torch.testing.assert_close(sched.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t),
                               rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_pipeline_save(pipes, tmp_path):
    pipe = pipes["DDPMPipeline"]
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m",
                                                  solver_kwargs={"lower_order_final": False},
                                                  schedule="log_snr")
    pipe.scheduler.set_timesteps(6)
    pipe.save_pretrained(tmp_path)
    again = diffusers.DDPMPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(again.scheduler, FewstepScheduler)
    again.scheduler.set_timesteps(6)
    torch.testing.assert_close(again.scheduler.timesteps, pipe.scheduler.timesteps)
    assert again.scheduler.config.solver_kwargs == {"lower_order_final": False}
    assert load_denoiser(tmp_path).prediction == "eps"  # reads FewstepScheduler's config too


def test_abandoned_runs_are_closed_and_start_no_thread(pipes):
    pipe = pipes["DDPMPipeline"]
    before = threading.active_count()
    sched = FewstepScheduler.from_config(pipe.scheduler.config, solver="heun")
    runs = []
    for _ in range(2):
        sched.set_timesteps(7)  # closes the previous, unfinished run
        x = torch.randn(SHAPE)
        with torch.no_grad():
            for t in sched.timesteps[:3]:
                x = sched.step(pipe.unet(x, t).sample, t, x).prev_sample
        runs.append(sched._run)
        assert threading.active_count() == before
    assert runs[0].gi_frame is None and runs[1].gi_frame is not None
    sched.set_timesteps(7)
    assert runs[1].gi_frame is None


def test_errors(pipes):
    config = pipes["DDPMPipeline"].scheduler.config
    with pytest.raises(ValueError, match="adaptive"):
        FewstepScheduler.from_config(config, solver="rk45")
    with pytest.raises(ValueError, match="unknown solver 'nope'"):
        FewstepScheduler.from_config(config, solver="nope")
    with pytest.raises(ValueError, match="unknown schedule"):
        FewstepScheduler.from_config(config, schedule="cosine")
    with pytest.raises(ValueError, match="schedule 'karras' has no option 'rhoo'; it accepts "
                                         "sigma_min, sigma_max, rho, final_zero"):
        FewstepScheduler.from_config(config, schedule="karras", schedule_kwargs={"rhoo": 7.0})
    with pytest.raises(ValueError, match="schedule 'trailing' has no option 'sigma_max'; it "
                                         "accepts process, shift, final_zero"):
        FewstepScheduler.from_config(config, schedule_kwargs={"sigma_max": 40.0})
    with pytest.raises(ValueError, match="mu"):
        FewstepScheduler.from_config(
            diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ValueError, match="'score'"):
        FewstepScheduler.from_config(config, prediction_type="score")
    sched = FewstepScheduler.from_config(config, solver="ddim")
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 999, x)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="eta"):
        sched.step(x, sched.timesteps[0], x, eta=0.5)
    x = sched.step(torch.zeros(SHAPE), sched.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="in order"):
        sched.step(torch.zeros(SHAPE), sched.timesteps[0], x)
    with pytest.raises(ValueError, match="edit the sample"):
        sched.step(torch.zeros(SHAPE), sched.timesteps[1], x + 1)
    with pytest.raises(NonFiniteError):  # the x0 estimate is checked as every output is
        sched.step(torch.full(SHAPE, float("nan")), sched.timesteps[1], x)
    sched.set_timesteps(2)
    x = torch.randn(SHAPE)
    for t in sched.timesteps:
        x = sched.step(torch.zeros(SHAPE), t, x).prev_sample
    with pytest.raises(RuntimeError, match="have been stepped"):
        sched.step(torch.zeros(SHAPE), sched.timesteps[-1], x)
    churn = FewstepScheduler.from_config(config, solver="heun_churn", schedule="karras",
                                         schedule_kwargs={"sigma_max": 40.0})
    churn.set_timesteps(5)
    with pytest.raises(ValueError, match="before its first network call"):
        churn.step(torch.zeros(SHAPE), churn.timesteps[0], torch.randn(SHAPE))


def test_grad_and_inference_modes_carry_into_the_solver(make_unet):
    """The solver runs in the caller's thread, under its grad / inference mode: under
    inference_mode it works as under no_grad, and with grad enabled gradients reach the
    network through every solver step (e.g. for guidance or fine-tuning through sampling)."""
    unet = make_unet(5)
    sched = FewstepScheduler(solver="dpmpp_3m")

    def loop(mode):
        sched.set_timesteps(4)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        with mode():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    torch.testing.assert_close(loop(torch.inference_mode), loop(torch.no_grad))
    out = loop(torch.enable_grad)
    out.square().sum().backward()
    assert unet.conv_in.weight.grad is not None and unet.conv_in.weight.grad.abs().sum() > 0
