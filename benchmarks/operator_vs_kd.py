"""DFNO (operator learning, Zheng et al. 2023) against KD: one-step students of one zoo teacher.

    nice -n 10 .venv/bin/python benchmarks/operator_vs_kd.py --out runs/dfno \
        [--data checkerboard,digits] [--seeds 0,1,2] [--sample-seeds 2] [--scale 1.0] \
        [--threads 1]
    .venv/bin/python benchmarks/operator_vs_kd.py --out runs/dfno --report   # tables only

Both students learn the same map, noise -> the teacher's PF-ODE endpoint, from the same
cached teacher draw (``num_pairs`` noises solved by iPNDM; at one training seed both methods
draw the same noises, and DFNO also keeps the states at ``slots`` points of each trajectory).
KD trains the teacher's own architecture warm-started from its weights (as in
``distill_suite.py``); DFNO trains a :class:`~fewstep.nets.TrajectoryOperator` from scratch.
Each is sampled at NFE 1, ``D(sigma_max z, sigma_max)``, from the test noises of
``distill_suite.py`` and scored against its test split with its scorer (SW for the 2-D sets, FD
in ``digits_cnn`` features for digits) and RMSE to the teacher's own endpoint from the same
noise. Nothing is chosen on validation: both run with fixed settings, the last EMA.

Statistics as in ``distill_suite.py``: per training seed the mean over sampling seeds; 95%
t-intervals over training seeds on the log scale; the DFNO / KD ratio is paired by seed.
Teachers: the committed zoo entries ``checkerboard-edm`` and ``digits-edm`` (their training is
not counted here). Resumable: runs checkpoint, finished scores go to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_suite as ds  # the shared protocol helpers

from fewstep import solvers, zoo
from fewstep.distill import get_method
from fewstep.nets import TrajectoryOperator, build_model
from fewstep.train import TrainConfig, train

SIGMA_MAX = ds.SIGMA_MAX


@dataclasses.dataclass(frozen=True)
class Plan:
    """One data set's budget (steps at ``--scale 1``)."""

    teacher: str  # zoo entry
    pairs: int
    nfe: int  # iPNDM evaluations per teacher trajectory
    slots: int
    steps: int
    batch: int
    lr_kd: float
    lr_dfno: float
    width: int
    n_eval: int


PLANS = {
    "checkerboard": Plan("checkerboard-edm", 4096, 16, 8, 600, 256, 1e-3, 1e-3, 128, 4000),
    "digits": Plan("digits-edm", 1024, 10, 5, 300, 64, 4e-4, 1e-3, 128, 1000),
}


def students(name: str, plan: Plan, seed: int) -> dict[str, tuple[Any, Any]]:
    """The two methods and their initial students at ``seed``."""
    e = zoo.entry(plan.teacher)
    teacher = zoo.load(plan.teacher)
    common = dict(num_pairs=plan.pairs, solver="ipndm", nfe=plan.nfe, sigma_max=SIGMA_MAX)
    kd = get_method("kd")(**common)
    dfno = get_method("dfno")(slots=plan.slots, **common)
    torch.manual_seed(seed)
    kd_student = kd.init_student(teacher, build_model(e.model))
    torch.manual_seed(seed)
    shape = list(ds.data.get(name).shape)
    op = TrajectoryOperator(shape, sigma_max=SIGMA_MAX, width=plan.width, depth=2, modes=4,
                            emb_dim=64, sigma_data=e.recipe.sigma_data)
    return {"kd": (kd, kd_student), "dfno": (dfno, op)}


def run_seed(name: str, seed: int, args: argparse.Namespace, results: ds.Results) -> None:
    plan = PLANS[name]
    setup = dataclasses.replace(ds.SETUPS[name], n_eval=plan.n_eval)
    sp = ds.splits(name, setup, seed)
    test = ds.Scorer(sp.test, ds.feature_fn(name), ds.PRIMARY[name])
    shape = tuple(sp.train.shape[1:])
    z_test = [SIGMA_MAX * torch.randn(plan.n_eval, *shape, generator=torch.Generator()
                                      .manual_seed(ds.TEST_NOISE_SEED + j))
              for j in range(args.sample_seeds)]
    teacher = zoo.load(plan.teacher)
    p = solvers.plan("ipndm", plan.nfe, sigma_min=ds.SIGMA_MIN, sigma_max=SIGMA_MAX)
    with torch.no_grad():
        test.ref_endpoints = solvers.get("ipndm")(teacher, z_test[0][:500], p.sigmas,
                                                  **p.knobs).double()
    one = [SIGMA_MAX, 0.0]
    results.get_or_run(f"{name}/teacher", lambda: {
        "test": [test(ds.run(teacher, z, "ipndm", p.sigmas, 0, **p.knobs), rmse=j == 0)
                 for j, z in enumerate(z_test)]})
    for m, (method, student) in students(name, plan, seed).items():
        def fit(m=m, method=method, student=student) -> dict[str, Any]:
            steps = max(1, round(plan.steps * args.scale))
            cfg = TrainConfig(steps=steps, batch_size=plan.batch,
                              lr=plan.lr_kd if m == "kd" else plan.lr_dfno, ema_decay=0.995,
                              progress=False, seed=seed, checkpoint_every=100,
                              out_dir=str(Path(args.out) / name / f"seed{seed}" / m))
            res = train(method, student, sp.train, cfg, teacher=teacher)
            with torch.no_grad():
                scores = [test(ds.run(res.ema, z, "ddim", one, 0), rmse=j == 0)
                          for j, z in enumerate(z_test)]
            return {"test": scores, "cost": dataclasses.asdict(res.cost),
                    "params": sum(t.numel() for t in res.ema.parameters())}

        t0 = time.perf_counter()
        r = results.get_or_run(f"{name}/seed{seed}/{m}", fit)
        print(f"[{name} seed {seed}] {m}: {r['cost']['seconds']:.0f} s train, test "
              f"{ds.PRIMARY[name]} {r['test'][0][ds.PRIMARY[name]]:.4g} "
              f"({time.perf_counter() - t0:.0f} s this run)", flush=True)


