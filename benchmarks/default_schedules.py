"""Which sigma schedule should FewstepScheduler use by default, per noise process? Measured.

    .venv/bin/python benchmarks/default_schedules.py [--n 256] [--out FILE.md]

For each process kind a diffusers user meets (DDPM-style linear betas, Stable-Diffusion-style
scaled-linear betas, flow matching) an oracle network returns the exact prediction of a
16-d Gaussian mixture (shaped 1x4x4) in the scheduler's own conventions (alpha tables, or
the flow time t = timestep / 1000). Every sampler runs the diffusers loop
``x = sched.step(net(x, t), t, x).prev_sample`` from the same N(0, I) noise:

- FewstepScheduler with its default solver (unipc_bh2) on each fewstep schedule;
- diffusers' default for the config (UniPCMultistepScheduler with its default config for
  DDPM-style models; FlowMatchEulerDiscreteScheduler, and UniPC with flow sigmas, for flow).

Error is the RMSE of the final sample against the tight-tolerance PF-ODE endpoint (RK45,
float64) of the same noise; the noise starts at the process's first timestep (t = 999, or
flow t = 0.999: sigma-space cannot start at t = 1, an O(1e-3) difference that diffusers'
flow schedulers do not make). The table is written to ``--out`` (atomically) and printed.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor

from fewstep import GaussianMixture
from fewstep._io import atomic_write
from fewstep.interop import FewstepScheduler
from fewstep.schedules import default_schedule
from fewstep.solvers import reference_solution

NFES = (5, 8, 10, 15, 20)
GM = GaussianMixture.random(16, 8, spread=1.0, std=0.25, seed=16)
SHAPE = (1, 4, 4)

def _config(sched: Any) -> Any:
    """A diffusers scheduler's config (its type stubs do not declare it)."""
    return sched.config


CONFIGS: dict[str, tuple[Callable[[], Any], dict[str, Callable[[], Any]]]] = {
    # kind: (the model's scheduler config, {diffusers default name: scheduler factory})
    "vp_linear (DDPM)": (
        lambda: _config(diffusers.DDPMScheduler()),
        {"UniPCMultistep (default)": lambda: diffusers.UniPCMultistepScheduler()}),
    "vp_scaled_linear (SD)": (
        lambda: _config(diffusers.DDPMScheduler(beta_schedule="scaled_linear",
                                                beta_start=0.00085, beta_end=0.012)),
        {"UniPCMultistep (default)": lambda: diffusers.UniPCMultistepScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)}),
    "flow (shift 1)": (
        lambda: _config(diffusers.FlowMatchEulerDiscreteScheduler()),
        {"FlowMatchEuler (default)": lambda: diffusers.FlowMatchEulerDiscreteScheduler(),
         "UniPC flow sigmas": lambda: diffusers.UniPCMultistepScheduler(
             use_flow_sigmas=True, prediction_type="flow_prediction")}),
    "flow (shift 3)": (
        lambda: _config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)),
        {"FlowMatchEuler (default)": lambda: diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0),
         "UniPC flow sigmas": lambda: diffusers.UniPCMultistepScheduler(
             use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)}),
}
SCHEDULES = {"vp": ["karras", "log_snr", "uniform_t", "quadratic_t", "trailing"],
             "flow": ["flow_shift", "karras", "log_snr", "uniform_t", "trailing"]}


def oracle(flow: bool, alphas_cumprod: Tensor | None) -> Callable[[Tensor, Any], Tensor]:
    """The exact eps (VP) or velocity (flow) prediction of GM at diffusers timestep ``t``
    (fractional VP timesteps interpolate log-sigma, as fewstep's denoiser adapter does)."""

    def net(sample: Tensor, t: Any) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(sample.shape[0])
        if flow:  # t = 1000 is pure noise (sigma = inf): D there is the data mean
            a, s = (1 - t / 1000).clamp_min(1e-9), t / 1000
        else:
            assert alphas_cumprod is not None
            ls = 0.5 * ((1 - alphas_cumprod) / alphas_cumprod).log()
            lo = t.floor().long().clamp(max=len(ls) - 2)
            w = t - lo
            ls_t = (1 - w) * ls[lo] + w * ls[lo + 1]
            a = (1 + (2 * ls_t).exp()).rsqrt()
            s = a * ls_t.exp()
        a, s = a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
        x, sigma = sample / a, s / a
        x0 = GM(x.flatten(1), sigma.flatten()).view_as(sample)
        eps = (x - x0) / sigma
        return eps - x0 if flow else eps

    return net


