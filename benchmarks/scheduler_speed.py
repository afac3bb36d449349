"""Scheduler overhead and end-to-end loop time, from one run: fewstep's generator-based
FewstepScheduler and DiffusersDenoiser against diffusers' own scheduler for the same method,
and against the OLD threaded FewstepScheduler (the revision before
``src/fewstep/solvers/coroutine.py`` was deleted, materialised from git history).

    PYTHONPATH=src python benchmarks/scheduler_speed.py                 # tables to stdout
    PYTHONPATH=src python benchmarks/scheduler_speed.py --out benchmarks/results/scheduler_speed.md

Table 1, overhead per solver step (time outside the network), at each ``--shapes``: a loop of
``set_timesteps`` and one ``step()`` per timestep with a zero network (``zeros_like``, the same
on every side), divided by the number of solver *steps* (diffusers' Heun makes 2N-1 scheduler
calls for N steps, fewstep's heun 2N-1 evaluations for N steps). ``DiffusersDenoiser`` is the
time of one denoiser call around the same zero network (the adapter's per-call overhead; a
solver's own arithmetic is not in it). Ratios are fewstep / diffusers; the goal is <= 0.25.

Table 2, end to end: a DPM-Solver++(2M) loop at ``--shape`` with no network and with a small
random ``UNet2DModel``.

Times are process CPU time (all threads; robust on a shared machine), 1 torch thread, median
over ``--rounds`` x ``--repeats`` loops after warm-up; the implementations take turns each
round. The old revision runs in a subprocess (same interpreter, its own ``fewstep``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
THREADED_FILE = "src/fewstep/solvers/coroutine.py"
# fewstep solver -> (diffusers scheduler class name, its kwargs)
PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2,
                                                 "algorithm_type": "dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc_bh2": ("UniPCMultistepScheduler", {"solver_order": 3}),
}
SHAPES = ["1x4x64x64", "16x3x32x32", "1024x2", "1x4x128x128"]


def shape_of(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("x"))


def zero_net(x: torch.Tensor, t: Any) -> torch.Tensor:
    return torch.zeros_like(x)


def unet_net(shape: tuple[int, ...]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=shape[-1], in_channels=shape[1], out_channels=shape[1],
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    return lambda x, t: unet(x, t).sample


def loop_times(sched: Any, net: Callable, shape: tuple[int, ...], n: int,
               repeats: int) -> list[float]:
    """Process CPU seconds of ``repeats`` loops (``set_timesteps(n)`` and every step)."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for r in range(repeats + 2):
            c0 = time.process_time()
            sched.set_timesteps(n)
            x = noise * sched.init_noise_sigma
            for t in sched.timesteps:
                x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
            if r >= 2:  # warm-up
                times.append(time.process_time() - c0)
    return times


def solver_steps(solver: str, nfe: int) -> int:
    """Solver steps of a fewstep run of ``nfe`` (heun: 2 evaluations a step, the last one 1),
    also the ``num_inference_steps`` diffusers' peer is given."""
    return (nfe + 1) // 2 if solver == "heun" else nfe


def fewstep_scheduler(solver: str) -> Any:
    from fewstep.interop import FewstepScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FewstepScheduler(solver=solver)


def diffusers_scheduler(solver: str) -> Any:
    import diffusers

    name, kw = PEERS[solver]
    return getattr(diffusers, name)(**kw)


def denoiser_times(shape: tuple[int, ...], calls: int, repeats: int) -> list[float]:
    """Process CPU seconds per DiffusersDenoiser call around the zero network, at the sigmas of
    a 10-step plan (per-row sigma tensors, as the solver driver passes them)."""
    import diffusers

    from fewstep.interop import DiffusersDenoiser

    class Zero(torch.nn.Module):
        def forward(self, x: torch.Tensor, timestep: Any, return_dict: bool = True,
                    **_: Any) -> tuple[torch.Tensor]:
            return (torch.zeros_like(x),)

    D = DiffusersDenoiser(Zero(), diffusers.DDPMScheduler().config)
    x = torch.randn(shape)
    sigmas = torch.logspace(2, -2, calls, dtype=torch.float64).tolist()
    times = []
    with torch.no_grad():
        for r in range(repeats + 2):
            c0 = time.process_time()
            for s in sigmas:
                D(x, x.new_full((shape[0],), s))
            if r >= 2:
                times.append((time.process_time() - c0) / calls)
    return times


def overhead_rows(args: argparse.Namespace, impl: str) -> list[dict[str, Any]]:
    """One round of table 1 for ``impl`` ("fewstep", "diffusers"; "threaded" in the old
    revision's subprocess runs the fewstep code path)."""
    rows = []
    for text in args.shapes:
        shape = shape_of(text)
        for solver in args.solvers:
            steps = solver_steps(solver, args.nfe)
            if impl == "diffusers":
                sched, arg = diffusers_scheduler(solver), steps
            else:
                sched, arg = fewstep_scheduler(solver), args.nfe
            ts = [t / steps for t in loop_times(sched, zero_net, shape, arg, args.repeats)]
            rows.append({"table": 1, "shape": text, "solver": solver, "impl": impl, "times": ts})
        if impl == "fewstep":
            rows.append({"table": 1, "shape": text, "solver": "-", "impl": "denoiser",
                         "times": denoiser_times(shape, 10, args.repeats)})
    return rows