def mean_over_sampling(rec: dict[str, Any], metric: str) -> float:
    """The mean of ``metric`` over the sampling seeds that have it (RMSE: seed 0 only)."""
    values = [t[metric] for t in rec["test"] if metric in t]
    return float(sum(values) / len(values))


def report(out: Path, names: list[str], seeds: list[int], command: str) -> str:
    data = json.loads((out / "results.json").read_text())
    lines = ["# DFNO vs KD: one-step students of one zoo teacher", "",
             f"Command: `{command}`", "",
             "Cells: geometric mean [95% t-interval over training seeds] of the per-seed mean "
             "over sampling seeds; `dfno / kd` is paired by training seed. Lower is better. "
             "`train s` is wall-clock on a shared, loaded 2-core CPU (one thread), so read it "
             "as relative; teacher evaluations count sample rows (trajectories x NFE).", ""]
    for name in names:
        plan, primary = PLANS[name], ds.PRIMARY[name]
        done = [s for s in seeds if all(f"{name}/seed{s}/{m}" in data for m in ("kd", "dfno"))]
        if not done:
            continue
        metrics = [primary, "rmse"]
        lines += [f"## {name} (teacher `zoo:{plan.teacher}`, {len(done)} training seeds)", "",
                  f"{plan.pairs} teacher trajectories (iPNDM, {plan.nfe} NFE), {plan.steps} "
                  f"steps (x scale) at batch {plan.batch}; DFNO keeps {plan.slots} slots, "
                  f"width {plan.width}, depth 2, 4 modes. `rmse`: to the teacher's own "
                  "endpoint from the same noise.", "",
                  f"| model | params | {primary} | rmse | train s | teacher evaluations (rows) |",
                  "|---|---:|---:|---:|---:|---:|"]
        if f"{name}/teacher" in data:
            t = data[f"{name}/teacher"]
            lines.append(f"| teacher, iPNDM {plan.nfe} NFE | - | "
                         f"{ds.fmt(mean_over_sampling(t, primary))} | 0 | - | - |")
        for m in ("kd", "dfno"):
            recs = [data[f"{name}/seed{s}/{m}"] for s in done]
            cells = [str(ds.positive_interval([mean_over_sampling(r, k) for r in recs]))
                     for k in metrics]
            secs = sum(r["cost"]["seconds"] for r in recs) / len(recs)
            nfe = recs[0]["cost"]["teacher_nfe"] * plan.batch
            lines.append(f"| {m} | {recs[0]['params']} | {cells[0]} | {cells[1]} | "
                         f"{secs:.0f} | {nfe:.0f} |")
        for k in metrics:
            ratios = [mean_over_sampling(data[f"{name}/seed{s}/dfno"], k)
                      / mean_over_sampling(data[f"{name}/seed{s}/kd"], k) for s in done]
            iv = ds.positive_interval(ratios)
            lines.append(f"| dfno / kd ({k}) | | {iv} | | | |" if k == primary
                         else f"| dfno / kd ({k}) | | | {iv} | | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="checkerboard,digits")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sample-seeds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.data.split(",") if n]
    bad = [n for n in names if n not in PLANS]
    if bad:
        ap.error(f"--data {bad[0]!r}: expected one of {', '.join(PLANS)}")
    seeds = ds.seed_list(args.seeds)
    out = Path(args.out)
    results = ds.Results(out / "results.json")
    if not args.report:
        for name in names:
            for seed in seeds:
                run_seed(name, seed, args, results)
    command = "nice -n 10 .venv/bin/python benchmarks/operator_vs_kd.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report")
    print(report(out, names, seeds, command))


if __name__ == "__main__":
    main()
