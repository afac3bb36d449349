"""Solver overhead per network evaluation: fewstep vs diffusers' ``step()`` (and k-diffusion
where it has the method), the same eps network and adapter on every side, one run.

    PYTHONPATH=src .venv/bin/python benchmarks/solver_overhead.py [--shapes 1x4x64x64,...]
        [--nfe 10] [--repeats 15] [--threads 1] [--clock cpu|wall] [--device cpu]

The network is an eps predictor on a discrete VP process (1000 linear betas): for data
N(0, I) the exact ``eps(x_t, t) = std(t) x_t``, with ``std(t)`` interpolated from the beta table
at the (possibly fractional) timestep. ``--network sigma`` gives the same model as a
sigma-space denoiser ``D(x, sigma) = x / (1 + sigma^2)`` instead: fewstep and k-diffusion call
it directly and diffusers calls it through the bench's eps adapter, timed as network (as
``benchmarks/peer_overhead.py`` and the bench do). Its time is measured around every call
and removed, so
``overhead = (loop time - network time) / network calls`` is what each implementation adds
around one evaluation:

- diffusers: the usual loop ``sched.step(net(sched.scale_model_input(x, t), t), t, x)`` over
  ``sched.timesteps`` (``set_timesteps`` is set-up, not timed);
- fewstep: ``solver(ModelDenoiser(net, VPDiscrete("linear"), "eps"), x, sigmas)`` on the
  planned sigmas of the same NFE: the eps adapter (scaling, x0 from eps), input checks, the
  finiteness checks and the solver's arithmetic all count as overhead. The adapter is built
  once per shape and its per-sigma schedule cache fills in the warm-up round, as diffusers'
  ``set_timesteps`` (set-up) fills its tables: the table is the steady state of a sampler
  reused across batches (a cold cache costs the float64 look-ups once per noise level);
- k-diffusion: its sampler on the same ``ModelDenoiser`` (k-diffusion's samplers take a
  sigma-space denoiser, as fewstep's do).

Methods alternate within each repeat after a warm-up; the table gives the fastest and the
median repeat (on a shared machine the fastest is the least disturbed; the goal is judged
on it, the median is printed beside it). ``--clock cpu`` (the default) reads this process's
CPU time: with one thread it is the wall time of an idle machine, and other processes on a
busy one do not inflate it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fewstep import ModelDenoiser, solvers
from fewstep.denoiser import append_dims
from fewstep.process import VPDiscrete

PROC = VPDiscrete("linear")
CLOCK: Callable[[], float] = time.process_time


@dataclass(frozen=True)
class Peer:
    """A fewstep solver and its diffusers (and k-diffusion) counterpart."""

    solver: str
    diffusers: str
    config: dict[str, Any]
    kdiffusion: str | None = None
    kd_kwargs: dict[str, Any] = field(default_factory=dict)
    calls: Callable[[int], int] = lambda nfe: nfe  # diffusers' set_timesteps(n) for an NFE


_DPM = {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"}
PEERS = [
    Peer("ddim", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True,
                                   "timestep_spacing": "trailing"}, "sample_euler"),
    Peer("ddpm", "EulerAncestralDiscreteScheduler", {}, "sample_euler_ancestral"),
    Peer("heun", "HeunDiscreteScheduler", {}, "sample_heun", calls=lambda nfe: (nfe + 1) // 2),
    Peer("dpmpp_2m", "DPMSolverMultistepScheduler", {**_DPM, "solver_order": 2},
         "sample_dpmpp_2m"),
    Peer("dpmpp_3m", "DPMSolverMultistepScheduler", {**_DPM, "solver_order": 3},
         "sample_dpmpp_3m_sde", {"eta": 0.0}),
    Peer("dpmpp_2m_sde", "DPMSolverMultistepScheduler",
         {**_DPM, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
         "sample_dpmpp_2m_sde", {"solver_type": "midpoint"}),
    Peer("dpmpp_2s", "DPMSolverSinglestepScheduler",
         {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero",
          "lower_order_final": True},
         "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    Peer("dpm_solver_3", "DPMSolverSinglestepScheduler",
         {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    Peer("unipc_bh2", "UniPCMultistepScheduler",
         {"solver_order": 3, "solver_type": "bh2", "final_sigmas_type": "zero"}),
    Peer("deis_logrho", "DEISMultistepScheduler", {"solver_order": 3}),
]


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


class Net:
    """The timed eps network (see the module docstring): every call's time and count are
    recorded; subclasses change only :meth:`model`."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        t0 = CLOCK()
        out = self.model(x, t)
        _sync(out)
        self.seconds += CLOCK() - t0
        self.calls += 1
        return out

    def model(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1)
        sigma = PROC.sigma(t)
        std = append_dims((sigma * (1 + sigma**2).rsqrt()).to(x_t.dtype), x_t.ndim)
        return std * x_t


