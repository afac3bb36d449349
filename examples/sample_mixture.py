"""Sample an exact Gaussian mixture with several solvers at a few NFE budgets and compare each
with the exact PF-ODE endpoint (runs in seconds on a CPU).

    python examples/sample_mixture.py
"""

import torch

import fewstep

gm = fewstep.GaussianMixture.random(dim=16, components=8, seed=0)
x = 80.0 * torch.randn(512, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
exact = fewstep.reference_solution(gm, x, sigma_max=80.0)

print(f"{'solver':12s}" + "".join(f"{f'NFE {n}':>10s}" for n in (4, 8, 16)))
for name in ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "ipndm", "deis"):
    errors = []
    for nfe in (4, 8, 16):
        plan = fewstep.plan(name, nfe, schedule="karras", sigma_max=80.0)
        out = fewstep.solvers.get(name)(gm, x, plan.sigmas, **plan.knobs)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    print(f"{name:12s}" + "".join(f"{e:10.4f}" for e in errors))
