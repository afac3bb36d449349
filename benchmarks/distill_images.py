"""Training and distillation on an image data set (the built-in 8x8 ``digits``), CPU only.

    .venv/bin/python benchmarks/distill_images.py [--scale 1.0] [--threads 1] [--out DIR]
        [--n-eval 1000] [--methods cd,ct,ect,pd,kd,direct_cm] [--quick]

1. Train an EDM teacher, ``EDMPrecond(UNet(channels=32, channel_mult=(1, 2)))``, on the
   digits train split (1437 images).
2. Score the teacher with the best of several solvers (lowest FD) at NFE 1, 2, 4, 10, 50.
3. Distil CD, iCT (``ct``, from data, no teacher), ECT, PD, KD and Direct CM students from it
   with the step budgets below, and score each at 1 and 2 steps: consistency students with
   the ``consistency`` solver (2 steps re-noise to ``--tau``; see docs/distillation.md), PD
   students with DDIM on their own grid ``method.sigmas(k)``, KD (one-step) with DDIM at NFE 1.

Metrics (lower is better), all from the same ``--n-eval`` starting noises (seed 1):

- FD: Fréchet distance in the 64-d feature space of ``digits_cnn`` (fewstep's own extractor,
  cached and hash-checked) between the samples and the whole digits test split (359 images);
- SW: sliced Wasserstein SW_2 in pixel space (64-d, 256 projections) to the same test split;
- RMSE: per-pixel RMSE to the teacher's reference PF-ODE endpoint (RK45, rtol = atol =
  ``--ref-tol``) from the same noise, on the first ``--n-ref`` noises.

The "data floor" row scores ``--n-eval`` train images against the test split with the same
metrics: the best any model can be expected to do at these sample sizes. ``teacher NFE`` is in
units of one evaluation of a full training batch (``TrainCost``); ``teacher evals`` is that
times the batch size. All seeds are fixed; training steps scale with ``--scale``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fewstep import data, reference_solution, solvers
from fewstep.distill import get_method
from fewstep.metrics import frechet_distance_from_features, sliced_wasserstein
from fewstep.metrics.extractors import cache_dir, digits_cnn
from fewstep.nets import ConsistencyPrecond, EDMPrecond, UNet
from fewstep.train import TrainConfig, TrainCost, load_checkpoint, train

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
TEACHER_NFES = (1, 2, 4, 10, 50)
SOLVERS = ("ddim", "heun", "dpmpp_2m", "unipc_bh2", "ipndm")
CONSISTENCY = ("cd", "ct", "ect", "direct_cm")
ALL_METHODS = ("cd", "ct", "ect", "pd", "kd", "direct_cm")
# Training budgets at --scale 1 (optimiser steps, batch 128), each about 1-2 minutes on one
# CPU core for the default UNet.
TEACHER_STEPS = 1500
STEPS = {"cd": 300, "ct": 600, "ect": 400, "pd": 320, "kd": 400, "direct_cm": 150}
BATCH = 128


# --------------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """FD / SW to the test split and RMSE to the teacher's reference endpoint."""

    extractor: nn.Module
    test: Tensor
    test_features: Tensor = field(init=False)
    ref: Tensor | None = None  # reference PF-ODE endpoints of the first n_ref noises

    def __post_init__(self) -> None:
        self.test_features = self.features(self.test)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        return self.extractor(images.float()).double()

    def __call__(self, samples: Tensor) -> dict[str, float]:
        if not torch.isfinite(samples).all():
            return {"fd": math.nan, "sw": math.nan, "rmse": math.nan}
        out = {"fd": frechet_distance_from_features(self.features(samples), self.test_features),
               "sw": sliced_wasserstein(samples.double().flatten(1),
                                        self.test.double().flatten(1), n_projections=256,
                                        generator=torch.Generator().manual_seed(0))}
        if self.ref is not None:
            n = len(self.ref)
            out["rmse"] = float((samples[:n].double() - self.ref).pow(2).mean().sqrt())
        return out