class SigmaNet(Net):
    """The same model as a sigma-space denoiser, ``D(x, sigma) = x / (1 + sigma^2)``."""

    def model(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1),
                        x.ndim)
        return x / (1 + s**2)


class EpsOfSigmaNet(Net):
    """``SigmaNet`` behind the bench's discrete-time eps adapter, all timed as network."""

    def model(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1)
        sigma = append_dims(PROC.sigma(t).to(x_t.dtype), x_t.ndim)
        x = x_t * (1 + sigma**2).sqrt()
        return (x - x / (1 + sigma**2)) / sigma


def overhead_per_call(net: Net, x: Tensor, run: Callable[[], Tensor]) -> float:
    """Seconds ``run()`` (a whole sampling loop from ``x``) spends outside ``net``, per call
    of ``net``; the network's own time is measured around each call and removed."""
    net.seconds, net.calls = 0.0, 0
    _sync(x)
    t0 = CLOCK()
    _sync(run())
    return (CLOCK() - t0 - net.seconds) / net.calls


NETWORK = "eps"  # or "sigma" (--network)


def k_sampling() -> types.ModuleType | None:
    """k-diffusion's ``sampling`` module alone (its package imports a training stack)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    pkg = types.ModuleType("_kd_stub")
    pkg.__path__ = [root]
    utils = types.ModuleType("_kd_stub.utils")
    utils.append_dims = append_dims  # type: ignore[attr-defined]
    sys.modules.update({"_kd_stub": pkg, "_kd_stub.utils": utils})
    mod_spec = importlib.util.spec_from_file_location("_kd_stub.sampling",
                                                      f"{root}/sampling.py")
    if mod_spec is None or mod_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def time_diffusers(peer: Peer, noise: Tensor, nfe: int) -> float:
    import diffusers

    net = Net() if NETWORK == "eps" else EpsOfSigmaNet()
    sched = getattr(diffusers, peer.diffusers)(beta_schedule="linear", **peer.config)
    sched.set_timesteps(peer.calls(nfe), device=noise.device)
    x = noise * sched.init_noise_sigma

    def run(x: Tensor = x) -> Tensor:
        for t in sched.timesteps:
            x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
        return x

    return overhead_per_call(net, x, run)


def _plan(peer: Peer, nfe: int) -> solvers.Plan:
    return solvers.plan(peer.solver, nfe, sigma_min=PROC.sigma_min, sigma_max=PROC.sigma_max)


def adapter() -> tuple[Net, Any]:
    """The timed network and the denoiser fewstep and k-diffusion call: the eps network and
    fewstep's adapter (built once per shape: its per-sigma schedule cache fills in the
    warm-up round, as diffusers' ``set_timesteps`` fills its tables), or the sigma-space
    network itself."""
    if NETWORK == "sigma":
        net = SigmaNet()
        return net, net
    net = Net()
    return net, ModelDenoiser(net, PROC, "eps")


def time_fewstep(peer: Peer, noise: Tensor, nfe: int, net: Net, D: Any) -> float:
    p = _plan(peer, nfe)
    x = noise * float(p.sigmas[0])
    return overhead_per_call(net, x, lambda: solvers.get(peer.solver)(D, x, p.sigmas,
                                                                       **p.knobs))


def time_kdiffusion(K: types.ModuleType, peer: Peer, noise: Tensor, nfe: int, net: Net,
                    D: Any) -> float:
    p = _plan(peer, nfe)
    sigmas = p.sigmas.to(noise)
    x = noise * float(p.sigmas[0])
    kw = dict(peer.kd_kwargs)
    if "sde" in peer.kdiffusion or "ancestral" in peer.kdiffusion:  # skip its Brownian tree
        kw["noise_sampler"] = lambda sigma, sigma_next: torch.randn_like(x)
    return overhead_per_call(net, x, lambda: getattr(K, peer.kdiffusion)(D, x, sigmas,
                                                                          disable=True, **kw))


Stat = tuple[float, float]  # (fastest, median) seconds


def measure(shape: tuple[int, ...], nfe: int, repeats: int, device: str,
            K: types.ModuleType | None) -> list[tuple[str, Stat, Stat, Stat | None]]:
    """(solver, fewstep, diffusers, k-diffusion) overhead per call in seconds."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    runs: dict[tuple[str, str], list[float]] = {}
    net, D = adapter()
    with torch.no_grad():
        for rep in range(repeats + 1):  # the first round is the warm-up
            for peer in PEERS:
                sides = {"fewstep": functools.partial(time_fewstep, peer, noise, nfe, net, D),
                         "diffusers": functools.partial(time_diffusers, peer, noise, nfe)}
                if K is not None and peer.kdiffusion:
                    sides["k-diffusion"] = functools.partial(time_kdiffusion, K, peer, noise,
                                                             nfe, net, D)
                for side, fn in sides.items():
                    seconds = fn()
                    if rep:
                        runs.setdefault((peer.solver, side), []).append(seconds)

    def stat(solver: str, side: str) -> Stat | None:
        v = runs.get((solver, side))
        return (min(v), statistics.median(v)) if v else None

    return [(p.solver, stat(p.solver, "fewstep"), stat(p.solver, "diffusers"),  # type: ignore
             stat(p.solver, "k-diffusion")) for p in PEERS]


