"""A tuned solver in a diffusers pipeline: tuned on ``diffusers:PATH``, a tiny
saved DDPMPipeline (nothing downloaded), loaded into the pipeline through
``FewstepScheduler.from_config(config, solver=PATH, model=pipe.unet)``. The scheduler publishes
exactly the artefact's sigmas and NFE and gives fewstep's own ``solvers.sample`` with the tuned
solver on the same start noise; another model, no model, a schedule or another step count are
refused in one line.

Tolerance as in test_interop_scheduler.py: relative 1e-5 of the sample's scale (float32
rounding of the network's timestep vs the planned float64 sigma)."""

import pytest
import torch

from fewstep import solvers, tune
from fewstep.interop import FewstepScheduler, load_denoiser

from .conftest import tiny_unet

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 1, 8, 8)
NFE = 4
# cheap settings: 6 calibration / 6 validation noises with references at rtol 1e-3 (a random
# UNet is a stiff ODE: rtol 1e-6 costs minutes), few grid points and fit iterations
OPTIONS = {"gits": {"grid_size": 12, "substeps": 2}, "s4s": {"iters": 3}}


@pytest.fixture(scope="module")
def tuned(pipeline_dir, tmp_path_factory):
    """method -> (artefact path, TunedSolver) tuned on the saved pipeline as ``fewstep tune
    --teacher diffusers:PATH`` does (the same teacher builder; the CLI has no --rtol)."""
    root = tmp_path_factory.mktemp("tuned")
    out = {}
    for method, options in OPTIONS.items():
        ts = tune.tune(f"diffusers:{pipeline_dir}", method, NFE, n_cal=6, n_val=6, rtol=1e-3,
                       cache=root / "refs", **options)
        path = str(ts.save(root / method))
        out[method] = path, solvers.get(path).tuned
    return out


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    p = diffusers.DDPMPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("method", list(OPTIONS))
def test_tuned_solver_in_a_pipeline_equals_fewstep_sample(pipe, pipeline_dir, tuned, method):
    path, ts = tuned[method]
    assert ts.teacher == f"diffusers:{pipeline_dir}"
    sched = FewstepScheduler.from_config(pipe.scheduler.config, solver=path, model=pipe.unet)
    assert "model" not in sched.config  # the network is never part of the config
    pipe.scheduler = sched
    calls, finals = [0], []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    step = sched.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        finals.append(out.prev_sample)
        return out

    sched.step = recording_step
    try:
        pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(1),
             num_inference_steps=NFE, output_type="pt")
    finally:
        hook.remove()
    # the schedule and the NFE are the artefact's
    assert calls[0] == NFE == len(sched.timesteps) == ts.nfe
    evals = ts.sigmas[:-1] if ts.eval_sigmas is None else ts.eval_sigmas
    assert torch.equal(sched.sigmas, torch.cat([evals, ts.sigmas[-1:]]))
    assert torch.equal(sched._plan.sigmas, ts.sigmas)
    # fewstep's own sample with the tuned solver, from the pipeline's start noise
    D = load_denoiser(pipeline_dir)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = solvers.sample(D, D.initial_sample(noise, float(sched.sigmas[0])), path, NFE)
    scale = float(direct.abs().max())
    assert float((finals[-1] - direct).abs().max()) <= 1e-5 * scale


def test_tuned_solver_refusals(pipe, tuned):
    path, ts = tuned["gits"]
    config = pipe.scheduler.config if not isinstance(pipe.scheduler, FewstepScheduler) else \
        diffusers.DDPMScheduler().config
    with pytest.raises(ValueError, match=r"tuned solver.*pass that network.*model=pipe\.unet"):
        FewstepScheduler.from_config(config, solver=path)
    with pytest.raises(ValueError, match=r"was tuned on teacher 'diffusers:.*fingerprint "
                                         rf"{ts.teacher_fingerprint}\); this teacher "
                                         r"'UNet2DModel' has fingerprint"):
        FewstepScheduler.from_config(config, solver=path, model=tiny_unet(seed=5))
    with pytest.raises(ValueError, match="runs on its own sigmas; schedule='karras'"):
        FewstepScheduler.from_config(config, solver=path, model=pipe.unet, schedule="karras")
    with pytest.raises(ValueError, match=r"starts at sigma .*\(another noise process\)"):
        FewstepScheduler.from_config({**config, "beta_end": 0.03}, solver=path,
                                     model=pipe.unet)
    sched = FewstepScheduler.from_config(config, solver=path, model=pipe.unet)
    with pytest.raises(ValueError, match=rf"spends exactly NFE {NFE}; got nfe={NFE + 2}"):
        sched.set_timesteps(NFE + 2)
    sched.set_timesteps(NFE)  # the tuned NFE plans
    assert len(sched.timesteps) == NFE
