"""ODE error vs NFE for every fewstep solver and diffusers' schedulers on one Gaussian mixture.

    .venv/bin/python benchmarks/solver_error_table.py [--dim 16] [--components 8] [--n 512]

All methods start from the same noise ``x = sigma_max * z`` and are scored by RMSE against
the tight-tolerance reference PF-ODE endpoint (RK45, float64). fewstep solvers use Karras
sigmas (rho = 7) planned for exactly the NFE; the diffusers peers run through
``fewstep.bench.peers`` on the same denoiser with use_karras_sigmas where they support it.
Stochastic samplers are listed for completeness: their target is the distribution, not the
ODE endpoint, so their RMSE does not fall to 0.
"""

from __future__ import annotations

import argparse

import torch

from fewstep import GaussianMixture, solvers
from fewstep.bench import peers
from fewstep.solvers import reference_solution

NFES = (4, 5, 6, 8, 10, 15, 20)
PEERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "deis")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--sigma-max", type=float, default=80.0)
    ap.add_argument("--sigma-min", type=float, default=0.002)
    args = ap.parse_args()
    gm = GaussianMixture.random(args.dim, args.components, spread=1.0, std=0.25,
                                seed=args.dim).float()
    x = args.sigma_max * torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64)
    ref = reference_solution(gm.double(), x, args.sigma_max, rtol=1e-7, atol=1e-7)
    gm = gm.float()
    xf = x.float()

    def rmse(out: torch.Tensor) -> float:
        return float((out.double() - ref).pow(2).mean().sqrt())

    print(f"{args.dim}-d, {args.components}-component Gaussian mixture, {args.n} samples, "
          f"sigma {args.sigma_max:g} -> {args.sigma_min:g}, Karras rho=7; RMSE vs reference")
    print("| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for name in solvers.available(aliases=False):
        spec = solvers.get(name)
        if not spec.plannable or spec.requires:  # e.g. consistency: students only
            continue
        cells = []
        for nfe in NFES:
            if nfe < spec.min_nfe:
                cells.append("–")
                continue
            p = solvers.plan(name, nfe, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
            kw = {"generator": solvers.generators(range(args.n))} if spec.stochastic else {}
            cells.append(f"{rmse(spec(gm, xf, p.sigmas, **p.knobs, **kw)):.4f}")
        tag = " (stochastic)" if spec.stochastic else ""
        print(f"| {name}{tag} | " + " | ".join(cells) + " |")
    for peer in PEERS:
        cells = []
        for nfe in NFES:
            out = peers.run_peer(f"diffusers:{peer}", gm, xf, nfe, args.sigma_min,
                                 args.sigma_max)
            cells.append(f"{rmse(out):.4f}" if torch.isfinite(out).all() else "nan")
        print(f"| diffusers:{peer} | " + " | ".join(cells) + " |")
    for name in ("dpm_solver_adaptive", "rk45"):
        for tol in (1e-2, 1e-3):
            info: dict = {}
            out = solvers.get(name)(gm, xf, torch.tensor([args.sigma_max, args.sigma_min, 0.0]),
                                    rtol=tol, atol=tol, info=info)
            print(f"adaptive {name} rtol=atol={tol:g}: NFE {info['nfe']}, RMSE {rmse(out):.4f}")


if __name__ == "__main__":
    main()