def main() -> None:
    global CLOCK, NETWORK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x4x64x64,16x3x32x32,1024x2,1x4x128x128")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--network", choices=("eps", "sigma"), default="eps",
                    help="eps: an eps network, fewstep through ModelDenoiser (its cost counts "
                         "as overhead); sigma: a sigma-space denoiser, diffusers through the "
                         "eps adapter (its cost counts as network)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # diffusers' deprecation notices
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    NETWORK = args.network
    K = k_sampling()
    print(f"{args.network} network, NFE {args.nfe}, {args.threads} thread(s), {args.clock} "
          f"clock, device "
          f"{args.device}, {args.repeats} alternating repeats; overhead per network call in "
          f"us, fastest / median repeat; ratio = fewstep / diffusers (goal <= 0.25)")
    print("| shape | solver | fewstep | diffusers | ratio (fastest) | ratio (median) | "
          "k-diffusion |")
    print("|---|---|---|---|---|---|---|")
    worst = (0.0, "")
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        for solver, ours, theirs, kd in measure(shape, args.nfe, args.repeats, args.device, K):
            ratio = ours[0] / theirs[0]
            worst = max(worst, (ratio, f"{solver} at {spec}"))
            kd_s = "-" if kd is None else f"{kd[0] * 1e6:.0f} / {kd[1] * 1e6:.0f}"
            print(f"| {spec} | {solver} | {ours[0] * 1e6:.0f} / {ours[1] * 1e6:.0f} | "
                  f"{theirs[0] * 1e6:.0f} / {theirs[1] * 1e6:.0f} | {ratio:.2f} | "
                  f"{ours[1] / theirs[1]:.2f} | {kd_s} |", flush=True)
    print(f"\nworst ratio (fastest repeats): {worst[0]:.2f} ({worst[1]})")


if __name__ == "__main__":
    main()