def run_loop(sched: Any, nfe: int, net: Callable[[Tensor, Any], Tensor],
             noise: Tensor) -> tuple[Tensor, int]:
    """A diffusers pipeline loop; returns the final sample and the network calls."""
    sched.set_timesteps(nfe)
    x, calls = noise * getattr(sched, "init_noise_sigma", 1.0), 0
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        x = sched.step(net(x_in, t), t, x).prev_sample
        calls += 1
    return x, calls


def measure(n: int) -> list[dict[str, Any]]:
    """One row per (process, sampler, NFE): the RMSE against the reference endpoint."""
    noise = torch.randn(n, *SHAPE, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    for kind, (config_fn, peers) in CONFIGS.items():
        config = config_fn()
        flow = kind.startswith("flow")
        table = None if flow else diffusers.DDPMScheduler.from_config(
            config).alphas_cumprod.double()
        net = oracle(flow, table)
        probe = FewstepScheduler.from_config(config)
        sigma_max = float(probe.process.sigma_max)
        start = noise / float(probe.process.alpha_of_sigma(torch.tensor(sigma_max)))
        ref = reference_solution(lambda x, s: GM(x.flatten(1), s).view_as(x), start, sigma_max,
                                 rtol=1e-8, atol=1e-8)

        def rmse(out: Tensor, ref: Tensor = ref) -> float:
            return float((out - ref).pow(2).mean().sqrt())

        samplers: dict[str, Callable[[], Any]] = {
            f"fewstep unipc_bh2 + {name}": functools.partial(
                FewstepScheduler.from_config, config, schedule=name)
            for name in SCHEDULES["flow" if flow else "vp"]}
        samplers.update({f"diffusers {k}": v for k, v in peers.items()})
        for label, make in samplers.items():
            for nfe in NFES:
                out, calls = run_loop(make(), nfe, net, noise)
                rows.append({"process": kind, "sampler": label, "nfe": nfe, "calls": calls,
                             "rmse": rmse(out)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per process, one line per sampler, RMSE per NFE; the best per NFE in bold."""
    out = []
    for kind in dict.fromkeys(r["process"] for r in rows):
        mine = [r for r in rows if r["process"] == kind]
        best = {nfe: min(r["rmse"] for r in mine if r["nfe"] == nfe) for nfe in NFES}
        out += [f"### {kind}", "", "| sampler | " + " | ".join(f"NFE {k}" for k in NFES) + " |",
                "|---|" + "---:|" * len(NFES)]
        for label in dict.fromkeys(r["sampler"] for r in mine):
            cells = []
            for nfe in NFES:
                r = next(r for r in mine if r["sampler"] == label and r["nfe"] == nfe)
                v = f"{r['rmse']:.4f}" + ("" if r["calls"] == nfe else f" ({r['calls']} calls)")
                cells.append(f"**{v}**" if r["rmse"] == best[nfe] else v)
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def choose(rows: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """Per process kind ("vp_discrete", "flow"): the fewstep schedule whose worst ratio to
    diffusers' default (the first peer of each config), over every config of the kind and
    every NFE, is smallest; with that ratio (<= 1 means never worse than diffusers)."""
    ratios: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(r["process"] for r in rows):
        mine = [r for r in rows if r["process"] == kind]
        peer = next(r["sampler"] for r in mine if r["sampler"].startswith("diffusers"))
        family = "flow" if kind.startswith("flow") else "vp_discrete"
        for r in mine:
            if r["sampler"].startswith("fewstep"):
                base = next(p["rmse"] for p in mine
                            if p["sampler"] == peer and p["nfe"] == r["nfe"])
                name = r["sampler"].split(" + ")[1]
                worst = ratios.setdefault(family, {}).get(name, 0.0)
                ratios[family][name] = max(worst, r["rmse"] / base)
    return {family: min(by.items(), key=lambda kv: kv[1]) for family, by in ratios.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="samples per case")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/default_schedules.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.n)
    chosen = choose(rows)
    lines = [f"- {family}: `{name}`, at worst {ratio:.3f}x diffusers' default RMSE over every "
             f"config and NFE; fewstep's default is `{default_schedule(family)}`"
             + ("" if default_schedule(family) == name else " (DIFFERS: update "
                "fewstep.schedules.DEFAULT_SCHEDULES)") for family, (name, ratio) in chosen.items()]
    text = "\n".join([
        "# Default schedules, measured", "",
        "RMSE to the PF-ODE endpoint (16-d Gaussian mixture, exact oracle network, "
        f"{args.n} samples) of FewstepScheduler (default solver unipc_bh2) on each schedule and "
        "of diffusers' default schedulers, through the same pipeline loop; made by "
        "`python benchmarks/default_schedules.py`. Best per NFE in bold.", "",
        "Choice per process kind (smallest worst-case ratio to diffusers' default):", "",
        *lines, "", table(rows)])
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
