"""Consistency models on a 2-D toy: CD, iCT, ECT and Direct CM against their teacher.

    .venv/bin/python benchmarks/consistency_toy.py [--data moons] [--steps 1500]
        [--teacher-steps 3000] [--n 4000] [--threads 1] [--methods cd,ct,ect,direct_cm]

1. Train an EDM teacher (``EDMPrecond(MLPDenoiserNet)``, sigma_data = 1) with the "edm" loss.
2. Train consistency students (``ConsistencyPrecond`` of the same net) for the same number of
   steps (batch 256, EMA 0.995): "cd" (Heun teacher steps, N = 18, target EMA mu = 0.95, warm
   start from the teacher), "ct" (iCT from scratch, paper schedule compressed into the run),
   "ect" (teacher weights, gap halving every steps/8, lr 2e-4; once with the paper's
   P_mean = -1.1 and once with +1 which puts more training mass at the high noise levels that
   1-step sampling starts from) and "direct_cm" (regression onto the teacher's full ODE
   solve, ``--direct-nfe`` iPNDM steps; T's method, through the registry).
3. Score 1-step (sigmas [80, 0]) and 2-step ([80, 0.5, 0]) consistency sampling by sliced
   Wasserstein (256 projections) to held-out data and to the teacher's best 50-NFE samples,
   and by RMSE to the teacher's exact PF-ODE endpoint from the same noise (1 step), next to
   the teacher's own solvers.

"teacher NFE" is in units of one evaluation of a full training batch (``TrainCost``). With
threads > 1 on a busy machine small-batch training slows down many-fold: keep 1.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep import data, metrics, reference_solution, solvers
from fewstep.distill import get_method
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 1.0
TWO_STEP = (SIGMA_MAX, 0.5, 0.0)


def net() -> MLPDenoiserNet:
    return MLPDenoiserNet(2, hidden=128, depth=3, emb_dim=64)


def sw(a: torch.Tensor, b: torch.Tensor) -> float:
    return metrics.sliced_wasserstein(a.double(), b.double(), n_projections=256,
                                      generator=torch.Generator().manual_seed(0))


def methods(steps: int, direct_nfe: int) -> list[tuple[str, object, float]]:
    """(label, method, learning rate): paper hyper-parameters except where noted."""
    return [
        ("cd", get_method("cd")(N=18, solver="heun", mu=0.95), 1e-3),
        ("ct", get_method("ct")(total_steps=steps), 1e-3),
        ("ect", get_method("ect")(double_every=max(steps // 8, 1)), 2e-4),
        ("ect P_mean=+1", get_method("ect")(double_every=max(steps // 8, 1), p_mean=1.0), 2e-4),
        (f"direct_cm ipndm@{direct_nfe}",
         get_method("direct_cm")(num_scales=18, solver="ipndm", nfe=direct_nfe), 1e-3),
    ]


@torch.no_grad()
def run(D, x: torch.Tensor, sigmas, solver: str = "consistency", **knobs) -> torch.Tensor:
    return solvers.get(solver)(D, x, torch.tensor(sigmas, dtype=torch.float64), **knobs).double()


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="moons")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=4000, help="evaluation samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="cd,ct,ect,direct_cm", help="comma-separated subset")
    ap.add_argument("--direct-nfe", type=int, default=8, help="Direct CM's teacher solve NFE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train_data = data.get(args.data).load("train", n=50_000, seed=0)
    held_out = data.get(args.data).load("test", n=args.n, seed=1)
    floor = sw(data.get(args.data).load("test", n=args.n, seed=2), held_out)
    config = TrainConfig(steps=args.teacher_steps, batch_size=512, lr=2e-3, ema_decay=0.999,
                         progress=False)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    teacher = train(get_method("edm")(sigma_data=SIGMA_DATA), EDMPrecond(net(), SIGMA_DATA),
                    train_data, config).ema
    teacher_seconds = time.perf_counter() - t0

    x = SIGMA_MAX * torch.randn(args.n, 2, generator=torch.Generator().manual_seed(3))
    ref = reference_solution(teacher, x, SIGMA_MAX, rtol=1e-6, atol=1e-6).double()
    best = None
    for name in ("heun", "dpmpp_2m", "ipndm", "unipc_bh2"):
        p = solvers.plan(name, 50, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        out = run(teacher, x, p.sigmas.tolist(), name, **p.knobs)
        if best is None or sw(out, held_out) < sw(best[1], held_out):
            best = (name, out)
    t50 = best[1]
    rows = [("held-out data (floor)", "-", "-", "-", f"{floor:.4f}", "-", "-", "-", "-"),
            (f"teacher {best[0]} @ 50 NFE", f"{args.teacher_steps}", f"{teacher_seconds:.0f}",
             "-", f"{sw(t50, held_out):.4f}", "0", f"{rmse(t50, ref):.4f}", "-", "-")]
    for name, nfe in (("dpmpp_2m", 2), ("dpmpp_2m", 4), ("dpmpp_2m", 8),
                      ("ipndm", args.direct_nfe)):
        p = solvers.plan(name, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        out = run(teacher, x, p.sigmas.tolist(), name)
        rows.append((f"teacher {name} @ {nfe} NFE", "-", "-", "-", f"{sw(out, held_out):.4f}",
                     f"{sw(out, t50):.4f}", f"{rmse(out, ref):.4f}", "-", "-"))

    for label, method, lr in methods(args.steps, args.direct_nfe):
        if label.split()[0] not in args.methods.split(","):
            continue
        cfg = TrainConfig(steps=args.steps, batch_size=256, lr=lr, ema_decay=0.995,
                          progress=False)
        torch.manual_seed(0)
        student = ConsistencyPrecond(net(), SIGMA_MIN, SIGMA_DATA)
        t0 = time.perf_counter()
        result = train(method, student, train_data, cfg, teacher=teacher)
        seconds = time.perf_counter() - t0
        one = run(result.ema, x, (SIGMA_MAX, 0.0))
        two = run(result.ema, x, TWO_STEP, generator=torch.Generator().manual_seed(4))
        rows.append((label, f"{args.steps}", f"{seconds:.0f}", f"{result.cost.teacher_nfe:.0f}",
                     f"{sw(one, held_out):.4f}", f"{sw(one, t50):.4f}", f"{rmse(one, ref):.4f}",
                     f"{sw(two, held_out):.4f}", f"{sw(two, t50):.4f}"))

    head = ("method", "steps", "train s", "teacher NFE", "SW data", "SW teacher", "ODE RMSE",
            "SW data 2-step", "SW teacher 2-step")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(f"data={args.data}  n={args.n}  students: 1 step (sigmas [80, 0]) and 2 steps "
          f"(sigmas {list(TWO_STEP)}); SW to held-out data and to the teacher's 50-NFE samples; "
          "ODE RMSE to the teacher's exact PF-ODE endpoint from the same noise")
    for r in [head, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                        for i, (v, w) in enumerate(zip(r, widths, strict=True))))


if __name__ == "__main__":
    main()
