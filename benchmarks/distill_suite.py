"""Training and distillation on every built-in data set, CPU only: the issue-4 evidence table.

    .venv/bin/python benchmarks/distill_suite.py --out runs/distill [--data moons,digits,...]
        [--methods cd,ct,ect,pd,kd,direct_cm] [--scale 1.0] [--threads 1] [--quick]
    .venv/bin/python benchmarks/distill_suite.py --out runs/distill --report   # tables only

For each data set:

1. Train an EDM teacher (``EDMPrecond``): an MLP for the 2-D toys, a small UNet for images.
2. Score the teacher with the best of several solvers at NFE 1, 2, 4, 10, 50.
3. Distil CD, iCT (``ct``, from data alone), ECT, PD, KD and Direct CM students from it and
   score each at 1 and 2 steps: consistency students with the ``consistency`` sampler, PD
   students with DDIM on their own grid ``method.sigmas(k)``, KD (one-step) at NFE 1.

Choices made on a validation set, never on the test split: the teacher's best solver at each
NFE and the re-noise sigma ``tau`` of 2-step consistency sampling (from ``TAUS``) are picked
by the primary metric against ``n_eval`` samples of the *train* split; every reported figure
is against the held-out test split, from the same starting noises (seed 1).

Metrics (lower is better):

- toys: SW, sliced Wasserstein SW_2 (256 projections) to the test split (primary);
- digits: FD, Fréchet distance in the feature space of ``digits_cnn`` (fewstep's own
  extractor, cached and hash-checked) to the test split (primary), and SW in pixels;
- shapes: FD in pixel space (256-d; primary) and SW; patches: SW (primary; its test split has
  224 images in 768-d, too few for a stable pixel FD, which is shown for reference);
- RMSE: RMSE to the teacher's reference PF-ODE endpoint (RK45) from the same noise, on the
  first ``n_ref`` noises: how closely a student follows its teacher's ODE.

The "data floor" row scores ``n_eval`` train samples against the test split: the best any
model can be expected to do at these sample sizes. ``teacher NFE`` is in units of one
evaluation of a full training batch (``TrainCost``); ``teacher evals`` is that times the batch
size. Every run directory resumes (checkpoints are atomic; finished scores are cached in
``<out>/<data>/scores.json``), so an interrupted sweep continues where it stopped. All seeds
are fixed; training steps scale with ``--scale``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewstep import data, reference_solution, solvers
from fewstep._io import atomic_write
from fewstep.distill import get_method
from fewstep.metrics import frechet_distance_from_features, sliced_wasserstein
from fewstep.metrics.extractors import cache_dir, digits_cnn
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet, UNet
from fewstep.train import TrainConfig, load_checkpoint, train

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
TEACHER_NFES = (1, 2, 4, 10, 50)
SOLVERS = ("ddim", "heun", "dpmpp_2m", "unipc_bh2", "ipndm")
SOLVERS_50 = ("heun", "dpmpp_2m", "ipndm")  # at NFE 50 the rest agree to within noise
TAUS = (0.2, 0.5, 0.821, 1.5, 3.0)
CONSISTENCY = ("cd", "ct", "ect", "direct_cm")
ALL_METHODS = ("cd", "ct", "ect", "pd", "kd", "direct_cm")
TOYS = ("moons", "checkerboard", "8gaussians", "swissroll", "rings", "pinwheel")
IMAGES = ("digits", "shapes", "patches")


@dataclass(frozen=True)
class Setup:
    """Backbone, budgets and metric of one family of data sets (steps at ``--scale 1``)."""

    make_net: Callable[[tuple[int, ...]], nn.Module]
    sigma_data: float
    batch: int
    teacher_steps: int
    steps: dict[str, int]
    lr: dict[str, float]
    n_eval: int
    n_ref: int
    ref_tol: float
    kd_pairs: int
    kd_nfe: int
    direct: dict[str, Any]
    cd_levels: int = 18
    n_train: int | None = None  # toys: samples drawn for training


def _mlp(shape: tuple[int, ...]) -> nn.Module:
    return MLPDenoiserNet(shape[0], hidden=128, depth=3, emb_dim=64)


def _unet(shape: tuple[int, ...]) -> nn.Module:
    return UNet(shape[0], channels=32, channel_mult=(1, 2))


LR = {"teacher": 2e-3, "cd": 4e-4, "ct": 1e-3, "ect": 2e-4, "pd": 4e-4, "kd": 4e-4,
      "direct_cm": 4e-4}
TOY = Setup(_mlp, 1.0, 256, 2000,
            {"cd": 1500, "ct": 1500, "ect": 1500, "pd": 800, "kd": 1000, "direct_cm": 1000},
            {**LR, "cd": 1e-3, "pd": 1e-3, "kd": 1e-3, "direct_cm": 1e-3}, 4000, 1000, 1e-6,
            8192, 35, {"num_scales": 18, "nfe": 16}, n_train=20_000)
DIGITS = Setup(_unet, 0.5, 128, 1500,
               {"cd": 1200, "ct": 1500, "ect": 800, "pd": 600, "kd": 600, "direct_cm": 600},
               LR, 1000, 256, 1e-5, 2048, 20, {"num_scales": 10, "nfe": 12})
IMAGE16 = Setup(_unet, 0.5, 64, 1200,
                {"cd": 600, "ct": 1000, "ect": 600, "pd": 400, "kd": 500, "direct_cm": 300},
                LR, 500, 128, 1e-4, 1024, 12, {"num_scales": 10, "nfe": 8})
SETUPS = {**dict.fromkeys(TOYS, TOY), "digits": DIGITS, "shapes": IMAGE16, "patches": IMAGE16}
PRIMARY = {**dict.fromkeys(TOYS, "sw"), "digits": "fd", "shapes": "fd", "patches": "sw"}


# --------------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """FD / SW of samples against a reference set, and RMSE to reference ODE endpoints."""

    reference: Tensor
    features: Callable[[Tensor], Tensor] | None  # None: no FD (2-D toys)
    ref_endpoints: Tensor | None = None
    reference_features: Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.features is not None:
            self.reference_features = self.features(self.reference)

    def __call__(self, samples: Tensor) -> dict[str, float]:
        if not torch.isfinite(samples).all():
            return {"fd": math.nan, "sw": math.nan, "rmse": math.nan}
        out = {"sw": sliced_wasserstein(samples.double().flatten(1),
                                        self.reference.double().flatten(1), n_projections=256,
                                        generator=torch.Generator().manual_seed(0))}
        if self.features is not None:
            out["fd"] = frechet_distance_from_features(self.features(samples),
                                                       self.reference_features)
        if self.ref_endpoints is not None:
            n = len(self.ref_endpoints)
            out["rmse"] = float((samples[:n].double() - self.ref_endpoints).pow(2).mean().sqrt())
        return out


def feature_fn(name: str) -> Callable[[Tensor], Tensor] | None:
    if name in TOYS:
        return None
    if name == "digits":
        cnn = digits_cnn(cache_dir() / "extractors")
        return lambda x: cnn(x.float()).detach().double()
    return lambda x: x.double().flatten(1)


@torch.no_grad()
def run(D: Callable, z: Tensor, solver: str, sigmas: Tensor | list[float], seed: int = 4,
        **knobs: Any) -> Tensor:
    spec = solvers.get(solver)
    if spec.stochastic:
        knobs["generator"] = solvers.sample_generators(seed, z.shape[0])
    return spec(D, z, torch.as_tensor(sigmas, dtype=torch.float64), **knobs)


def planned(D: Callable, z: Tensor, solver: str, nfe: int) -> Tensor:
    p = solvers.plan(solver, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return run(D, z, solver, p.sigmas, **p.knobs)


# --------------------------------------------------------------------------------- one data set


@dataclass
class Context:
    name: str
    setup: Setup
    shape: tuple[int, ...]
    train_data: Tensor
    z: Tensor
    test: Scorer
    val: Scorer
    out: Path
    scale: float
    primary: str

    def steps(self, n: int) -> int:
        return max(1, round(n * self.scale))

    def config(self, method: str, steps: int, **kw: Any) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=self.setup.batch, lr=self.setup.lr[method],
                           ema_decay=0.995, progress=False, out_dir=str(self.out / method), **kw)

    def edm(self) -> EDMPrecond:
        torch.manual_seed(0)
        return EDMPrecond(self.setup.make_net(self.shape), self.setup.sigma_data)

    def cm(self) -> ConsistencyPrecond:
        torch.manual_seed(0)
        return ConsistencyPrecond(self.setup.make_net(self.shape), SIGMA_MIN,
                                  self.setup.sigma_data)


def best_by_val(ctx: Context, candidates: dict[str, Callable[[], Tensor]]) -> tuple[str, dict]:
    """The candidate with the lowest primary metric against the validation set, and its test
    scores (every candidate's validation score in ``"val"``)."""
    samples = {k: f() for k, f in candidates.items()}
    val = {k: ctx.val(s)[ctx.primary] for k, s in samples.items()}
    best = min(val, key=lambda k: (math.isnan(val[k]), val[k]))
    return best, {**ctx.test(samples[best]), "val": val}


def score_teacher(ctx: Context, teacher: nn.Module) -> dict[str, Any]:
    rows = {}
    for nfe in TEACHER_NFES:
        names = SOLVERS_50 if nfe == 50 else SOLVERS
        cands = {s: (lambda s=s, nfe=nfe: planned(teacher, ctx.z, s, nfe)) for s in names
                 if solvers.get(s).min_nfe <= nfe}
        best, scores = best_by_val(ctx, cands)
        rows[str(nfe)] = {"solver": best, **scores}
    return rows


def distil(ctx: Context, name: str, teacher: nn.Module) -> dict[str, Any]:
    """Train one student and score it at 1 and 2 steps."""
    s = ctx.setup
    steps = ctx.steps(s.steps[name])
    one = torch.tensor([SIGMA_MAX, 0.0])
    if name in CONSISTENCY:
        method, note = consistency_method(ctx, name, steps)
        res = train(method, method.init_student(teacher, ctx.cm()), ctx.train_data,
                    ctx.config(name, steps), teacher=None if name == "ct" else teacher)
        tau, two = best_by_val(ctx, {t: (lambda t=t: run(res.ema, ctx.z, "consistency",
                                                          [SIGMA_MAX, t, 0.0])) for t in TAUS})
        scores = {"1": ctx.test(run(res.ema, ctx.z, "consistency", one)), "2": two}
        note += f"; 2 steps re-noise to tau={tau} (chosen on validation)"
    elif name == "kd":
        method = get_method("kd")(num_pairs=s.kd_pairs, solver="ipndm", nfe=s.kd_nfe)
        res = train(method, method.init_student(teacher, ctx.edm()), ctx.train_data,
                    ctx.config(name, steps), teacher=teacher)
        scores = {"1": ctx.test(run(res.ema, ctx.z, "ddim", one))}
        note = f"{s.kd_pairs} (noise, iPNDM {s.kd_nfe}-NFE endpoint) pairs, warm start"
    elif name == "pd":
        rounds = 4
        method = get_method("pd")(teacher_steps=2**rounds, steps_per_round=max(1, steps // rounds),
                                  sigma_data=s.sigma_data)
        spr = method.steps_per_round
        # The checkpoint that ends the round training the 2-step student is kept beside the
        # final (1-step) one.
        cfg = ctx.config(name, method.total_steps, checkpoint_every=(rounds - 1) * spr,
                         keep_checkpoints=2)
        res = train(method, method.init_student(teacher, ctx.edm()), ctx.train_data, cfg,
                    teacher=teacher)
        two_step = load_checkpoint(Path(cfg.out_dir) / "checkpoints" / f"step_{3 * spr:08d}",
                                   model=ctx.edm())
        scores = {"1": ctx.test(run(res.ema, ctx.z, "ddim", method.sigmas(1))),
                  "2": ctx.test(run(two_step, ctx.z, "ddim", method.sigmas(2)))}
        note = f"DDIM 16->8->4->2->1, {spr} steps/round, warm start; own grid"
    else:
        raise ValueError(f"unknown method {name!r}")
    return {"scores": scores, "cost": dataclasses.asdict(res.cost), "note": note}


def consistency_method(ctx: Context, name: str, steps: int) -> tuple[Any, str]:
    s = ctx.setup
    if name == "cd":
        return (get_method("cd")(N=s.cd_levels, solver="heun", mu=0.95),
                f"N={s.cd_levels}, Heun teacher step, EMA target mu=0.95, warm start, l2")
    if name == "ct":
        return (get_method("ct")(total_steps=steps),
                "iCT from scratch (no teacher), N doubling 10->1280 over the run")
    if name == "ect":
        every = max(steps // 8, 1)
        return (get_method("ect")(double_every=every),
                f"teacher weights, gap halves every {every} steps")
    d = s.direct
    return (get_method("direct_cm")(num_scales=d["num_scales"], solver="ipndm", nfe=d["nfe"]),
            f"{d['num_scales']} levels, target = iPNDM {d['nfe']}-NFE teacher solve to 0, "
            "warm start")


class Results:
    """``<out>/<data>/scores.json``: finished parts, rewritten atomically after each."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get_or_run(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = fn()
            text = json.dumps(self.data, indent=1, sort_keys=True)
            atomic_write(self.path, lambda p: p.write_text(text))
        return self.data[key]


def run_dataset(name: str, methods: list[str], args: argparse.Namespace) -> Results:
    setup = SETUPS[name]
    out = Path(args.out) / name
    results = Results(out / "scores.json")
    if args.quick:
        setup = dataclasses.replace(setup, n_eval=min(setup.n_eval, 200), n_ref=32,
                                    ref_tol=1e-3, kd_pairs=128)
    ds = data.get(name)
    n_train = setup.n_train
    train_data = ds.load("train", n=n_train, seed=0) if n_train else ds.load("train")
    test = ds.load("test", n=setup.n_eval, seed=1) if n_train else ds.load("test")
    val_pool = ds.load("train", n=setup.n_eval, seed=7) if n_train else train_data
    perm = torch.randperm(len(val_pool), generator=torch.Generator().manual_seed(2))
    val = val_pool[perm[: setup.n_eval]]
    feats = feature_fn(name)
    ctx = Context(name, setup, tuple(ds.shape), train_data,
                  SIGMA_MAX * torch.randn(setup.n_eval, *ds.shape,
                                          generator=torch.Generator().manual_seed(1)),
                  Scorer(test, feats), Scorer(val, feats), out, args.scale, PRIMARY[name])
    results.get_or_run("floor", lambda: ctx.test(val))
    results.get_or_run("setup", lambda: {
        "n_eval": setup.n_eval, "n_ref": setup.n_ref, "ref_tol": setup.ref_tol,
        "batch": setup.batch, "n_train": len(train_data), "n_test": len(test),
        "primary": ctx.primary, "scale": args.scale, "threads": args.threads})

    torch.manual_seed(0)
    cfg = dataclasses.replace(ctx.config("teacher", ctx.steps(setup.teacher_steps)),
                              warmup_steps=100, ema_decay=0.998)
    res = train(get_method("edm")(sigma_data=setup.sigma_data), ctx.edm(), train_data, cfg)
    teacher = res.ema
    results.get_or_run("teacher_cost", lambda: {
        **dataclasses.asdict(res.cost),
        "params": sum(p.numel() for p in teacher.parameters())})
    ref_path = out / "ref_endpoints.pt"
    if not ref_path.exists():
        with torch.no_grad():
            ref = reference_solution(teacher, ctx.z[: setup.n_ref], SIGMA_MAX,
                                     rtol=setup.ref_tol, atol=setup.ref_tol).double()
        atomic_write(ref_path, lambda p: torch.save(ref, p))
    ctx.test.ref_endpoints = torch.load(ref_path)
    results.get_or_run("teacher", lambda: score_teacher(ctx, teacher))
    for m in methods:
        t0 = time.perf_counter()
        r = results.get_or_run(m, lambda m=m: distil(ctx, m, teacher))
        print(f"[{name}] {m}: {r['cost']['steps']} steps, {r['cost']['seconds']:.0f} s train; "
              f"1 step {ctx.primary} {r['scores']['1'][ctx.primary]:.4g} "
              f"({time.perf_counter() - t0:.0f} s this run)", flush=True)
    return results


# --------------------------------------------------------------------------------- output


def fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


def report_dataset(name: str, r: dict[str, Any]) -> tuple[str, list[str] | None]:
    """The data set's markdown section and its summary row (None if incomplete)."""
    if "teacher" not in r:
        return f"## {name}: teacher not scored yet\n", None
    st, p = r["setup"], r["setup"]["primary"]
    metrics = [m for m in ("fd", "sw", "rmse") if m in r["teacher"]["50"]]
    tc = r["teacher_cost"]
    lines = [f"## {name}",
             f"EDM teacher ({tc['params'] / 1e6:.2f} M parameters): {tc['steps']} steps x batch "
             f"{st['batch']}, {tc['seconds']:.0f} s. {st['n_eval']} samples vs the "
             f"{st['n_test']} test samples; RMSE on {st['n_ref']} noises vs RK45 (tol "
             f"{st['ref_tol']:g}). Primary metric: {p.upper()}.", ""]
    rows = [["data floor (train vs test)", "-", *[fmt(r["floor"].get(m)) for m in metrics]]]
    for nfe, t in sorted(r["teacher"].items(), key=lambda kv: int(kv[0])):
        rows.append([f"teacher NFE {nfe}", t["solver"], *[fmt(t.get(m)) for m in metrics]])
    lines += [table(["model", "solver (val.)", *[m.upper() for m in metrics]], rows), ""]
    head = ["student", "steps", "train s", "teacher NFE", "teacher evals",
            *[f"{m.upper()} {k}" for m in metrics for k in ("1", "2")]]
    rows, notes = [], []
    for m in ALL_METHODS:
        if m not in r:
            continue
        sc, c = r[m]["scores"], r[m]["cost"]
        rows.append([m, str(c["steps"]), f"{c['seconds']:.0f}", f"{c['teacher_nfe']:.0f}",
                     f"{c['teacher_nfe'] * st['batch']:.3g}",
                     *[fmt(sc.get(k, {}).get(mm)) for mm in metrics for k in ("1", "2")]])
        notes.append(f"- {m}: {r[m]['note']}")
    lines += [table(head, rows), "", *notes, ""]
    t50 = r["teacher"]["50"][p]
    cms = [m for m in CONSISTENCY if m in r]
    if not cms:
        return "\n".join(lines), None
    best = min(cms, key=lambda m: r[m]["scores"]["2"][p])
    v2 = r[best]["scores"]["2"][p]
    ratio = v2 / t50
    lines.append(f"Target (2-step consistency student within 1.5x of the teacher's 50-NFE "
                 f"{p.upper()}): {'MET' if ratio <= 1.5 else 'NOT MET'}: {best} {v2:.4g} vs "
                 f"{t50:.4g}, ratio {ratio:.2f}.")
    dq = "-"
    if "cd" in r and "direct_cm" in r:
        cd, dc = r["cd"]["scores"]["1"], r["direct_cm"]["scores"]["1"]
        closer = "direct_cm" if dc["rmse"] < cd["rmse"] else "cd"
        better = "direct_cm" if dc[p] < cd[p] else "cd"
        dq = (f"RMSE {dc['rmse']:.3g} vs {cd['rmse']:.3g}, {p.upper()} {dc[p]:.3g} vs "
              f"{cd[p]:.3g}: {'same' if closer == better else 'opposite'}")
        lines.append(f"Direct CM vs CD at 1 step: ODE RMSE {dc['rmse']:.4g} vs {cd['rmse']:.4g} "
                     f"({closer} closer to the teacher's ODE); {p.upper()} {dc[p]:.4g} vs "
                     f"{cd[p]:.4g} ({better} better).")
    summary = [name, p.upper(), fmt(r["floor"][p]), fmt(t50), best, fmt(v2), f"{ratio:.2f}",
               "yes" if ratio <= 1.5 else "no", dq]
    return "\n".join(lines) + "\n", summary


def report(out: Path, names: list[str]) -> str:
    sections, summary = [], []
    for name in names:
        path = out / name / "scores.json"
        if not path.exists():
            continue
        text, row = report_dataset(name, json.loads(path.read_text()))
        sections.append(text)
        if row:
            summary.append(row)
    head = ["data", "metric", "floor", "teacher@50", "best 2-step CM", "its value", "ratio",
            "<= 1.5x", "Direct CM vs CD (1 step): RMSE, metric, same direction?"]
    return "\n".join(sections) + "\n## Summary\n\n" + table(head, summary) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run root (re-running resumes)")
    ap.add_argument("--data", default=",".join(TOYS + IMAGES), help="comma-separated data sets")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all training steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for these small batches on a busy box)")
    ap.add_argument("--report", action="store_true", help="print the tables from finished runs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: few samples and reference noises (use with --scale 0.02)")
    args = ap.parse_args()
    names = [n for n in args.data.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    if bad := set(names) - set(SETUPS):
        ap.error(f"unknown data sets {sorted(bad)}; choose from {sorted(SETUPS)}")
    if bad := set(methods) - set(ALL_METHODS):
        ap.error(f"unknown methods {sorted(bad)}; choose from {ALL_METHODS}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.report:
        for name in names:
            run_dataset(name, methods, args)
    text = report(Path(args.out), names)
    print(text)
    atomic_write(Path(args.out) / "report.md", lambda p: p.write_text(text))
    print(f"total wall-clock {time.perf_counter() - t0:.0f} s ({args.threads} thread(s), "
          f"scale {args.scale}, seeds fixed)")


if __name__ == "__main__":
    main()
