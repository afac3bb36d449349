"""End-to-end time of a diffusers-style sampling loop: FewstepScheduler vs diffusers' own
scheduler for the same method (DPM-Solver++ 2M), in one process, same network, same NFE.

    PYTHONPATH=src python benchmarks/scheduler_speed.py
    PYTHONPATH=src python benchmarks/scheduler_speed.py --compare /work/main/src   # + another
                                                                      # fewstep checkout's row

Two networks: ``none`` (a zero eps prediction: the loop is all scheduler overhead) and
``unet`` (a small random ``UNet2DModel``). ``--compare SRC`` also times FewstepScheduler
imported from ``SRC`` (e.g. an older checkout) in a subprocess. The implementations take turns
for ``--rounds`` rounds of ``--repeats`` loops each (so a busy machine disturbs them alike);
each row gives the fastest and the median loop over all rounds, in wall-clock time and in
the process's CPU time (all its threads; less disturbed by other processes on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def make_net(kind: str, shape: tuple[int, ...]):
    if kind == "none":
        return lambda x, t: torch.zeros_like(x)
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=shape[-1], in_channels=shape[1], out_channels=shape[1],
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    return lambda x, t: unet(x, t).sample


def loop_time(sched, net, shape: tuple[int, ...], nfe: int,
              repeats: int) -> list[tuple[float, float]]:
    """(wall-clock, process CPU) seconds of ``repeats`` full loops: ``set_timesteps`` and
    ``nfe`` x (network + ``step``)."""
    times = []
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for r in range(repeats + 3):
            t0, c0 = time.perf_counter(), time.process_time()
            sched.set_timesteps(nfe)
            x = noise * sched.init_noise_sigma
            for t in sched.timesteps:
                x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
            if r >= 3:  # warm-up
                times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def fewstep_rows(args) -> list[dict]:
    import fewstep
    from fewstep.interop import FewstepScheduler

    rows = []
    for net_kind in args.nets:
        net = make_net(net_kind, args.shape)
        sched = FewstepScheduler(solver="dpmpp_2m")
        rows.append({"impl": f"FewstepScheduler ({os.path.dirname(fewstep.__file__)})",
                     "net": net_kind, "times": loop_time(sched, net, args.shape, args.nfe,
                                                     args.repeats)})
    return rows


def diffusers_rows(args) -> list[dict]:
    from diffusers import DPMSolverMultistepScheduler

    rows = []
    for net_kind in args.nets:
        net = make_net(net_kind, args.shape)
        sched = DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++")
        rows.append({"impl": "diffusers DPMSolverMultistepScheduler", "net": net_kind,
                     "times": loop_time(sched, net, args.shape, args.nfe, args.repeats)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split("x")),
                    default=(1, 4, 32, 32), help="sample shape, e.g. 1x4x32x32")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nets", nargs="+", default=["none", "unet"], choices=["none", "unet"])
    ap.add_argument("--compare", metavar="SRC", action="append", default=[],
                    help="also time FewstepScheduler imported from this source directory")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # subprocess mode
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.json:
        print(json.dumps(fewstep_rows(args)))
        return
    times: dict[tuple[str, str], list[list[float]]] = {}
    for _ in range(args.rounds):
        rows = fewstep_rows(args)
        for src in args.compare:
            argv = [sys.executable, __file__, "--json", "--shape",
                    "x".join(map(str, args.shape)), "--nfe", str(args.nfe), "--repeats",
                    str(args.repeats), "--nets", *args.nets]
            out = subprocess.run(argv, env={**os.environ, "PYTHONPATH": src}, check=True,
                                 capture_output=True, text=True).stdout
            rows += json.loads(out.strip().splitlines()[-1])
        for r in rows + diffusers_rows(args):
            times.setdefault((r["net"], r["impl"]), []).extend(r["times"])
    shape = "x".join(map(str, args.shape))
    print(f"# loop of NFE={args.nfe} at {shape}, {args.rounds} rounds x {args.repeats} loops, "
          "1 torch thread")
    print(f"{'net':5} {'wall min':>9} {'median':>8} {'cpu min':>8} {'median':>8}  "
          "(ms per loop)  implementation")
    for (net, impl), ts in sorted(times.items()):
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        print(f"{net:5} {1e3 * min(wall):9.2f} {1e3 * statistics.median(wall):8.2f} "
              f"{1e3 * min(cpu):8.2f} {1e3 * statistics.median(cpu):8.2f}  {impl}")


if __name__ == "__main__":
    main()
