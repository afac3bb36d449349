"""Rectified flow, reflow and distillation on the 2-D toys, CPU only (issue 14).

    .venv/bin/python benchmarks/rectified_flow.py --out runs/rf [--data moons,checkerboard]
        [--train-seeds 0,1,2] [--sample-seeds 3] [--k 3] [--scale 1.0] [--threads 1] [--quick]
    .venv/bin/python benchmarks/rectified_flow.py --out runs/rf --report   # tables only

For each data set and training seed, :func:`fewstep.distill.rectified_flows` trains the 1-RF
(``FlowPrecond`` MLP, the backbone of ``distill_suite.py``'s teachers) on the training draw,
then reflows it into the 2-RF and 3-RF, each on ``pairs`` couplings drawn from the previous
flow's EMA with Heun at 31 NFE, and distils each k-RF into a one-step generator on the couplings
drawn from it ("k-RF + distill").

Scored, under ``distill_suite.py``'s protocol (its splits, noises, scorers and data floor):

- every flow at NFE 1, 2 and 4 with the sampler chosen on validation among Euler on the flow's
  uniform-t grid (``rf_sigmas``) and the teacher solvers of ``distill_suite.py`` planned on the
  Karras grid; every distilled generator at NFE 1;
- every flow at the coupling solver's NFE (Heun, 31): the quality of the couplings the next
  flow and the distillation are trained on;
- the straightness ``S`` (:func:`fewstep.distill.straightness`, 64 Heun steps) of each flow on
  the first ``n_ref`` noises of sampling seed 0;
- the training cost of every stage (steps, seconds, teacher NFE in full-batch units, which for
  reflow and distillation is the coupling draw) and of every coupling draw.

Cells are geometric means with 95% t-intervals over training seeds (sampling seeds averaged
within a training seed); "vs 1-RF" is the paired ratio to the 1-RF at the same NFE. Re-running
resumes: stages and coupling draws from their run directories, scores from
``<out>/<data>/seed<s>/rf_scores.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_suite as ds  # the shared protocol helpers

from fewstep import solvers
from fewstep.distill import (
    RectifiedFlowDistill,
    Reflow,
    rectified_flows,
    rf_sigmas,
    straightness,
)
from fewstep.nets import FlowPrecond
from fewstep.train import TrainConfig

NFES = (1, 2, 4)
STEPS = {"rf": 2000, "reflow": 1000, "distill": 600}
LR = {"rf": 2e-3, "reflow": 1e-3, "distill": 1e-3}
PAIRS, PAIR_SOLVER, PAIR_NFE = 8192, "heun", 31
S_STEPS = 64


def samplers(D: Any, nfe: int) -> dict[str, ds.Sampler]:
    """Euler on the flow's uniform-t grid, and every teacher solver of the distillation suite
    that fits in ``nfe`` on its Karras plan."""
    out: dict[str, ds.Sampler] = {"euler_rf_grid": ds.on_grid(D, "ddim", rf_sigmas(nfe))}
    out.update({s: ds.planned(D, s, nfe) for s in ds.SOLVERS if solvers.get(s).min_nfe <= nfe})
    return out


def score_flow(ctx: ds.Context, D: Any) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for nfe in NFES:
        cands = samplers(D, nfe)
        best, val = ds.choose(ctx.val.distance, ctx.z_val, cands)
        rows[str(nfe)] = {"solver": best, "val_by_solver": val,
                          **ctx.evaluate(cands[best], val[best])}
    z = ctx.z_test[0][: ctx.setup.n_ref] / ds.SIGMA_MAX
    rows["straightness"] = float(straightness(D, z, steps=S_STEPS,
                                              sigma_max=ds.SIGMA_MAX).mean())
    return rows


def run_dataset(name: str, seed: int, args: argparse.Namespace) -> None:
    """Train and score the flows and students of one data set at one training seed."""
    setup = ds.quick(ds.SETUPS[name]) if args.quick else ds.SETUPS[name]
    out = Path(args.out) / name / f"seed{seed}"
    results = ds.Results(out / "rf_scores.json")
    sp = ds.splits(name, setup, seed)
    ctx = ds.make_context(name, setup, sp, seed, out, sample_seeds=args.sample_seeds,
                          scale=args.scale, feats=None)
    pairs = PAIRS if not args.quick else 256
    results.get_or_run("setup", lambda: {
        "n_eval": setup.n_eval, "n_ref": setup.n_ref, "batch": setup.batch,
        "n_train": len(sp.train), "n_val": len(sp.val), "n_test": len(sp.test),
        "primary": ds.PRIMARY[name], "scale": args.scale, "threads": args.threads,
        "seed": seed, "sample_seeds": args.sample_seeds, "k": args.k, "pairs": pairs,
        "steps": {k: ctx.steps(v) for k, v in STEPS.items()}})

    def config(kind: str) -> TrainConfig:
        return TrainConfig(steps=ctx.steps(STEPS[kind]), batch_size=setup.batch, lr=LR[kind],
                           ema_decay=0.995, progress=False, out_dir=str(out / "rf"), seed=seed)

    torch.manual_seed(seed)
    template = FlowPrecond(setup.make_net(ctx.shape))
    coupling = {"num_pairs": pairs, "solver": PAIR_SOLVER, "nfe": PAIR_NFE,
                "sigma_max": ds.SIGMA_MAX, "coupling_seed": seed}
    t0 = time.perf_counter()

    def done(stage: str, res: Any) -> None:
        scored = results.get_or_run(stage, lambda: {
            "cost": dataclasses.asdict(res.cost),
            "scores": (score_flow(ctx, res.ema) if "distill" not in stage else
                       {"1": ctx.evaluate(ds.on_grid(res.ema, "ddim", rf_sigmas(1)))})})
        if "distill" not in stage:  # the flow as its couplings see it: the data of the next one
            results.get_or_run(f"pairs:{stage}", lambda: ctx.evaluate(
                ds.planned(res.ema, PAIR_SOLVER, PAIR_NFE)))
        print(f"[{name} seed {seed}] {stage}: {res.cost.steps} steps, {res.cost.seconds:.0f} s; "
              f"1 step val {ds.PRIMARY[name]} {scored['scores']['1']['val']:.4g} "
              f"({time.perf_counter() - t0:.0f} s so far)", flush=True)

    flows = rectified_flows(args.k, template, sp.train, config("rf"),
                            reflow=Reflow(**coupling), distill=RectifiedFlowDistill(**coupling),
                            reflow_config=config("reflow"), distill_config=config("distill"),
                            callback=done)
    results.get_or_run("couplings", lambda: flows.couplings)


# --------------------------------------------------------------------------------- report


def stage_names(k: int) -> list[str]:
    return [f"{j}-rf" for j in range(1, k + 1)] + [f"{j}-rf+distill" for j in range(1, k + 1)]


def report_dataset(name: str, runs: list[dict[str, Any]], floor: dict[str, Any] | None) -> str:
    runs = [r for r in runs if "1-rf" in r]
    if not runs or floor is None:
        return f"## {name}: not scored yet\n"
    st, p = runs[0]["setup"], runs[0]["setup"]["primary"]
    metrics = [p, "precision", "recall"]
    fl = ds.Floor.of(floor, p)
    lines = [f"## {name}",
             f"Training seeds {[r['setup']['seed'] for r in runs]} x {st['sample_seeds']} "
             f"sampling seeds; {st['n_eval']} samples vs {st['n_test']} test samples; steps "
             f"{st['steps']}; {st['pairs']} couplings per draw ({PAIR_SOLVER}, {PAIR_NFE} NFE). "
             f"Data floor ({fl.count} train subsets of {fl.n}): {p.upper()} {fl}.", ""]
    rows = []
    for stage in stage_names(st["k"]):
        have = [r for r in runs if stage in r]
        if not have:
            continue
        sv = ds.positive_interval([r[stage]["scores"]["straightness"] for r in have]) \
            if "distill" not in stage else None
        for nfe in NFES:
            key = str(nfe)
            if key not in have[0][stage]["scores"]:
                continue
            recs = [r[stage]["scores"][key] for r in have]
            base = [r["1-rf"]["scores"][key] for r in have]
            ratio = ds.ratio_interval(recs, base, p) if stage != "1-rf" else None
            rows.append([stage, key, ",".join(r.get("solver", "euler (one step)") for r in recs),
                         str(sv) if sv and nfe == 1 else "-", *ds.cells(recs, metrics),
                         str(ratio) if ratio else "-"])
        if all(f"pairs:{stage}" in r for r in have):
            recs = [r[f"pairs:{stage}"] for r in have]
            ratio = ds.ratio_interval(recs, [r["pairs:1-rf"] for r in have], p) \
                if stage != "1-rf" else None
            rows.append([stage, str(PAIR_NFE), f"{PAIR_SOLVER} (the coupling solver)", "-",
                         *ds.cells(recs, metrics), str(ratio) if ratio else "-"])
    heads = [m.upper() if m not in ds.FRACTIONS else m[0].upper() for m in metrics]
    lines += [ds.table(["model", "NFE", "sampler (val., per seed)", "straightness S",
                        *heads, f"{p.upper()} / 1-RF same NFE"], rows), ""]
    cost_rows = []
    for stage in stage_names(st["k"]):
        have = [r for r in runs if stage in r]
        if have:
            c = [r[stage]["cost"] for r in have]
            cost_rows.append([stage, str(c[0]["steps"]),
                              ds.fmt(float(np.mean([x["seconds"] for x in c])), ".0f"),
                              ds.fmt(float(np.mean([x["teacher_nfe"] for x in c])), ".0f")])
    for j, draw in enumerate(runs[0].get("couplings", []), 1):
        draws = [r["couplings"][j - 1] for r in runs if "couplings" in r]
        cost_rows.append([f"couplings from {j}-RF", "-",
                          ds.fmt(float(np.mean([d["seconds"] for d in draws])), ".1f"),
                          f"{draw['evaluations']} rows"])
    lines += ["Training cost (mean over seeds; teacher NFE in full-batch units, the coupling "
              "draw the run used):", "",
              ds.table(["stage", "steps", "seconds", "teacher NFE"], cost_rows), ""]
    return "\n".join(lines) + "\n"


def report(out: Path, names: list[str]) -> str:
    sections = []
    for name in names:
        root = out / name
        runs = [json.loads(p.read_text()) for p in sorted(root.glob("seed*/rf_scores.json"))]
        floor = json.loads((root / "floor.json").read_text()) \
            if (root / "floor.json").exists() else None
        sections.append(report_dataset(name, runs, floor))
    return "\n".join(sections)


def main() -> None:
    ap = ds.protocol_parser("moons,checkerboard", "comma-separated 2-D toys")
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--k", type=int, default=3, help="rectifications (k-RF for k = 1..K)")
    args = ap.parse_args()
    names = [n for n in args.data.split(",") if n]
    if bad := set(names) - set(ds.TOYS):
        ap.error(f"unknown or non-2-D data sets {sorted(bad)}; choose from {ds.TOYS}")
    if args.k < 1:
        ap.error(f"--k must be >= 1; got {args.k}")
    ds.run_protocol(ap, args, names, lambda name, seed: run_dataset(name, seed, args), report,
                    "rf_report.md")


if __name__ == "__main__":
    main()
