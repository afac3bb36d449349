"""diffusers model -> fewstep denoiser: a saved tiny DDPMPipeline loaded through
``load_denoiser`` and sampled with fewstep's solvers gives the images diffusers' own schedulers
give in the same pipeline from the same start noise.

Tolerance: relative 1e-5 of the sample's scale. Both sides run the network in float32;
diffusers keeps alphas_cumprod in float32 while fewstep's table is float64, and the random
tiny UNet's raw samples reach |x| ~ 1e2, so float32 rounding alone is ~1e-7 relative.
Measured max |diff| / max |x|: 3e-7 (DDIM), 4e-7 (DPM-Solver++(2M)), over 5-25 steps.
"""

import pytest
import torch

from fewstep import CountingDenoiser, solvers
from fewstep.interop import DiffusersDenoiser, load_denoiser

diffusers = pytest.importorskip("diffusers")

SHAPE = (4, 1, 8, 8)


def run_pipeline(pipe, steps, seed=1, **kw):
    """Run the pipeline; return its images and the raw final sample (before /2 + 0.5, clamp)."""
    samples = []
    step = pipe.scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        samples.append(out.prev_sample)
        return out

    pipe.scheduler.step = recording_step
    try:
        images = pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(seed),
                      num_inference_steps=steps, output_type="pt", **kw).images
    finally:
        del pipe.scheduler.step
    return images, samples[-1]


def fewstep_on_timesteps(D, solver, timesteps, seed=1, final_sigma=0.0):
    """A fewstep solver on the sigmas of diffusers' timesteps, from the pipeline's start noise."""
    sigmas = torch.cat([D.process.sigma(timesteps.double()),
                        torch.tensor([final_sigma], dtype=torch.float64)])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return solvers.get(solver)(D, D.initial_sample(noise, float(sigmas[0])), sigmas)


def assert_same_samples(ours, theirs, rtol=1e-5):
    scale = float(theirs.abs().max())
    diff = float((ours - theirs).abs().max())
    assert diff <= rtol * scale, f"max |diff| = {diff:.3g} at scale {scale:.3g}"
    images = ((ours / 2 + 0.5).clamp(0, 1), (theirs / 2 + 0.5).clamp(0, 1))
    torch.testing.assert_close(*images, rtol=0, atol=rtol * scale)


@pytest.fixture(scope="module")
def loaded_pipe(pipeline_dir):
    p = diffusers.DDPMPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def pipe(loaded_pipe):
    """The pipeline with its saved DDPMScheduler back (tests swap schedulers)."""
    loaded_pipe.scheduler = diffusers.DDPMScheduler()
    return loaded_pipe


def test_load_denoiser_from_pipeline_dir(pipeline_dir):
    D = load_denoiser(pipeline_dir)
    assert isinstance(D, DiffusersDenoiser)
    assert D.prediction == "eps"
    assert D.sigma_min == pytest.approx(0.01, rel=1e-3)
    assert D.sigma_max == pytest.approx(157.4, rel=1e-3)
    x = torch.randn(SHAPE)
    assert D(x, torch.full((SHAPE[0],), 2.0)).shape == x.shape
    assert D(x, 2.0).shape == x.shape  # a scalar sigma is broadcast


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_ddim_matches_diffusers_ddim_scheduler(pipe, pipeline_dir, steps):
    D = load_denoiser(pipeline_dir)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    _, theirs = run_pipeline(pipe, steps)
    assert_same_samples(fewstep_on_timesteps(D, "ddim", pipe.scheduler.timesteps), theirs)


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_dpmpp_2m_matches_diffusers_dpm_solver(pipe, pipeline_dir, steps):
    D = load_denoiser(pipeline_dir)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    _, theirs = run_pipeline(pipe, steps)
    assert_same_samples(fewstep_on_timesteps(D, "dpmpp_2m", pipe.scheduler.timesteps), theirs)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_predictions_match_diffusers(pipeline_factory, prediction_type):
    path = pipeline_factory(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    pipe = diffusers.DDPMPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    _, theirs = run_pipeline(pipe, 8)
    D = load_denoiser(path)
    assert D.prediction == {"v_prediction": "v", "sample": "x0"}[prediction_type]
    assert_same_samples(fewstep_on_timesteps(D, "dpmpp_2m", pipe.scheduler.timesteps), theirs)


def test_load_bare_model_dir(pipeline_dir, tmp_path):
    D0 = load_denoiser(pipeline_dir)
    x, sigma = torch.randn(SHAPE), torch.full((SHAPE[0],), 3.0)
    with torch.no_grad():
        expected = D0(x, sigma)
        # model subfolder, scheduler found next to it
        torch.testing.assert_close(load_denoiser(pipeline_dir, "unet")(x, sigma), expected)
        # bare model dir elsewhere plus an explicit scheduler config (mapping or directory)
        D0.model.save_pretrained(tmp_path / "model")
        config = diffusers.DDPMScheduler.load_config(pipeline_dir / "scheduler")
        for sched in (config, pipeline_dir / "scheduler"):
            D = load_denoiser(tmp_path / "model", scheduler_config=sched)
            torch.testing.assert_close(D(x, sigma), expected)


def test_load_errors(pipeline_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_denoiser(tmp_path / "google/ddpm-cifar10-32")
    load_denoiser(pipeline_dir).model.save_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="scheduler_config="):
        load_denoiser(tmp_path / "model")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(
        '{"_class_name": "X", "vae": ["diffusers", "AutoencoderKL"]}')
    with pytest.raises(ValueError, match="without a 'unet' or 'transformer'"):
        load_denoiser(tmp_path / "pipe")


def test_class_conditional_cfg(make_unet):
    """A class-conditional UNet (num_class_embeds) with classifier-free guidance: scale 1 is the
    conditional denoiser, other scales combine D_u + w (D_c - D_u) in one batched call."""
    unet = make_unet(3, num_class_embeds=5)  # class 4 is the null label
    config = diffusers.DDPMScheduler().config
    labels, null = torch.tensor([0, 1, 2, 3]), torch.full((4,), 4)
    D = DiffusersDenoiser(unet, config)
    calls = []
    unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]),
                                   with_kwargs=True)
    x, sigma = 5 * torch.randn(SHAPE), torch.full((4,), 5.0)
    with torch.no_grad():
        d_c, d_u = D(x, sigma, class_labels=labels), D(x, sigma, class_labels=null)
        guided1 = DiffusersDenoiser(unet, config, guidance_scale=1.0,
                                    uncond={"class_labels": null})
        torch.testing.assert_close(guided1(x, sigma, class_labels=labels), d_c, rtol=1e-5,
                                   atol=1e-5)
        calls.clear()
        guided = DiffusersDenoiser(unet, config, guidance_scale=3.0,
                                   uncond={"class_labels": null[:1]})  # batch-1 is broadcast
        out = guided(x, sigma, class_labels=labels)
    assert calls == [8]  # conditional and unconditional rows in one network call
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(d_c, d_u)
    counter = CountingDenoiser(guided)
    with torch.no_grad():
        x0 = solvers.sample(counter, x * 80, "dpmpp_2m", nfe=6, cond={"class_labels": labels},
                            schedule_kwargs={"sigma_min": D.sigma_min, "sigma_max": 80.0})
    assert torch.isfinite(x0).all() and counter.nfe == 6


