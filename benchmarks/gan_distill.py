"""UFOGen and ADD students on checkerboard and digits, CPU only (issue 15).

    .venv/bin/python benchmarks/gan_distill.py --out runs/gan --data checkerboard,digits \
        [--teachers /work/runs/distill] [--train-seeds 0,1,2] [--sample-seeds 3] \
        [--steps 300] [--threads 1] [--quick]
    .venv/bin/python benchmarks/gan_distill.py --out runs/gan --report   # tables only

Teachers (nothing is retrained here):

- 2-D toys: ``distill_suite.py``'s EDM teacher of the same training seed
  (``<teachers>/<data>/seed<s>/teacher``, its EMA), so the UFOGen and ADD rows sit on the same
  teacher, splits, start noises and scorer as that suite's CD and KD students, whose scores
  are read from its ``scores.json`` and compared paired by training seed;
- digits: the zoo teacher ``digits-edm`` for every seed (one teacher; the seed varies the
  students' data order, noise and heads); the zoo's ``digits-kd`` and ``digits-cd`` students
  are scored beside them (one training run each: their interval is over sampling seeds).

For each data set and training seed, UFOGen and ADD students are initialised from the teacher
and trained ``--steps`` steps (same batch as the teacher's suite), then scored under
``distill_suite.py``'s protocol (its splits, noises, scorers and data floor) at their native
NFE: UFOGen at 1, ADD at 1 and 2 (its own levels, re-noising). Nothing is chosen on
validation (no sampler choice); the test split gives the figures. The start (the teacher at
1 step, what both students are at step 0) is scored too.

A run *diverges* if its loss turns non-finite (the loop raises), its samples are non-finite,
or its one-step validation score ends worse than its start (the teacher at one step). The
report gives the fraction per method. Scores and costs land in
``<out>/<data>/seed<s>/gan_scores.json`` (re-running resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_suite as ds  # the shared protocol helpers

from fewstep import zoo
from fewstep._io import atomic_write
from fewstep.denoiser import NonFiniteError
from fewstep.distill import get_method
from fewstep.nets import build_model, model_spec
from fewstep.train import TrainConfig, load_checkpoint, train

DATA = ("checkerboard", "digits")
# CPU-scale settings, chosen on a 120-300 step pilot on checkerboard seed 0's validation split
# (see docs/distillation.md): one level (T = 1) and a light reconstruction weight for UFOGen.
METHODS = {
    "ufogen": {"num_scales": 1, "rec_weight": 0.1},
    "add": {"num_student_steps": 4},
}
NATIVE = {"ufogen": (1,), "add": (1, 2)}
LR, BETAS = 5e-4, (0.5, 0.999)  # GAN-style Adam (beta1 = 0.5, as DDGAN)
ZOO_BASELINES = {"digits": ("digits-kd", "digits-cd")}


def load_teacher(name: str, seed: int, root: Path) -> torch.nn.Module:
    if name in ds.TOYS:
        path = root / name / f"seed{seed}" / "teacher"
        if not path.exists():
            raise SystemExit(f"no teacher at {path}: run distill_suite.py --data {name} first")
        return load_checkpoint(path)
    return zoo.load(f"{name}-edm")


def sampler(model: Any, method: str, nfe: int) -> ds.Sampler:
    """The student's native sampler: one step, or ADD's re-noising over its own levels."""
    if method == "add":
        sig = get_method("add")(**METHODS["add"]).sampling_sigmas(nfe)
        return lambda z, seed: ds.run(model, z, "consistency", sig, seed, sigma_min=0.0)
    return ds.on_grid(model, "ddim", [ds.SIGMA_MAX, 0.0])


def student(ctx: ds.Context, method: str, teacher: torch.nn.Module, steps: int,
            start_val: float) -> dict[str, Any]:
    m = get_method(method)(**METHODS[method])
    cfg = TrainConfig(steps=steps, batch_size=ctx.setup.batch, lr=LR, betas=BETAS,
                      ema_decay=0.995, progress=False, out_dir=str(ctx.out / method),
                      seed=ctx.seed)
    torch.manual_seed(ctx.seed)
    template = build_model(model_spec(teacher))
    t0 = time.perf_counter()
    try:
        res = train(m, template, ctx.train_data, cfg, teacher=teacher)
    except NonFiniteError as err:
        return {"diverged": f"non-finite loss: {err}", "seconds": time.perf_counter() - t0}
    scores = {str(k): ctx.evaluate(sampler(res.ema, method, k)) for k in NATIVE[method]}
    one = scores["1"]["val"]
    why = ("non-finite samples" if not math.isfinite(one) else
           f"1-step val {one:.4g} worse than its start {start_val:.4g}" if one > start_val
           else None)
    return {"scores": scores, "cost": dataclasses.asdict(res.cost), "params": METHODS[method],
            "diverged": why}


def run_dataset(name: str, seed: int, args: argparse.Namespace) -> None:
    setup = ds.quick(ds.SETUPS[name]) if args.quick else ds.SETUPS[name]
    if args.batch:
        setup = dataclasses.replace(setup, batch=args.batch)
    out = Path(args.out) / name / f"seed{seed}"
    results = ds.Results(out / "gan_scores.json")
    sp = ds.splits(name, setup, seed)
    feats = ds.feature_fn(name)
    ctx = ds.make_context(name, setup, sp, seed, out, sample_seeds=args.sample_seeds,
                          scale=1.0, feats=feats)
    teacher = load_teacher(name, seed, Path(args.teachers))
    results.get_or_run("setup", lambda: {
        "n_eval": setup.n_eval, "batch": setup.batch, "n_train": len(sp.train),
        "n_test": len(sp.test), "primary": ds.PRIMARY[name], "steps": args.steps,
        "threads": args.threads, "seed": seed, "sample_seeds": args.sample_seeds,
        "lr": LR, "betas": BETAS,
        "teacher": (f"{args.teachers}/{name}/seed{seed}/teacher" if name in ds.TOYS
                    else f"zoo:{name}-edm")})
    start = results.get_or_run("start", lambda: ctx.evaluate(
        ds.on_grid(teacher, "ddim", [ds.SIGMA_MAX, 0.0])))
    for zname in ZOO_BASELINES.get(name, ()):
        results.get_or_run(f"zoo:{zname}", lambda z=zname: ctx.evaluate(
            ds.on_grid(zoo.load(z), "consistency" if z.endswith("-cd") else "ddim",
                       [ds.SIGMA_MAX, 0.0])))
    for method in METHODS:
        r = results.get_or_run(method, lambda m=method: student(ctx, m, teacher, args.steps,
                                                                start["val"]))
        one = r.get("scores", {}).get("1", {}).get("val", math.nan)
        print(f"[{name} seed {seed}] {method}: 1-step val {ds.PRIMARY[name]} {one:.4g} "
              f"(start {start['val']:.4g}); diverged: {r['diverged']}", flush=True)


# --------------------------------------------------------------------------------- report


def _suite_rows(teachers: Path, name: str, seeds: list[int], key: str) -> list[dict] | None:
    """``distill_suite.py``'s records of ``key`` (e.g. the KD student's 1-step scores) for the
    same training seeds, or None if any is missing."""
    recs = []
    for s in seeds:
        path = teachers / name / f"seed{s}" / "scores.json"
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        if key not in d:
            return None
        recs.append(d[key]["scores"]["1"])
    return recs


def report_dataset(name: str, runs: list[dict[str, Any]], floor: dict | None,
                   teachers: Path) -> str:
    runs = [r for r in runs if "start" in r]
    if not runs:
        return f"## {name}: not scored yet\n"
    st, p = runs[0]["setup"], runs[0]["setup"]["primary"]
    seeds = [r["setup"]["seed"] for r in runs]
    metrics = [p, "precision", "recall"]
    fl = f" Data floor: {p.upper()} {ds.Floor.of(floor, p)}." if floor else ""
    lines = [f"## {name}",
             f"Training seeds {seeds} x {st['sample_seeds']} sampling seeds; {st['n_eval']} "
             f"samples vs {st['n_test']} test samples; {st['steps']} steps x batch "
             f"{st['batch']}, Adam lr {st['lr']} betas {tuple(st['betas'])}; teacher "
             f"{st['teacher'].replace(f'seed{seeds[0]}', 'seed<s>')}.{fl}", ""]
    rows = [["start (teacher, 1 step)", "1", *ds.cells([r["start"] for r in runs], metrics),
             "-", "-", "-"]]
    base = {k: _suite_rows(teachers, name, seeds, k) for k in ("kd", "cd")}
    for method in METHODS:
        have = [r for r in runs if method in r]
        ok = [r for r in have if "scores" in r[method]]
        div = sum(bool(r[method]["diverged"]) for r in have)
        for nfe in NATIVE[method]:
            recs = [r[method]["scores"][str(nfe)] for r in ok]
            if not recs:
                continue
            paired = {k: ds.ratio_interval(recs, b, p) if b and nfe == 1 and len(ok) == len(seeds)
                      else None for k, b in base.items()}
            rows.append([method, str(nfe), *ds.cells(recs, metrics),
                         *(str(v) if v else "-" for v in paired.values()),
                         f"{div}/{len(have)}"])
    for k, b in base.items():
        if b:
            rows.append([f"{k} (distill_suite, same teachers)", "1", *ds.cells(b, metrics),
                         "-", "-", "-"])
    for z in ZOO_BASELINES.get(name, ()):
        recs = [r[f"zoo:{z}"] for r in runs if f"zoo:{z}" in r][:1]
        if recs:
            rows.append([f"zoo {z} (1 run; sampling seeds only)", "1", *ds.cells(
                [{"test": [t]} for t in recs[0]["test"]], metrics), "-", "-", "-"])
    heads = [m.upper() if m not in ds.FRACTIONS else m[0].upper() for m in metrics]
    lines += [ds.table(["model", "NFE", *heads, f"{p.upper()} / KD", f"{p.upper()} / CD",
                        "diverged"], rows), ""]
    cost = []
    for method in METHODS:
        c = [r[method]["cost"] for r in runs if method in r and "cost" in r[method]]
        if c:
            cost.append([method, str(c[0]["steps"]),
                         ds.fmt(float(np.mean([x["seconds"] for x in c])), ".0f"),
                         ds.fmt(float(np.mean([x["teacher_nfe"] for x in c])), ".0f")])
    lines += ["Training cost (mean over seeds; teacher NFE in full-batch units):", "",
              ds.table(["method", "steps", "seconds", "teacher NFE"], cost), ""]
    for r in runs:
        for method in METHODS:
            if r.get(method, {}).get("diverged"):
                lines.append(f"- seed {r['setup']['seed']} {method} diverged: "
                             f"{r[method]['diverged']}")
    return "\n".join(lines) + "\n"


def report(out: Path, names: list[str], teachers: Path) -> str:
    sections = []
    for name in names:
        runs = [json.loads(p.read_text())
                for p in sorted((out / name).glob("seed*/gan_scores.json"))]
        fp = teachers / name / "floor.json" if name in ds.TOYS else out / name / "floor.json"
        sections.append(report_dataset(name, runs, json.loads(fp.read_text())
                                       if fp.exists() else None, teachers))
    return "\n".join(sections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run root (re-running resumes)")
    ap.add_argument("--data", default="checkerboard,digits", help="comma-separated data sets")
    ap.add_argument("--teachers", default="/work/runs/distill",
                    help="distill_suite.py's run root (the 2-D toys' teachers and baselines)")
    ap.add_argument("--train-seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--sample-seeds", type=int, default=3, help="sampling seeds per figure")
    ap.add_argument("--steps", type=int, default=300, help="training steps per student")
    ap.add_argument("--batch", type=int, default=0, help="training batch (default: the "
                    "suite's for the data set)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--report", action="store_true", help="print the tables from finished runs")
    ap.add_argument("--quick", action="store_true", help="smoke test")
    args = ap.parse_args()
    names = [n for n in args.data.split(",") if n]
    if bad := set(names) - set(DATA):
        ap.error(f"unknown data sets {sorted(bad)}; choose from {DATA}")
    try:
        seeds = ds.seed_list(args.train_seeds)
    except ValueError as e:
        ap.error(str(e))
    if args.sample_seeds < 1 or args.steps < 1 or args.batch < 0:
        ap.error("--sample-seeds and --steps must be >= 1, --batch >= 0")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.report:
        for name in names:
            if name not in ds.TOYS:
                ds.run_floor(name, ds.quick(ds.SETUPS[name]) if args.quick else ds.SETUPS[name],
                             Path(args.out))
            for seed in seeds:
                run_dataset(name, seed, args)
    text = report(Path(args.out), names, Path(args.teachers))
    print(text)
    atomic_write(Path(args.out) / "gan_report.md", lambda p: p.write_text(text))
    print(f"total wall-clock {time.perf_counter() - t0:.0f} s ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
