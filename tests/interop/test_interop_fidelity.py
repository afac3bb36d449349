"""diffusers fidelity (issue 13, items 1-5), each a replayed report: the complete source
config, zero terminal SNR, the source's own timesteps, float64 timesteps with float32 network
input, and starting by timestep value. diffusers' own schedulers on tiny random models are the
reference; nothing is downloaded.

Tolerance for sampled images: relative 1e-5 of the sample's scale (float32 network on both
sides, diffusers' float32 alpha tables vs fewstep's float64 ones); measured 2e-7 to 4e-7.
"""

import json
import math
import warnings

import pytest
import torch

from fewstep import solvers
from fewstep.interop import DiffusersDenoiser, FewstepScheduler, diffusers_process

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 1, 8, 8)
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
ZERO_SNR = {**SD_BETAS, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
            "timestep_spacing": "trailing"}


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kw)


def loop(sched, net, n, noise):
    """A diffusers-style sampling loop; returns the final sample."""
    sched.set_timesteps(n)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(net(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def assert_close_scaled(ours, theirs, rtol=1e-5):
    scale = float(theirs.abs().max())
    diff = float((ours - theirs).abs().max())
    assert diff <= rtol * scale, f"max |diff| = {diff:.3g} at scale {scale:.3g}"


# 1. the complete source config -----------------------------------------------------------


@pytest.mark.parametrize("source", ["live", "scheduler", "saved", "sparse json"])
def test_from_config_keeps_the_source_class_defaults(source, tmp_path):
    """LCMScheduler() has scaled-linear betas by default; diffusers' from_config drops
    default-valued keys, which gave sigma_max 157.4 (linear betas) instead of 14.6."""
    lcm = diffusers.LCMScheduler()
    config = {"live": lambda: lcm.config, "scheduler": lambda: lcm}.get(source)
    if config is None:
        lcm.save_config(tmp_path)
        path = tmp_path / "scheduler_config.json"
        if source == "sparse json":  # a hand-written config: class name only
            path.write_text(json.dumps({"_class_name": "LCMScheduler"}))
        config = lambda: path  # noqa: E731
    sched = quiet(FewstepScheduler.from_config, config(), solver="ddim")
    assert sched.process.sigma_max == pytest.approx(14.6146, rel=1e-4)
    torch.testing.assert_close(sched.process.alphas_cumprod.float(), lcm.alphas_cumprod,
                               rtol=2e-5, atol=0)
    # the same function builds the denoiser's process
    assert diffusers_process(config()).process.sigma_max == sched.process.sigma_max


def test_zero_snr_config_gives_the_models_alphas():
    """v-prediction with rescale_betas_zero_snr: the scheduler's alpha was 1.07x, 2.19x and
    17.7x the model's at t = 500, 900, 990."""
    ddim = diffusers.DDIMScheduler(**ZERO_SNR)
    sched = quiet(FewstepScheduler.from_config, ddim.config, solver="ddim")
    D = DiffusersDenoiser(torch.nn.Identity(), ddim.config)
    t = torch.tensor([0.0, 500, 900, 990], dtype=torch.float64)
    theirs = ddim.alphas_cumprod.double()[t.long()].sqrt()
    for process in (sched.process, D.process):
        torch.testing.assert_close(process.alpha(t), theirs, rtol=1e-5, atol=0)


# 2. zero terminal SNR --------------------------------------------------------------------


@pytest.fixture(scope="module")
def v_unet(make_unet):
    return make_unet(3)


@pytest.mark.parametrize("n", [4, 10])
def test_zero_snr_matches_ddim_trailing(v_unet, n):
    """DDIM with trailing spacing and zero terminal SNR evaluates the v-network at t = 999 on
    pure noise (alpha = 0); FewstepScheduler(ddim, schedule='source') and the denoiser's
    terminal_step + ddim reproduce it."""
    ddim = diffusers.DDIMScheduler(**ZERO_SNR, clip_sample=False)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    theirs = loop(ddim, v_unet, n, noise)
    ours = FewstepScheduler.from_config(ddim.config, solver="ddim", schedule="source")
    assert ours.unhonoured == {}
    x = loop(ours, v_unet, n, noise)
    torch.testing.assert_close(ours.timesteps, ddim.timesteps.float(), rtol=0, atol=0)
    assert ours.sigmas[0] == math.inf and ours.timesteps[0] == 999
    assert_close_scaled(x, theirs)
    D = DiffusersDenoiser(v_unet, ddim.config)
    sigmas = ours._plan.sigmas
    with torch.no_grad():
        direct = solvers.get("ddim")(D, D.terminal_step(noise, float(sigmas[0])), sigmas)
    assert_close_scaled(direct, theirs)


def test_zero_snr_first_evaluation_is_terminal_for_any_schedule(v_unet):
    """With a fewstep schedule the first of the n evaluations is at sigma = inf too, the rest
    on the finite range; the scheduler equals terminal_step + the solver on the denoiser."""
    ddim = diffusers.DDIMScheduler(**ZERO_SNR)
    sched = quiet(FewstepScheduler.from_config, ddim.config, solver="dpmpp_2m")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x = loop(sched, v_unet, 6, noise)
    assert len(sched.timesteps) == 6 and sched.timesteps[0] == 999
    assert sched.sigmas[1] == pytest.approx(sched.process.sigma_max)
    D = DiffusersDenoiser(v_unet, ddim.config)
    plan = sched._plan
    with torch.no_grad():
        start = D.terminal_step(noise, float(plan.sigmas[0]))
        direct = solvers.get("dpmpp_2m")(D, start, plan.sigmas, **plan.knobs)
    assert_close_scaled(x, direct)


def test_zero_snr_with_eps_prediction_is_refused_clearly():
    config = dict(ZERO_SNR, prediction_type="epsilon")
    with pytest.raises(ValueError, match="eps-prediction network cannot give x0 at zero SNR"):
        quiet(FewstepScheduler.from_config, config, solver="ddim").set_timesteps(4)
    D = DiffusersDenoiser(torch.nn.Identity(), config)
    with pytest.raises(ValueError, match="zero SNR"):
        D.terminal_step(torch.zeros(SHAPE), 10.0)
    with pytest.raises(ValueError, match="terminal_step"):
        D.initial_sample(torch.zeros(SHAPE), math.inf)


# 3. the source's own timesteps, and what is not honoured ----------------------------------


SOURCES = [
    (diffusers.DDIMScheduler, {"timestep_spacing": "leading", "steps_offset": 1}),
    (diffusers.DDIMScheduler, {"timestep_spacing": "linspace"}),
    (diffusers.DDIMScheduler, {"timestep_spacing": "trailing"}),
    (diffusers.DDPMScheduler, {"timestep_spacing": "leading"}),
    (diffusers.DPMSolverMultistepScheduler, {"timestep_spacing": "linspace"}),
    (diffusers.DPMSolverMultistepScheduler, {"timestep_spacing": "leading", "steps_offset": 1}),
    (diffusers.DPMSolverMultistepScheduler, {"timestep_spacing": "trailing"}),
    (diffusers.EulerDiscreteScheduler, {"timestep_spacing": "trailing", **ZERO_SNR}),
    (diffusers.FlowMatchEulerDiscreteScheduler, {"shift": 3.0}),
    (diffusers.FlowMatchEulerDiscreteScheduler, {"shift": 3.0, "shift_terminal": 0.1}),
]


@pytest.mark.parametrize("n", [5, 12])
@pytest.mark.parametrize("cls,kw", SOURCES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_source_schedule_reproduces_set_timesteps(cls, kw, n):
    source = cls(**kw)
    source.set_timesteps(n)
    sched = quiet(FewstepScheduler.from_config, source.config, solver="dpmpp_2m",
                  schedule="source")
    sched.set_timesteps(n)
    torch.testing.assert_close(sched.timesteps, source.timesteps.float(), rtol=0, atol=0)
    for name in ("timestep_spacing", "steps_offset", "shift_terminal"):
        assert name not in sched.unhonoured


def test_heun_source_publishes_its_step_starts():
    source = diffusers.HeunDiscreteScheduler()
    source.set_timesteps(4)
    sched = quiet(FewstepScheduler.from_config, source, solver="heun", schedule="source")
    sched.set_timesteps(7)  # heun: 4 steps, 7 evaluations
    starts = sched.timesteps[sched._plan.starts]
    torch.testing.assert_close(starts, torch.unique_consecutive(source.timesteps).float())


def test_unhonoured_options_are_named_in_one_line():
    ddpm = diffusers.DDPMScheduler(clip_sample=True, timestep_spacing="trailing")
    with pytest.warns(UserWarning) as record:
        sched = FewstepScheduler.from_config(ddpm.config, solver="ddim")
    assert len(record) == 1
    message = str(record[0].message)
    assert "DDPMScheduler" in message and "\n" not in message
    assert sched.unhonoured == {"clip_sample": True, "clip_sample_range": 1.0,
                                "timestep_spacing": "trailing"}
    with pytest.warns(UserWarning) as record:  # the source schedule honours the spacing
        sched = FewstepScheduler.from_config(ddpm.config, solver="ddim", schedule="source")
    assert sched.unhonoured == {"clip_sample": True, "clip_sample_range": 1.0}
    dpm = diffusers.DPMSolverMultistepScheduler(thresholding=False, use_karras_sigmas=True)
    sched = quiet(FewstepScheduler.from_config, dpm.config)
    assert {"solver_order", "algorithm_type", "use_karras_sigmas"} <= set(sched.unhonoured)
    assert "thresholding" not in sched.unhonoured and "sample_max_value" not in sched.unhonoured
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about a clean source
        FewstepScheduler.from_config(
            diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
            solver="ddim", schedule="source")


def test_from_config_of_a_live_fewstep_scheduler_is_a_copy():
    """``FewstepScheduler.from_config(sched.config)`` (one scheduler per pipeline) copies it:
    its config carries no class name, and it must not be read as a foreign source."""
    ddim = diffusers.DDIMScheduler(**ZERO_SNR)
    first = quiet(FewstepScheduler.from_config, ddim, solver="heun", schedule="source")
    again = quiet(FewstepScheduler.from_config, first.config)
    assert dict(again.config) == dict(first.config)
    assert again.unhonoured == first.unhonoured == {"clip_sample": True,
                                                    "clip_sample_range": 1.0}
    first.set_timesteps(7)
    again.set_timesteps(7)
    torch.testing.assert_close(again.timesteps, first.timesteps, rtol=0, atol=0)


def test_source_schedule_needs_the_source_class():
    with pytest.raises(ValueError, match="source scheduler's class"):
        FewstepScheduler(schedule="source")


# 4. sigma and t in float64, float32 timesteps, only the sample cast -----------------------


class Recorder(torch.nn.Module):
    """A diffusers-style network that records the timestep and input dtype it is given."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.seen, self._dtype = [], dtype

    @property
    def dtype(self):
        return self._dtype

    def forward(self, sample, timestep, return_dict=True, **_):
        self.seen.append((timestep.clone(), sample.dtype))
        return (torch.zeros_like(sample),)


@pytest.mark.parametrize("state", [torch.bfloat16, torch.float16, torch.float32])
def test_network_gets_float32_timesteps_whatever_the_state_dtype(state):
    """With bf16 state the network received t = 936.0 instead of 936.922; with a flow config
    the top level (t = 0.999) mapped to timestep 1000, outside the model's range."""
    net = Recorder(torch.bfloat16)
    D = DiffusersDenoiser(net, diffusers.DDPMScheduler().config)
    sigma = float(D.process.sigma(torch.tensor(936.922, dtype=torch.float64)))
    x = torch.zeros(SHAPE, dtype=state)
    out = D(x, sigma)
    t, dtype = net.seen[-1]
    assert t.dtype == torch.float32 and dtype == torch.bfloat16 and out.dtype == state
    assert float(t[0]) == pytest.approx(936.922, abs=1e-3)
    flow = DiffusersDenoiser(net, diffusers.FlowMatchEulerDiscreteScheduler().config)
    for t_flow in (0.998020, 0.999):
        flow(x, t_flow / (1 - t_flow))
        assert float(net.seen[-1][0][0]) == pytest.approx(1000 * t_flow, abs=1e-3)
    flow(x, flow.sigma_max)
    assert float(net.seen[-1][0][0]) == pytest.approx(999.0, abs=1e-3)


@pytest.mark.parametrize("state", [torch.bfloat16, torch.float16])
def test_scheduler_low_precision_sample_gets_float32_timesteps(state):
    ref = FewstepScheduler(solver="dpmpp_2m")
    ref.set_timesteps(6)
    sched = FewstepScheduler(solver="dpmpp_2m")
    sched.set_timesteps(6)
    assert sched.timesteps.dtype == torch.float32 and sched.sigmas.dtype == torch.float64
    y = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(state)
    x = y.float()
    for t in sched.timesteps:
        x = ref.step(torch.zeros_like(x), t, x).prev_sample
        y = sched.step(torch.zeros_like(y), t, y).prev_sample
        assert y.dtype == state
    # the solver state stays float32: only the returned sample is rounded
    torch.testing.assert_close(y.float(), x.to(state).float(), rtol=0, atol=0)


# 5. start by value among equal timesteps ---------------------------------------------------


def test_start_by_value_picks_the_step_start_among_equal_timesteps(make_unet):
    """heun publishes each inner sigma twice (a step's end, the next step's start); a loop
    starting at timesteps[2] without set_begin_index was refused at timesteps[1]."""
    unet = make_unet(2)
    sched = FewstepScheduler(solver="heun")
    sched.set_timesteps(7)
    ts = sched.timesteps
    assert ts[1] == ts[2] and 2 in sched._plan.starts and 1 not in sched._plan.starts
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def run(begin):
        sched.set_timesteps(7)
        if begin:
            sched.set_begin_index(2)
        x = noise
        with torch.no_grad():
            for t in sched.timesteps[2:]:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    torch.testing.assert_close(run(begin=False), run(begin=True), rtol=0, atol=0)


# 6. overhead: schedule values come from per-sigma caches, not float64 look-ups per call -----


def test_no_float64_schedule_lookups_per_step(monkeypatch, make_unet):
    calls = []
    sched = FewstepScheduler(solver="dpmpp_2m")
    D = DiffusersDenoiser(make_unet(0), diffusers.DDPMScheduler().config)
    for process in (sched.process, D.process):
        t = process.t
        monkeypatch.setattr(process, "t", lambda s, t=t: calls.append(1) or t(s))
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    D(x, 3.0)
    calls.clear()
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
    for _ in range(3):
        D(x, 3.0)
        D(x, torch.full((SHAPE[0],), 3.0))
    assert calls == []