def test_text_conditional_cfg():
    """encoder_hidden_states conditioning on a tiny UNet2DConditionModel, with empty-prompt
    embeddings of batch 1 as the unconditional input."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        norm_num_groups=4, attention_head_dim=2).eval()
    config = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                     beta_end=0.012).config
    prompt, empty = torch.randn(4, 3, 8), torch.randn(1, 3, 8)
    x, sigma = torch.randn(SHAPE), torch.full((4,), 2.0)
    with torch.no_grad():
        d_c = DiffusersDenoiser(unet, config)(x, sigma, encoder_hidden_states=prompt)
        d_u = DiffusersDenoiser(unet, config)(x, sigma, encoder_hidden_states=empty)
        guided = DiffusersDenoiser(unet, config, guidance_scale=7.5,
                                   uncond={"encoder_hidden_states": empty})
        out = guided(x, sigma, encoder_hidden_states=prompt)
    torch.testing.assert_close(out, d_u + 7.5 * (d_c - d_u), rtol=1e-4, atol=1e-4)


def test_flow_model_matches_flow_match_euler(make_unet):
    """A velocity-predicting UNet under FlowMatchEulerDiscreteScheduler (timestep = 1000 t):
    fewstep's DDIM in sigma = t / (1 - t) is the same Euler step in t. diffusers starts at t = 1
    (sigma = inf), which sigma-space cannot hold, so both start at t = 0.98."""
    unet = make_unet(4)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=torch.linspace(0.98, 0.05, 8).tolist())
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    x = noise
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        D = DiffusersDenoiser(unet, sched.config)
        t = sched.sigmas.double()
        sigmas = t / (1 - t)
        ours = solvers.get("ddim")(D, D.initial_sample(noise, float(sigmas[0])), sigmas)
    assert_same_samples(ours, x)


def test_dit_transformer_with_learned_sigma():
    """A class-conditional DiT transformer (timestep and class_labels by keyword, output with
    twice the channels: the learned variance is dropped) under CFG."""
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=1, out_channels=2,
        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    config = diffusers.DDIMScheduler().config
    labels, null = torch.tensor([1, 2, 3, 4]), torch.tensor([9])
    x, sigma = torch.randn(SHAPE), torch.full((4,), 3.0)
    with torch.no_grad():
        d_c = DiffusersDenoiser(dit, config)(x, sigma, class_labels=labels)
        raw = dit(x / 10**0.5, timestep=DiffusersDenoiser(dit, config).process.t(sigma).float(),
                  class_labels=labels).sample
        guided = DiffusersDenoiser(dit, config, guidance_scale=1.0, uncond={"class_labels": null})
        out = guided(x, sigma, class_labels=labels)
    assert raw.shape[1] == 2 and d_c.shape == x.shape
    torch.testing.assert_close(d_c, x - 3.0 * raw[:, :1], rtol=1e-4, atol=1e-4)  # eps half
    torch.testing.assert_close(out, d_c, rtol=1e-5, atol=1e-5)
