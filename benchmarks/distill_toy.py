"""Distillation on 2-D toys, CPU only (a few minutes).

For each data set (the built-in "moons" toy and the bench's 8-component Gaussian mixture
"gmm2") this trains an EDM teacher, distils KD, PD and Direct CM students from it, and prints
the sliced Wasserstein distance (SW_2, 4000 samples, 256 projections) to held-out samples of:
the teacher with the best of several solvers at NFE 1, 2, 4, 10, 50 and each student at 1 and 2
steps, with training wall-clock and teacher evaluations spent.

    .venv/bin/python benchmarks/distill_toy.py [--scale 1.0] [--threads 1]

``teacher NFE`` is in units of one evaluation of a full training batch (see
``fewstep.distill.LossContext``); ``teacher evals`` is that times the batch size, i.e. the number
of single-sample teacher evaluations.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fewstep
import fewstep.data
from fewstep import solvers
from fewstep.bench import teachers
from fewstep.distill import DirectCM, EDMLoss, KnowledgeDistillation, ProgressiveDistillation
from fewstep.metrics import sliced_wasserstein
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, TrainCost, train

N_EVAL = 4000
SIGMA_MAX = 80.0
TEACHER_NFES = (1, 2, 4, 10, 50)
SOLVERS = ("ddim", "heun", "dpmpp_2m", "ipndm", "unipc_bh2", "dpm_solver_2")
CM_TAU_NEAR = 1.0  # 2-step consistency sampling re-noises to the training level nearest this


@dataclass
class Row:
    name: str
    sw: dict[str, float]
    cost: TrainCost | None = None
    batch: int = 0
    note: str = ""


def sw_to(ref: Tensor) -> Callable[[Tensor], float]:
    def score(x: Tensor) -> float:
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    return score


def net() -> nn.Module:
    return MLPDenoiserNet(2, hidden=128, depth=3, emb_dim=64)


def teacher_rows(teacher: nn.Module, z: Tensor, score: Callable) -> list[Row]:
    """The teacher with the best solver (lowest SW) at each NFE."""
    best: dict[str, float] = {}
    names = []
    with torch.no_grad():
        for nfe in TEACHER_NFES:
            found = []
            for name in SOLVERS:
                if solvers.get(name).min_nfe <= nfe:
                    found.append((score(fewstep.sample(teacher, z, name, nfe=nfe)), name))
            sw, name = min(found)
            best[f"NFE {nfe}"] = sw
            names.append(f"{nfe}:{name}")
    return [Row("teacher, best solver", best, note=" ".join(names))]


def distil(teacher: nn.Module, data: Tensor, z: Tensor, score: Callable,
           scale: float) -> list[Row]:
    rows = []
    batch = 256
    cfg = TrainConfig(batch_size=batch, lr=1e-3, ema_decay=0.995, progress=False, steps=1)

    # KD: one-step student regressed onto 8192 stored teacher ODE endpoints (iPNDM, NFE 35).
    kd = KnowledgeDistillation(num_pairs=8192, solver="ipndm", nfe=35)
    res = train(kd, EDMPrecond(net()), data, _steps(cfg, 1000 * scale), teacher=teacher)
    with torch.no_grad():
        one = score(solvers.get("ddim")(res.ema, z, torch.tensor([SIGMA_MAX, 0.0])))
    rows.append(Row("KD (Luhman & Luhman)", {"1 step": one}, res.cost, batch))

    # PD: 16 DDIM teacher steps -> 8 -> 4 -> 2 -> 1; snapshot the 2-step student (EMA).
    pd = ProgressiveDistillation(teacher_steps=16, steps_per_round=max(1, int(200 * scale)))
    snapshots: dict[int, nn.Module] = {}

    def snapshot(step: int, info: dict) -> None:
        if step == 3 * pd.steps_per_round:  # end of the round that trains the 2-step student
            snapshots[2] = copy.deepcopy(info["ema"])

    res = train(pd, EDMPrecond(net()), data, _steps(cfg, pd.total_steps), teacher=teacher,
                callback=snapshot)
    with torch.no_grad():
        ddim = solvers.get("ddim")
        sw = {"1 step": score(ddim(res.ema, z, pd.sigmas(1))),
              "2 steps": score(ddim(snapshots[2], z, pd.sigmas(2)))}
    rows.append(Row("PD (Salimans & Ho)", sw, res.cost, batch))

    # Direct CM: consistency function regressed onto full teacher solves (iPNDM, NFE 10).
    dcm = DirectCM(num_scales=10, solver="ipndm", nfe=10)
    res = train(dcm, ConsistencyPrecond(net()), data, _steps(cfg, 500 * scale),
                teacher=teacher)
    levels = dcm.paths()[0]
    tau = float(levels[(levels - CM_TAU_NEAR).abs().argmin()])
    with torch.no_grad():
        cm = solvers.get("consistency")
        g = torch.Generator().manual_seed(5)
        sw = {"1 step": score(cm(res.ema, z, torch.tensor([SIGMA_MAX, 0.0]))),
              "2 steps": score(cm(res.ema, z, torch.tensor([SIGMA_MAX, tau, 0.0]),
                                  generator=g))}
    rows.append(Row("Direct CM", sw, res.cost, batch, note=f"2 steps re-noise to {tau:.3g}"))
    return rows


def _steps(cfg: TrainConfig, steps: float) -> TrainConfig:
    return dataclasses.replace(cfg, steps=max(1, int(steps)))


def run_dataset(name: str, data: Tensor, ref: Tensor, scale: float) -> list[Row]:
    torch.manual_seed(0)
    score = sw_to(ref)
    z = SIGMA_MAX * torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=max(1, int(2000 * scale)), batch_size=256, lr=2e-3,
                      ema_decay=0.998, warmup_steps=100, progress=False)
    res = train(EDMLoss(), EDMPrecond(net()), data, cfg)
    teacher = res.ema
    rows = [Row("data vs data (floor)", {"NFE 50": score(data[:N_EVAL])})]
    rows[0].note = "train samples vs held-out"
    rows += teacher_rows(teacher, z, score)
    rows[-1].cost, rows[-1].batch = res.cost, cfg.batch_size
    rows += distil(teacher, data, z, score, scale)
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    cols = ["NFE 1", "NFE 2", "NFE 4", "NFE 10", "NFE 50", "1 step", "2 steps"]
    print(f"\n## {title}  (sliced W2 to held-out samples; lower is better)")
    head = f"| {'model':<22} | " + " | ".join(f"{c:>7}" for c in cols) + \
        " | train s | teacher NFE | teacher evals |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        cells = [f"{r.sw[c]:7.4f}" if c in r.sw else f"{'-':>7}" for c in cols]
        cost = (f"{r.cost.seconds:7.1f} | {r.cost.teacher_nfe:11.0f} | "
                f"{r.cost.teacher_nfe * r.batch:13.3g}") if r.cost else \
            f"{'-':>7} | {'-':>11} | {'-':>13}"
        print(f"| {r.name:<22} | " + " | ".join(cells) + f" | {cost} |")
    notes = [f"{r.name}: {r.note}" for r in rows if r.note]
    for n in notes:
        print(f"  {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all training steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    moons = fewstep.data.load("moons", "train", n=20_000, seed=0)
    moons_ref = fewstep.data.load("moons", "test", n=N_EVAL, seed=0)
    gmm = teachers.get("gmm2")
    gmm_data = gmm.denoiser.sample(20_000, generator=torch.Generator().manual_seed(0))
    for title, data, ref in (("moons", moons, moons_ref),
                             ("gmm2 (8-component Gaussian mixture)", gmm_data,
                              gmm.reference_samples(N_EVAL, 0))):
        print_table(title, run_dataset(title, data, ref, args.scale))
    print(f"\ntotal wall-clock {time.perf_counter() - t0:.0f} s "
          f"({args.threads} threads, scale {args.scale})")


if __name__ == "__main__":
    main()
