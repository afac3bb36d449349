"""Per-row teacher solves: lockstep batching vs one solver call per sigma group, same run.

    .venv/bin/python benchmarks/teacher_rows_speed.py [--threads 1] [--repeats 7]

Times ``LossContext.teacher_solve_rows`` for the targets of CD (Heun, one step from each of
N=18 Karras levels) and Direct CM (iPNDM to 0 from each of 10 levels) on the UNet teachers of
``distill_suite.py`` (8x8 digits, batch 128; 16x16, batch 64) and on its toy MLP (batch 256),
with random weights (the cost does not depend on them). "sequential" runs the groups one after
another, "lockstep" batches them (``teacher_solve_rows``' default). The two modes alternate
and the median of ``--repeats`` is kept.
Results must agree to float32 round-off; the script checks it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewstep.distill import LossContext, get_method
from fewstep.distill.consistency import karras_levels
from fewstep.nets import EDMPrecond, MLPDenoiserNet, UNet


def paths_cd(batch: int, g: torch.Generator) -> tuple[str, torch.Tensor, dict]:
    sig = karras_levels(18, 0.002, 80.0, 7.0)
    n = torch.randint(17, (batch,), generator=g)
    return "heun", torch.stack([sig[n + 1], sig[n]], 1), {}


def paths_direct(batch: int, g: torch.Generator) -> tuple[str, torch.Tensor, dict]:
    levels, paths, knobs = get_method("direct_cm")(num_scales=10, solver="ipndm", nfe=8).paths()
    return "ipndm", paths[torch.randint(len(levels), (batch,), generator=g)], knobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| target | teacher | batch | sequential s | lockstep s | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for label_t, shape, batch in (("UNet 8x8", (1, 8, 8), 128), ("UNet 16x16", (1, 16, 16), 64),
                                  ("MLP 2-d", (2,), 256)):
        torch.manual_seed(0)
        net = MLPDenoiserNet(2, hidden=128, depth=3, emb_dim=64) if len(shape) == 1 else \
            UNet(1, channels=32, channel_mult=(1, 2))
        teacher = EDMPrecond(net, 0.5).eval()
        g = torch.Generator().manual_seed(0)
        x = 10 * torch.randn(batch, *shape, generator=g)
        for label, make in (("CD (Heun, 18 levels)", paths_cd),
                            ("Direct CM (iPNDM 8 NFE, 10 levels)", paths_direct)):
            solver, paths, knobs = make(batch, g)
            times: dict[str, list[float]] = {"sequential": [], "lockstep": []}
            outs = {}
            for _ in range(args.repeats):
                for mode in times:
                    ctx = LossContext(teacher, None, torch.Generator(), batch,
                                      lockstep=mode == "lockstep")
                    t0 = time.perf_counter()
                    outs[mode] = ctx.teacher_solve_rows(solver, x, paths, **knobs)
                    times[mode].append(time.perf_counter() - t0)
            torch.testing.assert_close(outs["lockstep"], outs["sequential"], rtol=1e-4,
                                       atol=1e-4)
            s, ls = (statistics.median(times[m]) for m in ("sequential", "lockstep"))
            print(f"| {label} | {label_t} | {batch} | {s:.3f} | {ls:.3f} | {s / ls:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
