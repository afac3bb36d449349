"""A fewstep LCM exported to diffusers: a standard LCMScheduler loop over the exported model
gives fewstep's consistency sampler's samples on the same noise."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import LCMScheduler

from fewstep import solvers
from fewstep.interop.export import FewstepLCMModel, export_lcm, lcm_sigmas
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet


def _lcm(seed=0):
    torch.manual_seed(seed)
    f = ConsistencyPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                                          num_classes=3, w_embedding=True))
    with torch.no_grad():  # a "trained" w embedding: not its zero init, so w matters
        for p in f.net.embed.w.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return f.eval()


def _diffusers_loop(model, scheduler, noise, steps, seed, **cond):
    """The standard diffusers LCM sampling loop (as LatentConsistencyModelPipeline runs it)."""
    scheduler.set_timesteps(steps)
    gens = solvers.sample_generators(seed, noise.shape[0])
    x = noise
    for t in scheduler.timesteps:
        out = model(x, t, **cond).sample
        x = scheduler.step(out, t, x, generator=gens).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("scaling", [10.0, 0.002])  # 0.002: c_skip up to 0.5, not ~1e-8
def test_exported_lcm_in_a_diffusers_loop_equals_fewsteps_sampler(tmp_path, steps, scaling):
    f = _lcm()
    root = export_lcm(f, tmp_path / "lcm", scheduler_config={"timestep_scaling": scaling})
    model = FewstepLCMModel.from_pretrained(str(root), subfolder="unet").eval()
    scheduler = LCMScheduler.from_pretrained(str(root), subfolder="scheduler")
    n = 64
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    cond = {"cond": torch.arange(n) % 3, "w": torch.linspace(1.0, 6.0, n)}
    with torch.no_grad():
        got = _diffusers_loop(model, scheduler, noise, steps, seed=5, **cond)
        sigmas = lcm_sigmas(scheduler)
        assert len(sigmas) == steps + 1 and sigmas[0] > 10  # LCM's first timestep is 999
        x = noise * (1 + sigmas[0] ** 2).sqrt().float()  # x_T / sqrt(abar_T)
        want = solvers.get("consistency")(f, x, sigmas, sigma_min=0.0, cond=cond,
                                          generator=solvers.sample_generators(5, n))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # w reaches the exported network: another w, another sample
        other = _diffusers_loop(model, scheduler, noise, steps, seed=5,
                                **{**cond, "w": cond["w"] + 2})
    assert (other - got).abs().max() > 1e-3


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="ConsistencyPrecond"):
        export_lcm(EDMPrecond(MLPDenoiserNet(2, hidden=8, depth=1)), tmp_path / "a")
    with pytest.raises(ValueError, match="predicts the sample"):
        export_lcm(_lcm(), tmp_path / "b", scheduler_config={"prediction_type": "epsilon"})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        export_lcm(_lcm(), tmp_path / "c")
    with pytest.raises(ValueError, match="beta_schedule"):
        export_lcm(_lcm(), tmp_path / "d", scheduler_config={"beta_schedule": "sigmoid"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing half-written


def _trained(net, x0, steps=3):
    """A consistency student ``net`` trained by consistency training for ``steps`` steps."""
    from fewstep.distill import get_method
    from fewstep.train import TrainConfig, train

    torch.manual_seed(0)
    res = train(get_method("ct")(), ConsistencyPrecond(net), x0,
                TrainConfig(steps=steps, batch_size=16, lr=1e-2, progress=False))
    return res.ema.eval()


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("kind", ["vector", "latent"])
def test_the_export_is_a_pipeline_directory_that_samples_like_fewstep(tmp_path, steps, kind):
    from diffusers import DDPMPipeline, DiffusionPipeline

    from fewstep.nets import UNet

    if kind == "vector":
        shape, f = (2,), _trained(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=16),
                                  torch.randn(64, 2))
        sample_shape = None  # an MLP knows its width
    else:  # a student in a 2x4x4 latent space
        shape = (2, 4, 4)
        f = _trained(UNet(2, 8, (1, 2), 1, emb_dim=16), torch.randn(32, *shape))
        sample_shape = shape
    root = export_lcm(f, tmp_path / "lcm", sample_shape=sample_shape)
    pipe = DiffusionPipeline.from_pretrained(str(root))
    assert isinstance(pipe, DDPMPipeline)
    assert isinstance(pipe.unet, FewstepLCMModel) and isinstance(pipe.scheduler, LCMScheduler)
    n = 16
    with torch.no_grad():
        got = pipe(batch_size=n, generator=solvers.sample_generators(3, n),
                   num_inference_steps=steps, output_type="pt").images
        gens = solvers.sample_generators(3, n)  # the same draws: start noise, then re-noising
        noise = torch.cat([torch.randn(1, *shape, generator=g) for g in gens])
        sigmas = lcm_sigmas(pipe.scheduler)
        x = noise * (1 + sigmas[0] ** 2).sqrt().float()
        want = solvers.get("consistency")(f, x, sigmas, sigma_min=0.0, generator=gens)
    assert got.shape == (n, *shape)
    torch.testing.assert_close(got, (want / 2 + 0.5).clamp(0, 1), rtol=1e-4, atol=1e-4)
    assert ((got > 0) & (got < 1)).float().mean() > 0.5  # mostly inside the clamp


def test_a_convolutional_student_needs_its_sample_shape(tmp_path):
    from fewstep.nets import UNet

    f = ConsistencyPrecond(UNet(2, 8, (1, 2), 1, emb_dim=16))
    with pytest.raises(ValueError, match=r"sample_shape=\(C, H, W\)"):
        export_lcm(f, tmp_path / "a")
    with pytest.raises(ValueError, match=r"sample_shape=\(3, 4, 4\)"):
        export_lcm(f, tmp_path / "b", sample_shape=(3, 4, 4))
    assert not any(tmp_path.iterdir())
