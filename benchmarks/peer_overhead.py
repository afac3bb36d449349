"""fewstep vs diffusers: solver overhead per step of the same algorithm, at image shapes.

    .venv/bin/python benchmarks/peer_overhead.py [--shapes 3x32x32,4x64x64] [--batch 8]
        [--nfe 9] [--repeats 15] [--threads 1] [--clock wall|cpu]

Both sides run through the bench's own timing (``fewstep.bench.runner``): set-up (fewstep's
``plan``, the scheduler's construction and ``set_timesteps``) is timed apart; the network is
a closed-form Gaussian denoiser ``D(x, sigma) = x / (1 + sigma^2)`` (data N(0, I)), and the
sigma -> eps adapter diffusers needs counts as network time, so ``overhead = (wall -
network) / steps`` is each solver's own cost. Methods alternate within each repeat, after a
warm-up; the table gives medians over ``--repeats`` and the ratio fewstep / diffusers.
``--clock cpu`` times with this process's CPU time instead of the wall clock: with one
thread it is the same figure, but other processes on a busy machine do not inflate it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from fewstep.bench.runner import _timed_runs, start_noise
from fewstep.bench.suite import Case
from fewstep.bench.teachers import Teacher

PAIRS = {"heun": "diffusers:heun", "ddim": "diffusers:ddim", "dpmpp_2m": "diffusers:dpmpp_2m"}


def gaussian_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 ~ N(0, I): x / (1 + sigma^2)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return x / (1 + s**2)


def measure(shape: tuple[int, ...], batch: int, nfe: int, repeats: int) -> list[str]:
    teacher = Teacher("gauss", gaussian_denoiser, shape, 0.002, 80.0, None, kind="image")
    x = start_noise(teacher, 0, batch).float()
    cases = {m: Case("peer-overhead", "gauss", m, nfe, 0, batch, "karras", "float32", 1e-4)
             for pair in PAIRS.items() for m in pair}
    runs: dict[str, list] = {m: [] for m in cases}
    for rep in range(repeats + 1):  # the first round is the warm-up
        for m, case in cases.items():
            _, timing = _timed_runs(case, teacher, gaussian_denoiser, x, "cpu")
            if rep:
                runs[m].append(timing)

    def med(m: str, attr: str) -> float:
        return statistics.median(getattr(t, attr) for t in runs[m])

    lines = []
    for ours, peer in PAIRS.items():
        o, p = med(ours, "overhead_per_step"), med(peer, "overhead_per_step")
        lines.append(f"| {'x'.join(map(str, shape))} | {ours} | {o * 1e6:.0f} | {p * 1e6:.0f} | "
                     f"{o / p:.2f} | {med(ours, 'setup') * 1e6:.0f} | "
                     f"{med(peer, 'setup') * 1e6:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="3x32x32,4x64x64")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--nfe", type=int, default=9, help="odd: diffusers' Heun spends 2N-1")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":  # the bench's timers read time.perf_counter
        time.perf_counter = time.process_time
    import fewstep.bench.runner as runner

    runner.TIMING_REPEATS = 1  # this script alternates the methods itself
    print(f"batch {args.batch}, NFE {args.nfe}, {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.repeats} alternating repeats")
    print("| shape | algorithm | fewstep overhead/step (us) | diffusers overhead/step (us) | "
          "ratio | fewstep set-up (us) | diffusers set-up (us) |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        print("\n".join(measure(shape, args.batch, args.nfe, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
