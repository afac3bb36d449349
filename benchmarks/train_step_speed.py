"""Steady-state training step time of each distillation method on the 2-d toy setup of
``distill_suite.py`` (MLP teacher and student, batch 256, one thread).

    PYTHONPATH=src .venv/bin/python benchmarks/train_step_speed.py [--methods edm,cd,pd,direct_cm]
        [--steps 40]

The teacher has random weights (a step's cost does not depend on them). The first 10 steps
(imports, warm-up) are not timed; the figure is the mean of the rest, and a checksum of the
final EMA weights shows that two checkouts train the same numbers. To compare code versions,
run the same command with ``PYTHONPATH`` pointing at each checkout's ``src``, interleaved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_suite as ds

from fewstep import data
from fewstep.distill import get_method
from fewstep.train import TrainConfig, train

WARMUP = 10


def method_and_student(name: str, steps: int, teacher: torch.nn.Module) -> tuple:
    """The suite's method with its toy hyper-parameters and the student template."""
    s = ds.TOY
    torch.manual_seed(0)
    cm = ds.ConsistencyPrecond(s.make_net((2,)), ds.SIGMA_MIN, s.sigma_data)
    torch.manual_seed(0)
    edm = ds.EDMPrecond(s.make_net((2,)), s.sigma_data)
    methods = {
        "edm": (lambda: get_method("edm")(sigma_data=s.sigma_data), edm),
        "cd": (lambda: get_method("cd")(N=s.cd_levels, solver="heun", mu=0.95), cm),
        "ct": (lambda: get_method("ct")(total_steps=steps), cm),
        "ect": (lambda: get_method("ect")(double_every=max(steps // 8, 1)), cm),
        "pd": (lambda: get_method("pd")(teacher_steps=16, steps_per_round=max(1, steps // 4),
                                        sigma_data=s.sigma_data), edm),
        "kd": (lambda: get_method("kd")(num_pairs=s.kd_pairs, solver="ipndm", nfe=s.kd_nfe),
               edm),
        "direct_cm": (lambda: get_method("direct_cm")(num_scales=s.direct["num_scales"],
                                                      solver="ipndm", nfe=s.direct["nfe"]), cm),
    }
    if name not in methods:
        raise SystemExit(f"unknown method {name!r}; choose from {sorted(methods)}")
    make, template = methods[name]
    method = make()
    return method, method.init_student(teacher, template)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="edm,cd,pd,direct_cm")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    if args.steps <= WARMUP + 1:
        ap.error(f"--steps must be > {WARMUP + 1}; got {args.steps}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = ds.EDMPrecond(ds.TOY.make_net((2,)), ds.TOY.sigma_data).eval()
    x = data.get("moons").load("train", n=ds.TOY.n_train, seed=0)
    print("| method | ms per step (steady) | EMA checksum |\n|---|---:|---:|")
    for name in args.methods.split(","):
        method, student = method_and_student(name, args.steps, teacher)
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(steps=args.steps, batch_size=ds.TOY.batch, lr=1e-3,
                              ema_decay=0.995, progress=False, out_dir=out, seed=0)
            res = train(method, student, x, cfg,
                        teacher=None if name in ("edm", "ct") else teacher,
                        callback=lambda k, info, t=stamps: t.append(time.perf_counter()))
        step = (stamps[-1] - stamps[WARMUP - 1]) / (len(stamps) - WARMUP)
        w = torch.cat([p.detach().flatten() for p in res.ema.parameters()]).double()
        print(f"| {name} | {1000 * step:.1f} | {float(w.abs().sum()):.10g} |", flush=True)


if __name__ == "__main__":
    main()