def e2e_rows(args: argparse.Namespace, impl: str) -> list[dict[str, Any]]:
    rows = []
    shape = shape_of(args.shape)
    for net_kind in ("none", "unet"):
        net = zero_net if net_kind == "none" else unet_net(shape)
        sched = diffusers_scheduler("dpmpp_2m") if impl == "diffusers" else \
            fewstep_scheduler("dpmpp_2m")
        rows.append({"table": 2, "shape": args.shape, "solver": net_kind, "impl": impl,
                     "times": loop_times(sched, net, shape, args.nfe, args.repeats)})
    return rows


def threaded_source() -> tuple[str, Path]:
    """The last revision that has the threaded scheduler, extracted (src/fewstep from
    ``git archive``) into a temporary directory: (commit, its src path)."""
    deleted = subprocess.run(["git", "-C", str(REPO), "log", "--all", "--format=%H",
                              "--diff-filter=D", "-1", "--", THREADED_FILE], check=True,
                             capture_output=True, text=True).stdout.strip()
    if not deleted:
        raise SystemExit(f"no commit deletes {THREADED_FILE} in this repository's history")
    rev = f"{deleted}^"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/fewstep"],
                             check=True, capture_output=True).stdout
    root = Path(tempfile.mkdtemp(prefix="fewstep_threaded_"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    if not (root / THREADED_FILE).exists():
        raise SystemExit(f"{rev} has no {THREADED_FILE}")
    return commit, root / "src"


def run_threaded(args: argparse.Namespace, src: Path) -> list[dict[str, Any]]:
    argv = [sys.executable, __file__, "--json", "--nfe", str(args.nfe), "--repeats",
            str(args.repeats), "--shape", args.shape, "--shapes", *args.shapes,
            "--solvers", *args.solvers]
    out = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(src)}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_us(times: list[float]) -> float:
    return 1e6 * statistics.median(times)


def report(args: argparse.Namespace, times: dict[tuple, list[float]], commit: str) -> str:
    lines = ["# FewstepScheduler overhead and loop time (issue 13)", "",
             f"Process CPU time, 1 torch thread, median of {args.rounds} rounds x "
             f"{args.repeats} loops, NFE {args.nfe}. `threaded` = the old thread-based "
             f"FewstepScheduler at commit {commit} (the parent of the commit that deleted "
             f"`{THREADED_FILE}`), run from a `git archive` of that revision.", "",
             "## 1. Overhead per solver step (us; zero network)", "",
             "| shape | solver (diffusers peer) | fewstep | threaded (old) | diffusers | "
             "fewstep / diffusers | threaded / diffusers |", "|---|---|---|---|---|---|---|"]
    for shape in args.shapes:
        for solver in args.solvers:
            get = {impl: times.get((1, shape, solver, impl)) for impl in
                   ("fewstep", "threaded", "diffusers")}
            us = {k: median_us(v) if v else float("nan") for k, v in get.items()}
            lines.append(f"| {shape} | {solver} ({PEERS[solver][0]}) | {us['fewstep']:.0f} | "
                         f"{us['threaded']:.0f} | {us['diffusers']:.0f} | "
                         f"{us['fewstep'] / us['diffusers']:.2f} | "
                         f"{us['threaded'] / us['diffusers']:.2f} |")
    lines += ["", "DiffusersDenoiser, one call around the zero network (us), and as a fraction "
              "of diffusers' DPM-Solver++(2M) step at the same shape:", "",
              "| shape | DiffusersDenoiser call | / diffusers dpmpp_2m step |", "|---|---|---|"]
    for shape in args.shapes:
        d = times.get((1, shape, "-", "denoiser"))
        peer = times.get((1, shape, "dpmpp_2m", "diffusers"))
        if d:
            ratio = f"{median_us(d) / median_us(peer):.2f}" if peer else "-"
            lines.append(f"| {shape} | {median_us(d):.0f} | {ratio} |")
    lines += ["", f"## 2. End to end: DPM-Solver++(2M) loop of NFE {args.nfe} at {args.shape} "
              "(ms per loop)", "", "| network | fewstep | threaded (old) | diffusers |",
              "|---|---|---|---|"]
    for net in ("none", "unet"):
        ms = {impl: 1e3 * statistics.median(times[(2, args.shape, net, impl)])
              if (2, args.shape, net, impl) in times else float("nan")
              for impl in ("fewstep", "threaded", "diffusers")}
        lines.append(f"| {net} | {ms['fewstep']:.2f} | {ms['threaded']:.2f} | "
                     f"{ms['diffusers']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--shape", default="1x4x32x32", help="shape of the end-to-end table")
    ap.add_argument("--solvers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--nfe", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-threaded", action="store_true", help="skip the old revision")
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # subprocess mode
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.json:  # the old revision: its FewstepScheduler, labelled threaded
        rows = [dict(r, impl="threaded") for r in overhead_rows(args, "threaded")
                + e2e_rows(args, "threaded") if r["impl"] != "denoiser"]
        print(json.dumps(rows))
        return
    commit, src = ("-", None) if args.no_threaded else threaded_source()
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        rows = []
        for impl in ("fewstep", "diffusers"):
            rows += overhead_rows(args, impl) + e2e_rows(args, impl)
        if src is not None:
            rows += run_threaded(args, src)
        for r in rows:
            times.setdefault((r["table"], r["shape"], r["solver"], r["impl"]), []).extend(
                r["times"])
    text = report(args, times, commit)
    print(text)
    if args.out:
        from fewstep._io import atomic_write

        atomic_write(args.out, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    main()
