"""Tuned vs untuned solvers at 4-10 NFE on exact teachers (issue 12's target table).

    nice -n 10 .venv/bin/python benchmarks/tune_suite.py [--teachers gmm16 moons checkerboard]
        [--nfe 4 5 6 8 10] [--methods gits ays ld3 s4s dpm_solver_v3 pas]
        [--out benchmarks/results/tune_suite] [--set s4s.iters=40 ...]

For each (teacher, NFE): the best untuned solver (every deterministic fewstep solver on the
karras, log_snr and polyexponential schedules, and every diffusers peer) and each tuned method,
all scored by ode_rmse against the tight reference ODE endpoint on held-out start noise (the
bench's seed-0 noise: never calibration or validation, which use reserved seeds). ratio = best
tuned / best untuned (target <= 0.5); tuning cost in process CPU-seconds (target <= 300) and
wall-clock seconds (on a shared machine). Rows are appended to ``OUT/rows.jsonl`` as they
finish (a rerun resumes); the table is written to ``OUT.md``. Each row records its options
and the command that made it; ``--set METHOD.KEY=VALUE`` overrides a method's option for one run
(cheaper settings for costly teachers), and the table header lists every command and override.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewstep import solvers, tune
from fewstep.bench import peers
from fewstep.bench.runner import reference, start_noise
from fewstep.bench.teachers import get as get_teacher

SCHEDULES = ("karras", "log_snr", "polyexponential")
OPTIONS = {"gits": {"grid_size": 60, "substeps": 3}, "ays": {"sweeps": 2},
           "ld3": {"iters": 100}, "s4s": {"iters": 150}, "dpm_solver_v3": {"grid_size": 80},
           "pas": {"base": "ddim"}}
TARGET = 0.5
# the command of the rows made before rows recorded their own
FIRST_RUN = ("benchmarks/tune_suite.py --teachers gmm16 moons checkerboard --nfe 4 5 6 8 10 "
             "--n-cal 96 --n-val 64 --n-test 256")


def options(overrides: list[str]) -> dict[str, dict[str, object]]:
    """:data:`OPTIONS` with ``METHOD.KEY=VALUE`` overrides (VALUE an int, float or string)."""
    out = {m: dict(o) for m, o in OPTIONS.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or method not in out:
            raise SystemExit(f"--set {item!r}: expected METHOD.KEY=VALUE with METHOD one of "
                             f"{', '.join(out)}")
        value: object = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                pass
        out[method][name] = value
    return out


def per_sample(y, ref):
    """Each test sample's mean squared error (ode_rmse is the root of their mean)."""
    return (y.double() - ref).pow(2).flatten(1).mean(1)


