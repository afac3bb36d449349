"""fewstep <-> diffusers, both ways, on a tiny pipeline built and saved locally.

1. A diffusers model as a fewstep denoiser: ``load_denoiser(dir)`` and any fewstep solver.
2. A fewstep solver as a diffusers scheduler: ``pipe.scheduler = FewstepScheduler.from_config(
   pipe.scheduler.config, solver=...)`` in a stock ``DDPMPipeline``.

Prints how closely each agrees with diffusers' own schedulers from the same start noise.
The UNet has random weights (nothing is downloaded), so its images are not pictures; the
figures compare the raw final samples (before the pipeline's clamp to [0, 1]).

    python examples/diffusers_pipeline.py [--steps 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import diffusers
import torch

from fewstep import solvers
from fewstep.interop import FewstepScheduler, load_denoiser

diffusers.utils.logging.set_verbosity_error()
BATCH = 4


def build_pipeline(path: Path) -> None:
    """A 41k-parameter UNet2DModel on 1x8x8 images with a default DDPMScheduler, saved."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(path)


def run(pipe, steps: int, seed: int = 1) -> tuple[torch.Tensor, int, float]:
    """Final raw sample, network calls and seconds of one pipeline call."""
    calls, finals = [0], []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    step = pipe.scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        finals.append(out.prev_sample)
        return out

    pipe.scheduler.step = recording_step
    t0 = time.perf_counter()
    pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(seed),
         num_inference_steps=steps, output_type="pt")
    seconds = time.perf_counter() - t0
    del pipe.scheduler.step
    hook.remove()
    return finals[-1], calls[0], seconds


def direct(D, solver: str, sigmas: torch.Tensor, knobs=None, seed: int = 1) -> torch.Tensor:
    """A fewstep solver on the loaded denoiser from the pipeline's start noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(BATCH, 1, 8, 8, generator=g)
    spec = solvers.get(solver)
    rng = {"generator": g} if spec.stochastic else {}
    with torch.no_grad():
        return spec(D, D.initial_sample(noise, float(sigmas[0])), sigmas, **(knobs or {}), **rng)


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> str:
    diff, scale = float((ours - theirs).abs().max()), float(theirs.abs().max())
    img = float(((ours / 2 + 0.5).clamp(0, 1) - (theirs / 2 + 0.5).clamp(0, 1)).abs().max())
    return f"{diff:9.2e} {diff / scale:9.1e} {img:9.1e}"


def demo(path: Path, n: int) -> None:
    """Save the tiny pipeline to ``path`` and print the three agreement tables at NFE ``n``."""
    build_pipeline(path)
    D = load_denoiser(path)  # unet + scheduler config, local files only
    pipe = diffusers.DDPMPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    print(f"tiny DDPMPipeline saved to {path}; denoiser: {type(D.process).__name__}, "
          f"prediction={D.prediction}, sigma in [{D.sigma_min:.4g}, {D.sigma_max:.4g}]; NFE={n}")
    head = f"{'ours':38s} {'diffusers':40s} {'max|diff|':>9s} {'rel':>9s} {'image':>9s}"

    print("\n1) load_denoiser + fewstep solver vs diffusers scheduler in DDPMPipeline "
          "(same timesteps, same start noise)")
    print(head)
    for solver, cls, kw in [("ddim", diffusers.DDIMScheduler, {"clip_sample": False}),
                            ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler, {})]:
        pipe.scheduler = cls.from_config(config, **kw)
        theirs, _, _ = run(pipe, n)
        ts = pipe.scheduler.timesteps.double()
        sigmas = torch.cat([D.process.sigma(ts), torch.zeros(1, dtype=torch.float64)])
        print(f"{'solvers.' + solver + '(load_denoiser(dir))':38s} {cls.__name__:40s} "
              f"{agreement(direct(D, solver, sigmas), theirs)}")

    print("\n2) FewstepScheduler vs diffusers' scheduler, both driving DDPMPipeline (same "
          "spacing; ddpm draws its noise from the pipeline's generator in the same order)")
    print(head)
    pairs = [("ddim", "leading", diffusers.DDIMScheduler, {"clip_sample": False}),
             ("dpmpp_2m", "trailing", diffusers.DPMSolverMultistepScheduler,
              {"timestep_spacing": "trailing"}),
             ("ddpm", "leading", diffusers.DDPMScheduler, {"clip_sample": False})]
    for solver, spacing, cls, kw in pairs:
        pipe.scheduler = cls.from_config(config, **kw)
        theirs, _, _ = run(pipe, n)
        pipe.scheduler = FewstepScheduler.from_config(
            config, solver=solver, schedule="uniform_t", schedule_kwargs={"spacing": spacing})
        ours, calls, _ = run(pipe, n)
        label = f"FewstepScheduler({solver}, {spacing})"
        print(f"{label:38s} {cls.__name__ + f' ({calls} calls)':40s} {agreement(ours, theirs)}")

    print("\n3) FewstepScheduler in DDPMPipeline vs the same solver run directly on "
          "load_denoiser (Karras schedule)")
    print(f"{'solver':14s} {'kind':10s} {'calls':>5s} {'ms':>6s} {'max|diff|':>9s} {'rel':>9s} "
          f"{'image':>9s}")
    for solver in ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "ipndm", "deis", "ddpm",
                   "dpmpp_2m_sde", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s"]:
        pipe.scheduler = FewstepScheduler.from_config(config, solver=solver)
        ours, calls, seconds = run(pipe, n)
        plan = pipe.scheduler._plan
        ref = direct(D, solver, plan.sigmas, plan.knobs)
        print(f"{solver:14s} {solvers.get(solver).kind:10s} {calls:5d} {1e3 * seconds:6.0f} "
              f"{agreement(ours, ref)}")
    sched = FewstepScheduler.from_config(config, solver="dpm_solver_3")
    sched.set_timesteps(n)
    print(f"\ndpm_solver_3 publishes its intermediate evaluations as timesteps: "
          f"{[round(float(t), 1) for t in sched.timesteps]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="NFE per sample")
    ap.add_argument("--out", type=Path, default=None, help="keep the saved pipeline here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        demo(args.out or Path(tmp) / "tiny-ddpm", args.steps)


if __name__ == "__main__":
    main()