@torch.no_grad()
def run(D: Callable, z: Tensor, solver: str, sigmas: Tensor | list[float], seed: int = 4,
        **knobs) -> Tensor:
    spec = solvers.get(solver)
    if spec.stochastic:
        knobs["generator"] = torch.Generator().manual_seed(seed)
    return spec(D, z, torch.as_tensor(sigmas, dtype=torch.float64), **knobs)


def planned(D: Callable, z: Tensor, solver: str, nfe: int) -> Tensor:
    p = solvers.plan(solver, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return run(D, z, solver, p.sigmas, **p.knobs)


# --------------------------------------------------------------------------------- models


def unet(channels: int) -> UNet:
    return UNet(1, channels=channels, channel_mult=(1, 2))


def edm_student(channels: int) -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(unet(channels), SIGMA_DATA)


def cm_student(channels: int) -> ConsistencyPrecond:
    torch.manual_seed(0)
    return ConsistencyPrecond(unet(channels), SIGMA_MIN, SIGMA_DATA)


@dataclass
class Row:
    name: str
    scores: dict[int, dict[str, float]]  # steps/NFE -> metrics
    cost: TrainCost | None = None
    note: str = ""


# --------------------------------------------------------------------------------- methods


def distil(name: str, teacher: nn.Module, train_data: Tensor, z: Tensor, score: Scorer,
           args: argparse.Namespace, out: Path) -> Row:
    steps = max(1, round(STEPS[name] * args.scale))
    cfg = TrainConfig(steps=steps, batch_size=BATCH, lr=4e-4, ema_decay=0.995, progress=False,
                      out_dir=str(out / name))
    two = torch.tensor([SIGMA_MAX, args.tau, 0.0])
    one = torch.tensor([SIGMA_MAX, 0.0])
    C = args.channels
    if name in CONSISTENCY:
        if name == "cd":
            method = get_method("cd")(N=18, solver="heun", mu=0.95)
            note = "N=18, Heun teacher step, EMA target mu=0.95, warm start, l2"
        elif name == "ct":
            method = get_method("ct")(total_steps=steps)
            cfg = dataclasses.replace(cfg, lr=1e-3)
            note = "iCT from scratch, no teacher, N doubling 10->1280 over the run, lr 1e-3"
        elif name == "ect":
            method = get_method("ect")(double_every=max(steps // 8, 1))
            cfg = dataclasses.replace(cfg, lr=2e-4)
            note = f"teacher weights, gap halves every {max(steps // 8, 1)} steps, lr 2e-4"
        else:
            method = get_method("direct_cm")(num_scales=10, solver="ipndm", nfe=8)
            note = "10 levels, target = iPNDM 8-NFE teacher solve to 0, warm start"
        student = method.init_student(teacher, cm_student(C))
        res = train(method, student, train_data, cfg, teacher=teacher)
        scores = {1: score(run(res.ema, z, "consistency", one)),
                  2: score(run(res.ema, z, "consistency", two))}
        return Row(name, scores, res.cost, note + f"; 2 steps re-noise to {args.tau:g}")
    if name == "kd":
        method = get_method("kd")(num_pairs=args.kd_pairs, solver="ipndm", nfe=20)
        res = train(method, method.init_student(teacher, edm_student(C)), train_data, cfg,
                    teacher=teacher)
        return Row(name, {1: score(run(res.ema, z, "ddim", one))}, res.cost,
                   f"{args.kd_pairs} (noise, iPNDM 20-NFE endpoint) pairs, warm start; "
                   "one-step only")
    if name == "pd":
        rounds = 4
        method = get_method("pd")(teacher_steps=2**rounds, steps_per_round=max(1, steps // rounds),
                                  sigma_data=SIGMA_DATA)
        spr = method.steps_per_round
        # A checkpoint at the end of the round that trains the 2-step student (kept next to
        # the final one) gives that student; the run continues to the 1-step student.
        cfg = dataclasses.replace(cfg, steps=method.total_steps,
                                  checkpoint_every=(rounds - 1) * spr, keep_checkpoints=2)
        res = train(method, method.init_student(teacher, edm_student(C)), train_data, cfg,
                    teacher=teacher)
        ckpt = Path(cfg.out_dir) / "checkpoints" / f"step_{(rounds - 1) * spr:08d}"
        two_step = load_checkpoint(ckpt, model=edm_student(C))
        scores = {1: score(run(res.ema, z, "ddim", method.sigmas(1))),
                  2: score(run(two_step, z, "ddim", method.sigmas(2)))}
        return Row(name, scores, res.cost,
                   f"DDIM 16->8->4->2->1, {method.steps_per_round} steps/round, warm start; "
                   "k steps = DDIM on method.sigmas(k)")
    raise ValueError(name)


# --------------------------------------------------------------------------------- output


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                           strict=True))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all training steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for these small batches on a busy box)")
    ap.add_argument("--channels", type=int, default=32, help="UNet base width")
    ap.add_argument("--n-eval", type=int, default=1000, help="generated samples per score")
    ap.add_argument("--n-ref", type=int, default=256,
                    help="noises with a reference ODE endpoint (RMSE)")
    ap.add_argument("--ref-tol", type=float, default=1e-5, help="RK45 rtol = atol of the ref")
    ap.add_argument("--tau", type=float, default=0.821,
                    help="re-noise sigma of 2-step consistency sampling (Song et al. 2023 used "
                    "0.821 for CIFAR-10)")
    ap.add_argument("--kd-pairs", type=int, default=2048, help="KD's stored teacher pairs")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset")
    ap.add_argument("--out", default=None, help="checkpoint root (re-running resumes); "
                    "default: a temporary directory")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: scale 0.02, 200 samples, 64 reference noises, 256 KD "
                    "pairs (numbers meaningless)")
    args = ap.parse_args()
    if args.quick:
        args.scale, args.n_eval, args.n_ref, args.ref_tol, args.kd_pairs = 0.02, 200, 64, 1e-3, 256
    methods = [m for m in args.methods.split(",") if m]
    if bad := set(methods) - set(ALL_METHODS):
        ap.error(f"unknown methods {sorted(bad)}; choose from {ALL_METHODS}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        ds = data.get("digits")
        train_data, test = ds.load("train"), ds.load("test")
        score = Scorer(digits_cnn(cache_dir() / "extractors"), test)
        perm = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(2))
        floor = score(train_data[perm[: args.n_eval]])

        # 1. teacher
        torch.manual_seed(0)
        cfg = TrainConfig(steps=max(1, round(TEACHER_STEPS * args.scale)), batch_size=BATCH,
                          lr=2e-3, warmup_steps=100, ema_decay=0.998, progress=False,
                          out_dir=str(out / "teacher"))
        res = train(get_method("edm")(sigma_data=SIGMA_DATA), edm_student(args.channels),
                    train_data, cfg)
        teacher, teacher_cost = res.ema, res.cost
        n_params = sum(p.numel() for p in teacher.parameters())
        print(f"teacher: {cfg.steps} steps in {teacher_cost.seconds:.0f} s, "
              f"{n_params / 1e6:.2f} M parameters", flush=True)

        z = SIGMA_MAX * torch.randn(args.n_eval, *ds.shape,
                                    generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        with torch.no_grad():
            score.ref = reference_solution(teacher, z[: args.n_ref], SIGMA_MAX,
                                           rtol=args.ref_tol, atol=args.ref_tol).double()
        print(f"reference endpoints: {args.n_ref} in {time.perf_counter() - t0:.0f} s",
              flush=True)

        # 2. teacher with the best solver per NFE
        t0 = time.perf_counter()
        teacher_rows = []
        for nfe in TEACHER_NFES:
            found = [(score(planned(teacher, z, s, nfe)), s) for s in SOLVERS
                     if solvers.get(s).min_nfe <= nfe]
            best, name = min(found, key=lambda f: f[0]["fd"])
            others = ", ".join(f"{s} {m['fd']:.2f}" for m, s in found)
            teacher_rows.append((nfe, name, best, others))
        print(f"teacher evaluation: {time.perf_counter() - t0:.0f} s", flush=True)
        fd50 = teacher_rows[-1][2]["fd"]

        # 3. students
        students = []
        for name in methods:
            torch.manual_seed(0)
            row = distil(name, teacher, train_data, z, score, args, out)
            students.append(row)
            print(f"{name}: {row.cost.steps} steps in {row.cost.seconds:.0f} s; 1 step FD "
                  f"{row.scores[1]['fd']:.3f}", flush=True)

    # 4. report
    print(f"\n## digits (1x8x8): EDM teacher UNet(channels={args.channels}, channel_mult=(1, 2)),"
          f" {n_params / 1e6:.2f} M parameters, {cfg.steps} steps x batch {BATCH}, "
          f"{teacher_cost.seconds:.0f} s")
    print(f"FD: digits_cnn features, {args.n_eval} samples vs the {len(test)} test images; "
          f"SW: pixels, same sets; RMSE: first {args.n_ref} noises vs RK45 (tol "
          f"{args.ref_tol:g}) endpoint. Lower is better.\n")
    rows = [["data floor (train vs test)", "-", "-", fmt(floor["fd"]), fmt(floor["sw"], ".4f"),
             "-", f"{args.n_eval} train images"]]
    for nfe, name, m, others in teacher_rows:
        rows.append([f"teacher NFE {nfe}", name, str(nfe), fmt(m["fd"]), fmt(m["sw"], ".4f"),
                     fmt(m["rmse"], ".4f"), f"FD: {others}"])
    print(table(["model", "solver", "NFE", "FD", "SW", "RMSE", "all solvers"], rows))

    head = ["student", "steps", "train s", "teacher NFE", "teacher evals", "FD 1", "FD 2",
            "SW 1", "SW 2", "RMSE 1", "RMSE 2"]
    rows = []
    for r in students:
        s1, s2 = r.scores.get(1, {}), r.scores.get(2, {})
        rows.append([r.name, str(r.cost.steps), f"{r.cost.seconds:.0f}",
                     f"{r.cost.teacher_nfe:.0f}", f"{r.cost.teacher_nfe * BATCH:.3g}",
                     fmt(s1.get("fd")), fmt(s2.get("fd")), fmt(s1.get("sw"), ".4f"),
                     fmt(s2.get("sw"), ".4f"), fmt(s1.get("rmse"), ".4f"),
                     fmt(s2.get("rmse"), ".4f")])
    print()
    print(table(head, rows))
    for r in students:
        print(f"  {r.name}: {r.note}")

    cms = [r for r in students if r.name in CONSISTENCY and 2 in r.scores]
    if cms:
        best = min(cms, key=lambda r: r.scores[2]["fd"])
        fd2 = best.scores[2]["fd"]
        verdict = "MET" if fd2 <= 1.5 * fd50 else "NOT MET"
        print(f"\nTarget (2-step consistency student within 1.5x of the teacher's 50-NFE FD): "
              f"{verdict}: best 2-step consistency student {best.name} FD {fd2:.3f} vs teacher "
              f"50-NFE FD {fd50:.3f} (ratio {fd2 / fd50:.2f}, limit 1.5; relative to this "
              f"teacher, whose own 50-NFE FD is {fd50 / floor['fd']:.1f}x the data floor)")
    by = {r.name: r for r in students}
    if "cd" in by and "direct_cm" in by:
        cd, dcm = by["cd"].scores, by["direct_cm"].scores
        closer = "Direct CM" if dcm[1]["rmse"] < cd[1]["rmse"] else "CD"
        better = "Direct CM" if dcm[1]["fd"] < cd[1]["fd"] else "CD"
        print(f"Direct CM vs CD (1 step): ODE RMSE {dcm[1]['rmse']:.4f} vs {cd[1]['rmse']:.4f} "
              f"({closer} closer to the teacher's ODE); FD {dcm[1]['fd']:.3f} vs "
              f"{cd[1]['fd']:.3f} ({better} better); 2 steps FD {dcm[2]['fd']:.3f} vs "
              f"{cd[2]['fd']:.3f}. " + ("Closer to the ODE also gave the better FD."
                                        if closer == better else
                                        "Closer to the ODE did NOT give the better FD."))
    print(f"\ntotal wall-clock {time.perf_counter() - t_start:.0f} s ({args.threads} thread(s), "
          f"scale {args.scale}, seeds fixed)")


if __name__ == "__main__":
    main()