def ratio_interval(sq_tuned, sq_untuned, n_boot=2000, seed=0):
    """Paired bootstrap (over the held-out start noises) 95% percentile interval of
    ode_rmse(tuned) / ode_rmse(untuned)."""
    a, b = np.asarray(sq_tuned), np.asarray(sq_untuned)
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    r = np.sqrt(a[idx].mean(1) / b[idx].mean(1))
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def untuned(D, teacher, x, ref, nfe):
    """(name, ode_rmse) of every untuned solver and peer at exactly ``nfe``."""
    out = []
    for name in solvers.available(aliases=False):
        spec = solvers.get(name)
        if not spec.plannable or spec.stochastic or spec.requires or nfe < spec.min_nfe:
            continue
        for sched in SCHEDULES:
            p = solvers.plan(name, nfe, sched, sigma_min=teacher.sigma_min,
                             sigma_max=teacher.sigma_max)
            with torch.no_grad():
                y = spec(D, x, p.sigmas, **p.knobs)
            out.append((f"{name}@{sched}", per_sample(y, ref)))
    for name in peers.available():
        try:
            peer = peers.PreparedPeer(name, nfe, teacher.sigma_min, teacher.sigma_max)
        except peers.UnreachableNFEError:
            continue
        with torch.no_grad():
            y = peer.sample(peer.model(D), x).double()
        out.append((name, per_sample(y, ref)))
    # drop NaN (a peer's known failure)
    return [(n, float(v.mean().sqrt()), v) for n, v in out if bool(v.isfinite().all())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", nargs="+", default=["gmm16", "moons", "checkerboard"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 5, 6, 8, 10])
    ap.add_argument("--methods", nargs="*", default=list(OPTIONS))
    ap.add_argument("--n-cal", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/tune_suite")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    ap.add_argument("--redo", nargs="*", default=[], help="methods (or 'untuned') to run "
                    "again although rows exist, e.g. after the registry gained solvers")
    ap.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE",
                    help="override a method's option for this run (recorded in each row)")
    ap.add_argument("--table-only", action="store_true",
                    help="only write OUT.md from the rows in OUT/rows.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    if args.table_only:
        write_table(out / "rows.jsonl", out.with_suffix(".md"), args)
        return
    out.mkdir(parents=True, exist_ok=True)
    opts = options(args.set)
    command = shlex.join(["benchmarks/tune_suite.py", *sys.argv[1:]])
    rows_path, cache = out / "rows.jsonl", Path(".fewstep-cache/references")
    # rows without per-sample errors (made before the interval was reported) are redone
    done = {(r["teacher"], r["nfe"], r["method"]) for r in map(json.loads, rows_path.open())
            if "sq" in r and r["method"] not in args.redo} if rows_path.exists() else set()
    for name in args.teachers:
        teacher = get_teacher(name)
        D = tune.calibrate(teacher, 1, 1, cache=cache).denoiser  # the float64 teacher
        x = start_noise(teacher, 0, args.n_test)
        ref = reference(teacher, 0, args.n_test, 1e-6, cache)
        for nfe in args.nfe:
            todo = [m for m in ["untuned", *args.methods] if (name, nfe, m) not in done]
            for method in todo:
                row = {"teacher": name, "nfe": nfe, "method": method, "n_cal": args.n_cal,
                       "n_val": args.n_val, "n_test": args.n_test, "command": command}
                if method == "untuned":
                    scores = sorted(untuned(D, teacher, x, ref, nfe), key=lambda r: r[1])
                    row.update(best=scores[0][0], ode_rmse=scores[0][1],
                               top5=[s[:2] for s in scores[:5]], sq=scores[0][2].tolist())
                else:
                    t0 = time.process_time()
                    ts = tune.tune(teacher, method, nfe, n_cal=args.n_cal, n_val=args.n_val,
                                   cache=cache, **opts.get(method, {}))
                    ts.save(out / "tuned" / f"{name}-{method}-{nfe}")
                    spec = ts.spec("tuned")
                    with torch.no_grad():
                        sq = per_sample(spec(D, x, ts.sigmas), ref)
                    row.update(ode_rmse=float(sq.mean().sqrt()), sq=sq.tolist(),
                               val_loss=ts.val_loss, base_val_loss=ts.base_val_loss,
                               cpu_s=time.process_time() - t0, wall_s=ts.tuning_seconds,
                               teacher_rows=ts.teacher_rows, options=opts.get(method, {}),
                               **({"fallback": ts.info["fallback"]}
                                  if "fallback" in ts.info else {}))
                print(json.dumps(row), flush=True)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    write_table(rows_path, out.with_suffix(".md"), args)


def write_table(rows_path: Path, md: Path, args: argparse.Namespace) -> None:
    latest = {}  # a rerun's row replaces the earlier one of its (teacher, NFE, method)
    for r in map(json.loads, rows_path.open()):
        latest[r["teacher"], r["nfe"], r["method"]] = r
    rows = list(latest.values())
    methods = [m for m in OPTIONS if any(r["method"] == m for r in rows)]
    head = ["teacher", "NFE", "best untuned (solver@schedule)", "untuned ode_rmse",
            *[f"{m} (CPU s)" for m in methods], "best tuned", "ratio [95% CI]", "target 0.5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    counts = [0, 0]  # missed, met
    for teacher in dict.fromkeys(r["teacher"] for r in rows):
        for nfe in sorted({r["nfe"] for r in rows if r["teacher"] == teacher}):
            by = {r["method"]: r for r in rows if r["teacher"] == teacher and r["nfe"] == nfe}
            if "untuned" not in by:
                continue
            u = by["untuned"]
            tuned = [(m, by[m]) for m in methods if m in by]
            if not tuned:
                lines.append(f"| {teacher} | {nfe} | {u['best']} | {u['ode_rmse']:.4f} | "
                             + " | ".join(["not run"] * len(methods)) + " | - | - | not run |")
                continue
            cells = [f"{by[m]['ode_rmse']:.4f} ({by[m]['cpu_s']:.0f}"
                     + (", no EMS)" if "fallback" in by[m] else ")") if m in by else "-"
                     for m in methods]
            best = min(tuned, key=lambda t: t[1]["ode_rmse"])
            ratio = best[1]["ode_rmse"] / u["ode_rmse"]
            lo, hi = (ratio_interval(best[1]["sq"], u["sq"]) if "sq" in best[1] and "sq" in u
                      else (float("nan"), float("nan")))
            cpu = max((r["cpu_s"] for _, r in tuned), default=0.0)
            if ratio <= TARGET:
                verdict = "met" + (" (CI below 0.5)" if hi <= TARGET else
                                   " (point; CI reaches above 0.5)")
            else:
                verdict = f"missed: {ratio / TARGET:.2f}x the target ratio"
            verdict += "" if cpu <= 300 else f"; tuning {cpu:.0f} CPU s > 300"
            counts[ratio <= TARGET and cpu <= 300] += 1
            lines.append("| " + " | ".join([teacher, str(nfe), u["best"], f"{u['ode_rmse']:.4f}",
                                            *cells, best[0], f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]",
                                            verdict]) + " |")
    sizes = sorted({(r["teacher"], r.get("n_cal"), r.get("n_val"), r.get("n_test"))
                    for r in rows if r.get("n_cal")})
    sets = "; ".join(f"{t}: n_cal {a}, n_val {b}, n_test {c}" for t, a, b, c in sizes)
    commands = "\n".join(f"    nice -n 10 .venv/bin/python {c}" for c in
                          dict.fromkeys(r.get("command", FIRST_RUN) for r in latest.values()))
    changed = sorted({(r["teacher"], r["method"], json.dumps(r["options"], sort_keys=True))
                      for r in rows if r.get("options", OPTIONS.get(r["method"]))
                      != OPTIONS.get(r["method"])})
    overrides = "; ".join(f"{t} {m}: {o}" for t, m, o in changed) or "none"
    md.write_text(f"# Tuned vs untuned solvers (issue 12)\n\nCommands (rows resume from "
                  f"`{rows_path}`; a later row of a (teacher, NFE, method) replaces an earlier "
                  f"one):\n\n{commands}\n\nSet sizes per teacher: {sets}."
                  "\n\node_rmse on the held-out start noises "
                  "(bench seed 0) against the RK45 reference (rtol 1e-6); tuned cells: ode_rmse "
                  "(process CPU-seconds of tuning, calibration references included unless "
                  "cached). ratio = best tuned / best untuned, with its paired-bootstrap 95% "
                  "interval over the held-out noises; \"no EMS\": dpm_solver_v3 dropped its "
                  "statistics, worse on validation than without them (rows made before the "
                  "fallback existed keep them). Options per method: "
                  f"{json.dumps(OPTIONS)}; per-teacher overrides: {overrides}.\n\nTarget "
                  f"(ratio <= 0.5 at <= 300 CPU s) met in "
                  f"{counts[1]} of {sum(counts)} (teacher, NFE) cells.\n\n"
                  + "\n".join(lines) + "\n" + _findings(rows_path.parent / "findings.md"))


def _findings(path: Path) -> str:
    """The hand-written findings kept beside the rows (``OUT/findings.md``), if any."""
    return "\n" + path.read_text() if path.exists() else ""


if __name__ == "__main__":
    main()
