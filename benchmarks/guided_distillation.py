"""Guided distillation (Meng et al. 2023) on digits-cond: the issue's target.

Target (issue 14): a 4-step guided-distilled student within 1.5x of the guided teacher's 20-NFE
Frechet distance at the same w.

Everything runs through the bench (:func:`fewstep.bench.runner.run_suite`): the guided teacher
``zoo:digits-cond-edm@w=W`` (class-balanced rows, classifier-free guidance ``(1+W) D_c - W D_u``)
with its solvers at NFE 20 (20 calls of the guided denoiser = 40 network evaluations per
sample), and the students ``student:zoo:digits-cond-guided-pdK@w=W`` (stage 2, DDIM on their PD
grid, K = 8, 4, 2, 1) and ``student:zoo:digits-cond-guided@w=W`` (stage 1, DDIM at any NFE), on
the same start noise per seed, scored against the class-balanced labelled test split. The
stochastic sampler of Meng et al. (Sec. 3.3) runs on the same noise, labels and held-out set
through the bench's own scoring (``fd`` in the same feature space).

    PYTHONPATH=src .venv/bin/python benchmarks/guided_distillation.py --out runs/guided
    PYTHONPATH=src .venv/bin/python benchmarks/guided_distillation.py --out runs/guided --report

Re-running resumes (the bench's store). The report goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fewstep import solvers, zoo
from fewstep._io import atomic_write
from fewstep.bench import runner, students, teachers
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.distill import get_method, sample_pd_stochastic
from fewstep.metrics import mean_ci

W_VALUES = (1.0, 2.0)
STEPS = (1, 2, 4, 8)
TEACHER_SOLVERS = ("heun", "dpmpp_2m")
TEACHER_NFE = 20
STAGE1_NFE = (4, 8)
TARGET = 1.5


def suites(seeds: list[int], n: int) -> list[Suite]:
    """The teacher's solvers at NFE 8 and 20; the PD students on their own grids; the stage-1
    student with DDIM at NFE 4 and 8. One store, the same start noise per (teacher, seed).
    The reference ODE solution (every bench row's ode_rmse) is only loosely solved
    (rtol 1e-2): this benchmark reads FD against held-out data, not the ODE error."""
    ts = [f"zoo:digits-cond-edm@w={w:g}" for w in W_VALUES]
    common = dict(seeds=seeds, n_samples=n, reference_rtol=1e-2, timing_repeats=1)
    return [
        Suite("guided-teacher", ts, list(TEACHER_SOLVERS), [8, TEACHER_NFE], **common),
        Suite("guided-students", ts,
              [*(f"student:zoo:digits-cond-guided-pd{k}@w={w:g}" for k in STEPS
                 for w in W_VALUES),
               *(f"student:zoo:digits-cond-guided@w={w:g}" for w in W_VALUES)],
              [*STEPS, *STAGE1_NFE], **common)]


def stochastic_fd(teacher: str, k: int, seed: int, n: int, cache: Path) -> float:
    """FD of the k-step PD student sampled with Meng et al.'s stochastic sampler, on the
    bench's start noise, class-balanced rows and held-out set of (teacher, seed)."""
    t = teachers.get(teacher)
    w = teachers.split_guidance(teacher)[1]
    D = students.model(f"student:zoo:digits-cond-guided-pd{k}@w={w:g}")
    pd = get_method("pd")(**zoo.entry(f"digits-cond-guided-pd{k}").method["params"])
    x = runner.start_noise(t, seed, n).float()
    gens = solvers.sample_generators(seed, n, "cpu")
    with torch.no_grad():
        out = sample_pd_stochastic(D, x, pd.sigmas(k), generator=gens)
    _, extractor = runner.feature_space(t, cache)
    held = runner.held_out(t, seed, extractor)
    from fewstep import metrics

    f = runner._features(extractor, out.double())
    return float(metrics.frechet_distance(*metrics.feature_stats(f), *held.stats))


def run(out: Path, seeds: list[int], n: int) -> None:
    for s in suites(seeds, n):
        s.validate()
        runner.run_suite(s, out, progress=True)
    path = out / "stochastic.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for w in W_VALUES:
        for k in STEPS[1:]:  # 1 step: the stochastic sampler is DDIM
            for seed in seeds:
                key = f"{w:g}/{k}/{seed}"
                if key not in done:
                    done[key] = stochastic_fd(f"zoo:digits-cond-edm@w={w:g}", k, seed, n,
                                              out / "extractors")
                    text = json.dumps(done, indent=1)
                    atomic_write(path, lambda tmp, text=text: tmp.write_text(text))


def _ci(values: list[float]) -> str:
    c = mean_ci(values)
    return f"{c.mean:.3g} [{c.lo:.3g}, {c.hi:.3g}]" if c.n > 1 else f"{c.mean:.3g}"


def _ratio_ci(student: list[float], teacher: list[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio with a 95% t-interval, paired by seed (log scale)."""
    c = mean_ci(np.log(np.asarray(student) / np.asarray(teacher)))
    return math.exp(c.mean), math.exp(c.lo), math.exp(c.hi)


def report(out: Path) -> str:
    store = Store(out / "results.sqlite")
    rows = store.rows("guided-teacher") + store.rows("guided-students")
    fd: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
    cost: dict[str, tuple[float, float]] = {}
    nfe: dict[tuple[str, str, int], float] = {}
    for r in rows:
        key = (r["teacher"], students.label(r["method"]), r["nfe_target"])
        fd[key][r["seed"]] = r["metrics"]["fd"]
        nfe[key] = r["nfe"]
        cost[students.label(r["method"])] = (r["train_seconds"], r["train_teacher_nfe"])
    stoch = json.loads((out / "stochastic.json").read_text())
    lines = []
    for w in W_VALUES:
        t = f"zoo:digits-cond-edm@w={w:g}"
        best = min(TEACHER_SOLVERS, key=lambda m: np.mean(list(fd[(t, m, TEACHER_NFE)].values())))
        ref = fd[(t, best, TEACHER_NFE)]
        seeds = sorted(ref)
        lines += [f"\n### w = {w:g} (fewstep CFG scale {1 + w:g})\n",
                  f"Guided teacher at NFE {TEACHER_NFE} ({TEACHER_NFE} guided calls, "
                  f"{2 * TEACHER_NFE} network evaluations per sample): "
                  + ", ".join(f"{m} FD {_ci(list(fd[(t, m, TEACHER_NFE)].values()))}"
                              for m in TEACHER_SOLVERS)
                  + f". Reference for the ratio: {best} (the better). At NFE 8: "
                  + ", ".join(f"{m} FD {_ci(list(fd[(t, m, 8)].values()))}"
                              for m in TEACHER_SOLVERS) + ".\n",
                  "| student | sampler | steps | network evals / sample | FD (95% CI) | "
                  "FD / teacher (paired, 95% CI) | within 1.5x |",
                  "|---|---|---|---|---|---|---|"]
        entries: list[tuple[str, str, int, list[float], float]] = []
        for k in STEPS:
            lab = f"zoo/guided-pd{k}@w={w:g}"
            if (t, lab, k) in fd:
                entries.append((lab, "DDIM (PD grid)", k, [fd[(t, lab, k)][s] for s in seeds],
                                nfe[(t, lab, k)]))
            if k > 1 and all(f"{w:g}/{k}/{s}" in stoch for s in seeds):
                entries.append((lab, "stochastic (Meng 3.3)", k,
                                [stoch[f"{w:g}/{k}/{s}"] for s in seeds], float(k)))
        for k in STAGE1_NFE:
            lab = f"zoo/guided@w={w:g}"
            if (t, lab, k) in fd:
                entries.append((lab + " (stage 1)", "DDIM (Karras)", k,
                                [fd[(t, lab, k)][s] for s in seeds], nfe[(t, lab, k)]))
        for lab, sampler, k, vals, evals in entries:
            g, lo, hi = _ratio_ci(vals, [ref[s] for s in seeds])
            verdict = "yes" if hi < TARGET else ("mean only" if g < TARGET else "no")
            lines.append(f"| {lab} | {sampler} | {k} | {evals:g} | {_ci(vals)} | "
                         f"{g:.2f} [{lo:.2f}, {hi:.2f}] | {verdict} |")
    lines.append("\nTraining cost (whole chain up to the student, wall-clock on this shared "
                 "CPU; teacher evaluations per sample row):\n")
    for lab, (sec, tn) in sorted(cost.items()):
        if lab.startswith("zoo/"):
            lines.append(f"- {lab}: {sec:.0f} s, {tn:.0f} teacher rows")
    space = next(iter(r["config"].get("feature_space", "") for r in rows), "")
    lines.append(f"\nFeature space of FD: {space}. It is not the teacher's or the students' "
                 "training network: a separate digit classifier fewstep trains for scoring.")
    lines.append(f"Seeds: {seeds}; samples per case: {rows[0]['config']['n_samples']}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/guided"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n", type=int, default=250, help="samples per case (multiple of 10)")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if not a.report:
        run(a.out, a.seeds, a.n)
    print(report(a.out))


if __name__ == "__main__":
    sys.exit(main())
