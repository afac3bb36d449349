"""Every registered solver in float16 and bfloat16 against the same solver in float32.

    PYTHONPATH=src .venv/bin/python benchmarks/solver_precision.py [--nfe 10] [--batch 256]

The network is the exact 4-d Gaussian mixture of the solver tests (computed in float32
whatever its input, answered in the input's dtype); the start noise, sigmas (Karras,
sigma_max = 80) and per-sample generators are the same in every run. The error is the RMS
of ``out - out_float32`` over all samples, relative to the RMS of ``out_float32``; the last
column is the same figure for a float32 run whose start noise and network (input, sigma and
output) are rounded to bfloat16: what the network's rounding alone costs, the floor any
solver state can reach. Since solvers keep their state in float32, the bfloat16 column equals
it.
"""

from __future__ import annotations

import argparse

import torch

from fewstep import GaussianMixture, solvers

MIXTURE = GaussianMixture.random(4, 4, spread=2.0, std=0.5, seed=3)
SIGMA_MAX = 80.0


def run(name: str, x: torch.Tensor, nfe: int, network=MIXTURE) -> torch.Tensor:
    """Solver ``name`` from ``x`` (its dtype is the run's dtype), ``nfe`` evaluations (the
    solver's ``min_nfe`` where that is more)."""
    spec = solvers.get(name)
    knobs = {}
    if not spec.plannable:
        sigmas = torch.tensor([SIGMA_MAX, 0.002, 0.0], dtype=torch.float64)
        knobs = {} if spec.stochastic else {k: 1e-3 for k in ("rtol", "atol", "tol")
                                            if k in spec.fn.knobs}
    else:
        p = solvers.plan(name, max(nfe, spec.min_nfe), sigma_max=SIGMA_MAX)  # e.g. pndm: 13
        sigmas, knobs = p.sigmas, p.knobs
    if spec.stochastic:
        knobs = {**knobs, "generator": solvers.generators(range(x.shape[0]))}
    return spec(network, x, sigmas, **knobs)


def relative_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).pow(2).mean().sqrt()
                 / ref.double().pow(2).mean().sqrt())


def rounded_network(dtype: torch.dtype):
    """The mixture seen through a network of ``dtype``: input and output rounded to it."""
    def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return MIXTURE(x.to(dtype), sigma.to(dtype)).to(x.dtype)
    return D


def _error(name: str, x: torch.Tensor, nfe: int, ref: torch.Tensor) -> float:
    try:
        return relative_rms(run(name, x, nfe), ref)
    except FloatingPointError as e:  # NonFiniteError: reported as inf
        print(f"{name} {x.dtype}: {e}")
        return float("inf")


def table(nfe: int, batch: int) -> list[tuple[str, float, float, float]]:
    """(solver, fp16 error, bf16 error, bf16-network-only error) for every solver."""
    x = SIGMA_MAX * torch.randn(batch, 4, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in solvers.available(aliases=False):
        ref = run(name, x, nfe)
        errs = [_error(name, x.to(dt), nfe, ref) for dt in (torch.float16, torch.bfloat16)]
        x_bf16 = x.to(torch.bfloat16).float()  # the bfloat16 run's start, in float32
        floor = relative_rms(run(name, x_bf16, nfe, rounded_network(torch.bfloat16)), ref)
        rows.append((name, *errs, floor))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"relative RMS error against the same solver in float32; NFE {args.nfe}, "
          f"{args.batch} samples, 4-d Gaussian mixture, Karras sigmas from {SIGMA_MAX}")
    print("| solver | float16 | bfloat16 | bf16 network, float32 solver |")
    print("|---|---|---|---|")
    for name, fp16, bf16, floor in table(args.nfe, args.batch):
        at = solvers.get(name).min_nfe
        label = f"{name} (NFE {at}, its minimum)" if at > args.nfe else name
        print(f"| {label} | {fp16:.2e} | {bf16:.2e} | {floor:.2e} |")


if __name__ == "__main__":
    main()
