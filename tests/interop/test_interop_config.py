"""Scheduler configs -> noise process and prediction; DiffusersDenoiser against an oracle
network built from diffusers' own tables (not fewstep's), for every prediction type."""

import pytest
import torch

from fewstep import GaussianMixture
from fewstep.interop import (
    DiffusersDenoiser,
    prediction_from_config,
    process_from_scheduler_config,
    process_kind,
    time_scale,
)
from fewstep.process import RectifiedFlow, VPDiscrete

diffusers = pytest.importorskip("diffusers")

GM = GaussianMixture.random(4, 3, spread=1.5, std=0.4, seed=2)


class Oracle(torch.nn.Module):
    """A diffusers-style network returning the exact target of ``prediction_type`` for the
    mixture ``GM`` on 1x2x2 images, from the scheduler's own alpha tables / flow convention."""

    def __init__(self, sched, prediction_type, channels=1):
        super().__init__()
        self.sched, self.prediction_type, self.channels = sched, prediction_type, channels
        self.flow = type(sched).__name__.startswith("FlowMatch")
        self.calls = 0

    @property
    def dtype(self):
        return torch.float64

    def coefficients(self, timestep, batch):
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(batch)
        if self.flow:
            u = t / self.sched.config.num_train_timesteps
            return 1 - u, u
        ab = self.sched.alphas_cumprod.double()[t.round().long()]
        return ab.sqrt(), (1 - ab).sqrt()

    def forward(self, sample, timestep, return_dict=True, **_):
        self.calls += 1
        a, s = (v.reshape(-1, 1, 1, 1) for v in self.coefficients(timestep, sample.shape[0]))
        x, sigma = sample / a, s / a
        x0 = GM(x.flatten(1), sigma.flatten()).view_as(sample)
        eps = (x - x0) / sigma
        target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0,
                  "flow_prediction": eps - x0}[self.prediction_type]
        return (target.repeat(1, self.channels, 1, 1),)


@pytest.mark.parametrize("kw", [{"beta_schedule": "linear"}, {"beta_schedule": "scaled_linear",
                                 "beta_start": 0.00085, "beta_end": 0.012},
                                {"beta_schedule": "squaredcos_cap_v2"},
                                {"trained_betas": torch.linspace(1e-4, 0.03, 500).tolist()}])
def test_vp_process_matches_diffusers_tables(kw):
    T = len(kw.get("trained_betas", [0] * 1000))
    sched = diffusers.DDPMScheduler(**kw, num_train_timesteps=T)
    proc = process_from_scheduler_config(sched.config)
    assert isinstance(proc, VPDiscrete) and process_kind(sched.config) == "vp_discrete"
    # diffusers keeps its tables in float32: agreement to float32 precision.
    torch.testing.assert_close(proc.alphas_cumprod.float(), sched.alphas_cumprod, rtol=2e-5, atol=0)
    assert time_scale(sched.config) == 1.0


def test_flow_process_and_timestep_convention():
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    for config in (sched.config, sched, dict(sched.config, _class_name=type(sched).__name__)):
        proc = process_from_scheduler_config(config)
        assert isinstance(proc, RectifiedFlow)
        assert prediction_from_config(config) == "velocity"
        assert time_scale(config) == 1000.0
    # the smallest training time is the shifted 1/T, exactly diffusers' sigma_min
    assert proc.t_min == pytest.approx(sched.sigma_min, rel=1e-6)
    unipc = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True,
                                              prediction_type="flow_prediction")
    assert process_kind(unipc.config) == "flow"


@pytest.mark.parametrize("kind,ours", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0"),
                                       ("flow_prediction", "velocity"), ("flow", "velocity")])
def test_prediction_mapping(kind, ours):
    assert prediction_from_config({"beta_schedule": "linear", "prediction_type": kind}) == ours


@pytest.mark.parametrize("config,match", [
    ({"beta_schedule": "linear", "prediction_type": "score"}, "'score'"),
    ({"beta_schedule": "sigmoid"}, "'sigmoid'"),
    ({"beta_schedule": "linear", "timestep_type": "continuous"}, "continuous timesteps"),
    (dict(diffusers.EDMEulerScheduler().config, _class_name="EDMEulerScheduler"), "EDM"),
    (dict(diffusers.ScoreSdeVeScheduler().config, _class_name="ScoreSdeVeScheduler"),
     "ScoreSdeVeScheduler"),
    ({"noise_process": "ve"}, "'ve'"),
])
def test_unsupported_configs_raise_clear_errors(config, match):
    with pytest.raises(ValueError, match=match):
        process_from_scheduler_config(config)
        prediction_from_config(config)


SCHEDULERS = {
    "epsilon": lambda: diffusers.DDPMScheduler(prediction_type="epsilon"),
    "v_prediction": lambda: diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                                                    prediction_type="v_prediction"),
    "sample": lambda: diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                              beta_end=0.012, prediction_type="sample"),
    "flow_prediction": lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0),
}


@pytest.mark.parametrize("prediction_type", sorted(SCHEDULERS))
def test_denoiser_recovers_x0_from_oracle(prediction_type):
    sched = SCHEDULERS[prediction_type]()
    D = DiffusersDenoiser(Oracle(sched, prediction_type), sched.config)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    if D.process.__class__ is RectifiedFlow:
        t = torch.tensor([0.02, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
        sigma = t / (1 - t)
    else:  # at training timesteps, so the oracle's table lookup is exact
        sigma = D.process.sigma(torch.tensor([0.0, 10, 250, 600, 999], dtype=torch.float64))
    out = D(x, sigma)
    expected = GM(x.flatten(1), sigma).view_as(x)
    # float32 diffusers tables vs fewstep's float64 ones: ~1e-6 relative in alpha.
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_learned_variance_half_is_dropped():
    sched = diffusers.DDPMScheduler(variance_type="learned_range")
    net = Oracle(sched, "epsilon", channels=2)  # eps and a (here duplicated) variance channel
    D = DiffusersDenoiser(net, sched.config)
    x, sigma = torch.randn(3, 1, 2, 2, dtype=torch.float64), D.process.sigma(torch.tensor(300.0))
    torch.testing.assert_close(D(x, sigma), GM(x.flatten(1), sigma).view_as(x), rtol=1e-4,
                               atol=1e-5)


def test_guidance_needs_scale_and_uncond():
    sched = diffusers.DDPMScheduler()
    with pytest.raises(ValueError, match="guidance_scale= and uncond="):
        DiffusersDenoiser(Oracle(sched, "epsilon"), sched.config, guidance_scale=3.0)
