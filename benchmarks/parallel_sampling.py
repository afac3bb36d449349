"""ParaDiGMS (parallel Picard sampling, Shih et al. 2023) against the sequential sampler it
parallelises: NFE, sequential rounds (network calls in a row), wall-clock, and the error.

    nice -n 10 .venv/bin/python benchmarks/parallel_sampling.py \
        [--teachers gmm16,zoo:digits-edm] [--steps 20,50] [--windows 4,8,16] [--tols 0.1,0.01] \
        [--n 256] [--repeats 3] [--threads 1] [--out benchmarks/results/parallel_sampling.md]

Per teacher and sequential grid of N DDIM steps (Karras, the teacher's sigma range), the
sequential DDIM run and ParaDiGMS with each window p and tolerance are started from the same
noise (bench seed 0). Columns: NFE (evaluations per sample), rounds (batched network calls in
sequence: the latency a parallel machine pays), wall-clock seconds of the whole batch (median
of ``--repeats`` interleaved runs on this machine), the RMS difference from the sequential
DDIM sample (what the tolerance controls), and the ODE error against the teacher's RK45
reference (what the user gets). A bench suite does not put ParaDiGMS on its NFE grid (it
cannot hold an NFE budget); this table is where it is compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from fewstep import solvers
from fewstep._io import atomic_write
from fewstep.bench import teachers
from fewstep.bench.runner import start_noise


def _run(D, x: torch.Tensor, grid: torch.Tensor, p: int, tol: float
         ) -> tuple[torch.Tensor, dict]:
    """Sequential DDIM on ``grid`` (window 0: N evaluations in N rounds) or ParaDiGMS over it."""
    if not p:
        n = len(grid) - 1
        return solvers.get("ddim")(D, x, grid), {"nfe": n, "rounds": n}
    info: dict = {}
    return solvers.get("paradigms")(D, x, grid, window=p, tol=tol, info=info), info


def rows_for(name: str, steps: list[int], windows: list[int], tols: list[float], n: int,
             repeats: int) -> list[list[str]]:
    """The table rows of one teacher."""
    t = teachers.get(name)
    D = t.denoiser
    x = start_noise(t, 0, n).float()
    ref = solvers.reference_solution(D, x, t.sigma_max, rtol=1e-4, atol=1e-4,
                                     sigma_min=t.sigma_min).double()

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).pow(2).mean().sqrt())

    rows = []
    with torch.no_grad():
        for N in steps:
            grid = solvers.plan("ddim", N, sigma_min=t.sigma_min, sigma_max=t.sigma_max).sigmas
            keys = [(0, 0.0)] + [(p, tol) for p in windows for tol in tols]
            outs: dict = {k: [] for k in keys}
            for _ in range(repeats):  # interleaved repeats: load drifts hit every method
                for key in keys:
                    t0 = time.perf_counter()
                    sample, info = _run(D, x, grid, *key)
                    outs[key].append((sample, info, time.perf_counter() - t0))
            seq = outs[(0, 0.0)][0][0]
            for (p, tol), rec in outs.items():
                sample, info = rec[0][0], rec[0][1]
                wall = statistics.median(r[2] for r in rec)
                rows.append([name, str(N), "paradigms" if p else "ddim", str(p or "-"),
                             f"{tol:g}" if p else "-", f"{info['nfe']:.0f}",
                             str(info["rounds"]), f"{wall:.3f}", f"{rms(sample, seq):.2e}",
                             f"{rms(sample, ref):.4f}"])
                print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default="gmm16,zoo:digits-edm")
    ap.add_argument("--steps", default="20,50")
    ap.add_argument("--windows", default="4,8,16")
    ap.add_argument("--tols", default="0.1,0.01")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    head = ["teacher", "steps", "method", "window", "tol", "NFE", "rounds", "wall s (batch)",
            "RMS vs sequential", "ODE error"]
    rows = []
    for name in [v for v in args.teachers.split(",") if v]:
        rows += rows_for(name, ints(args.steps), ints(args.windows),
                         [float(v) for v in args.tols.split(",") if v], args.n, args.repeats)
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                      + ["| " + " | ".join(r) + " |" for r in rows])
    text = (f"# ParaDiGMS vs sequential DDIM\n\nCommand: `benchmarks/parallel_sampling.py "
            f"--teachers {args.teachers} --steps {args.steps} --windows {args.windows} "
            f"--tols {args.tols} --n {args.n} --repeats {args.repeats} --threads "
            f"{args.threads}`; {torch.get_num_threads()} CPU thread(s), "
            f"{time.strftime('%Y-%m-%d')}.\n\n{table}\n")
    print(text)
    if args.out:
        atomic_write(Path(args.out), lambda p: p.write_text(text))


if __name__ == "__main__":
    main()
