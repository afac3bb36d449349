"""Training and distillation on every built-in data set, CPU only: the distillation evidence.

    .venv/bin/python benchmarks/distill_suite.py --out runs/distill [--data moons,digits,...]
        [--methods cd,ct,ect,pd,kd,direct_cm] [--train-seeds 0,1,2] [--sample-seeds 3]
        [--scale 1.0] [--threads 1] [--quick]
    .venv/bin/python benchmarks/distill_suite.py --out runs/distill --report   # tables only

For each data set and each training seed (``--train-seeds``; it seeds the networks'
initialisation, the training noise and batch order, and for the 2-D toys the training draw):

1. Train an EDM teacher (``EDMPrecond``): an MLP for the 2-D toys; for images the zoo
   teachers' UNet (16 base channels): one training seed of every student costs 13-38 minutes
   of one CPU core.
2. Score the teacher at NFE 1, 2, 4, 10, 50, with the solver chosen per NFE on validation.
3. Distil CD, iCT (``ct``, from data alone), ECT, PD, KD and Direct CM students from it and
   score each at 1 and 2 steps: consistency students with the ``consistency`` sampler (the
   2-step re-noise sigma ``tau`` chosen on validation), PD students with DDIM on their own grid
   ``method.sigmas(k)``, KD (one-step) at NFE 1.

Protocol (issue 9). Every choice is made on a *validation* split drawn from the train split,
from its own starting noise: the teacher's solver at each NFE, ``tau``, and the report's "best
2-step student" per data set (lowest mean validation score over training seeds,
:func:`select_on_validation`). For the toys the validation set is a fresh draw from the
training distribution; for the image sets it is a fixed fifth of the train split, held out of
training. Checkpoints are not chosen: every student is its final EMA (PD's 2-step student is
the EMA at the end of its 2-step round). The test split is read only for the final figures,
each at ``--sample-seeds`` starting noises (the same noises for every method).

Statistics. Each figure is averaged over the sampling seeds within a training seed, then a 95%
t-interval is taken over training seeds on the log scale (geometric mean; intervals of
nonnegative metrics stay positive). A ratio (student / teacher at 50 NFE) is paired by training
seed: the t-interval of the mean log-ratio, exponentiated. Precision and recall (and coverage)
are plain t-intervals clipped to [0, 1].

Metrics: the primary distance (lower is better) -- SW, sliced Wasserstein SW_2 (256
projections) for the toys and patches, FD for digits (features of ``digits_cnn``) and shapes
(pixels) -- the other distance where defined, precision/recall/density/coverage (Naeem et al.
2020, k=5, on the first ``PRDC_N`` samples and reference points) on raw coordinates for toys
and in FD's feature space for images, so stray samples count, and RMSE to the teacher's
reference PF-ODE endpoint (RK45) on the first ``n_ref`` noises of sampling seed 0: how closely
a student follows its teacher's ODE.

The data floor scores ``FLOOR_SUBSETS`` random train subsets (of the sample count) against the
test split: what a perfect model would score at this sample size, with its spread. A target
("2-step student within 1.5x of the teacher at 50 NFE") is counted only where the teacher's
interval lies above the floor's 2.5-97.5% range; it is met only if the ratio's upper bound is
<= 1.5. A student below its teacher (ratio < 1) is flagged: a weak teacher or a metric at its
floor, not a win.

Every run directory resumes (checkpoints are atomic; finished scores are cached in
``<out>/<data>/seed<s>/scores.json``, the floor in ``<out>/<data>/floor.json``), so an
interrupted sweep continues where it stopped; separate processes may run separate
``--train-seeds`` or ``--data``. Training steps scale with ``--scale``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewstep import data, reference_solution, solvers
from fewstep._io import atomic_write
from fewstep.distill import get_method
from fewstep.metrics import SlicedReference, frechet_distance_from_features, prdc
from fewstep.metrics.extractors import cache_dir, digits_cnn
from fewstep.metrics.stats import mean_ci
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
TARGET = 1.5  # 2-step student / teacher at 50 NFE
FLOOR_SUBSETS = 20
VAL_SEED = 7  # toys: the validation draw from the training distribution
VAL_NOISE_SEED = 99  # starting noise of every validation choice
TEST_NOISE_SEED = 1000  # sampling seed j starts from noise seeded TEST_NOISE_SEED + j
FLOOR_SEED = 5000  # floor subset i is seeded FLOOR_SEED + i
PRDC_K = 5
PRDC_N = 1000  # PRDC on the first 1000 samples vs the first 1000 reference points (its cost)
FRACTIONS = ("precision", "recall", "coverage")  # in [0, 1], higher is better


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
    """The zoo teachers' UNet (``digits-edm``: 16/32 channels, 2 levels; ``shapes-edm`` and
    ``patches-edm``: 16/32/32 channels, 3 levels), so a student costs what a zoo student costs."""
    mult = (1, 2) if shape[-1] <= 8 else (1, 2, 2)
    return UNet(shape[0], channels=16, channel_mult=mult, num_res_blocks=1, emb_dim=64)


LR = {"teacher": 2e-3, "cd": 4e-4, "ct": 1e-3, "ect": 2e-4, "pd": 4e-4, "kd": 4e-4,
      "direct_cm": 4e-4}
TOY = Setup(_mlp, 1.0, 256, 2000,
            {"cd": 1500, "ct": 1500, "ect": 1500, "pd": 800, "kd": 1000, "direct_cm": 1000},
            {**LR, "cd": 1e-3, "pd": 1e-3, "kd": 1e-3, "direct_cm": 1e-3}, 4000, 1000, 1e-6,
            8192, 35, {"num_scales": 18, "nfe": 16}, n_train=20_000)
DIGITS = Setup(_unet, 0.5, 64, 1000,
               {"cd": 800, "ct": 1000, "ect": 600, "pd": 400, "kd": 400, "direct_cm": 400},
               LR, 1000, 256, 1e-5, 2048, 20, {"num_scales": 10, "nfe": 12})
IMAGE16 = Setup(_unet, 0.5, 64, 1000,
                {"cd": 400, "ct": 600, "ect": 400, "pd": 400, "kd": 400, "direct_cm": 200},
                LR, 500, 128, 1e-4, 1024, 12, {"num_scales": 10, "nfe": 8})
SETUPS = {**dict.fromkeys(TOYS, TOY), "digits": DIGITS, "shapes": IMAGE16, "patches": IMAGE16}


PRIMARY = {**dict.fromkeys(TOYS, "sw"), "digits": "fd", "shapes": "fd", "patches": "sw"}


# --------------------------------------------------------------------------------- scoring

Sampler = Callable[[Tensor, int], Tensor]  # (start noise, noise seed) -> samples


class Scorer:
    """Distances (SW, and FD where there are features), PRDC and RMSE of samples against one
    reference set: the validation split (choices) or the test split (final figures)."""

    def __init__(self, reference: Tensor, features: Callable[[Tensor], Tensor] | None,
                 primary: str):
        self.reference, self.features, self.primary = reference, features, primary
        self.reference_features = self.embed(reference)
        # The reference's sorted projections, computed once (SW equals sliced_wasserstein's).
        self.sliced = SlicedReference(reference.double().flatten(1), 256,
                                      generator=torch.Generator().manual_seed(0))
        self.ref_endpoints: Tensor | None = None

    def embed(self, x: Tensor) -> Tensor:
        """The space PRDC (and FD) work in: features for images, raw coordinates for toys."""
        return x.double().flatten(1) if self.features is None else self.features(x)

    def distance(self, samples: Tensor, name: str | None = None) -> float:
        """One distance (default: the primary metric), NaN for non-finite samples."""
        name = name or self.primary
        if not torch.isfinite(samples).all():
            return math.nan
        if name == "sw":
            return self.sliced.distance(samples.double().flatten(1))
        return frechet_distance_from_features(self.embed(samples), self.reference_features)

    def __call__(self, samples: Tensor, rmse: bool = False) -> dict[str, float]:
        """Every metric; RMSE to ``ref_endpoints`` only if ``rmse`` (samples from their noise)."""
        names = ("sw",) if self.features is None else ("fd", "sw")
        out = {m: self.distance(samples, m) for m in names}
        finite = bool(torch.isfinite(samples).all())
        out.update(prdc(self.reference_features[:PRDC_N], self.embed(samples[:PRDC_N]), k=PRDC_K)
                   if finite
                   else dict.fromkeys(("precision", "recall", "density", "coverage"), math.nan))
        if rmse and self.ref_endpoints is not None:
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
def run(D: Callable, z: Tensor, solver: str, sigmas: Tensor | list[float], seed: int,
        **knobs: Any) -> Tensor:
    spec = solvers.get(solver)
    if spec.stochastic:
        knobs["generator"] = solvers.sample_generators(seed, z.shape[0])
    return spec(D, z, torch.as_tensor(sigmas, dtype=torch.float64), **knobs)


def planned(D: Callable, solver: str, nfe: int) -> Sampler:
    p = solvers.plan(solver, nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return lambda z, seed: run(D, z, solver, p.sigmas, seed, **p.knobs)


def on_grid(D: Callable, solver: str, sigmas: Sequence[float] | Tensor) -> Sampler:
    return lambda z, seed: run(D, z, solver, sigmas, seed)


def choose(val: Callable[[Tensor], float], z_val: Tensor,
           candidates: Mapping[Any, Sampler]) -> tuple[Any, dict[Any, float]]:
    """The candidate whose samples from the validation noise ``z_val`` score lowest on the
    validation metric ``val``, and every candidate's validation score. The test split is not
    an argument: no choice can read it. Non-finite scores rank last."""
    scores = {k: val(f(z_val, VAL_NOISE_SEED)) for k, f in candidates.items()}
    best = min(scores, key=lambda k: (not math.isfinite(scores[k]), scores[k]))
    return best, scores


# --------------------------------------------------------------------------------- one data set


@dataclass
class Context:
    """One data set at one training seed: its splits, noises, scorers and run directory."""

    name: str
    setup: Setup
    shape: tuple[int, ...]
    train_data: Tensor
    val: Scorer
    test: Scorer
    z_val: Tensor
    z_test: list[Tensor]  # one starting noise per sampling seed
    out: Path  # <out>/<data>/seed<s>
    scale: float
    seed: int

    def steps(self, n: int) -> int:
        return max(1, round(n * self.scale))

    def config(self, method: str, steps: int, **kw: Any) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=self.setup.batch, lr=self.setup.lr[method],
                           ema_decay=0.995, progress=False, out_dir=str(self.out / method),
                           seed=self.seed, **kw)

    def edm(self) -> EDMPrecond:
        torch.manual_seed(self.seed)
        return EDMPrecond(self.setup.make_net(self.shape), self.setup.sigma_data)

    def cm(self) -> ConsistencyPrecond:
        torch.manual_seed(self.seed)
        return ConsistencyPrecond(self.setup.make_net(self.shape), SIGMA_MIN,
                                  self.setup.sigma_data)

    def evaluate(self, f: Sampler, val: float | None = None) -> dict[str, Any]:
        """A chosen sampler's final figures: its validation score (``val`` if already known)
        and its test scores at every sampling seed (RMSE at seed 0, whose noise the reference
        endpoints start from)."""
        if val is None:
            val = self.val.distance(f(self.z_val, VAL_NOISE_SEED))
        return {"val": val, "test": [self.test(f(z, TEST_NOISE_SEED + j), rmse=j == 0)
                                     for j, z in enumerate(self.z_test)]}


def score_teacher(ctx: Context, teacher: nn.Module) -> dict[str, Any]:
    rows = {}
    for nfe in TEACHER_NFES:
        names = SOLVERS_50 if nfe == 50 else SOLVERS
        cands = {s: planned(teacher, s, nfe) for s in names if solvers.get(s).min_nfe <= nfe}
        best, val = choose(ctx.val.distance, ctx.z_val, cands)
        rows[str(nfe)] = {"solver": best, "val_by_solver": val,
                          **ctx.evaluate(cands[best], val[best])}
    return rows


def distil(ctx: Context, name: str, teacher: nn.Module) -> dict[str, Any]:
    """Train one student and score it at 1 and 2 steps."""
    s = ctx.setup
    steps = ctx.steps(s.steps[name])
    one = [SIGMA_MAX, 0.0]
    if name in CONSISTENCY:
        method, note = consistency_method(ctx, name, steps)
        res = train(method, method.init_student(teacher, ctx.cm()), ctx.train_data,
                    ctx.config(name, steps), teacher=None if name == "ct" else teacher)
        two = {t: on_grid(res.ema, "consistency", [SIGMA_MAX, t, 0.0]) for t in TAUS}
        tau, val = choose(ctx.val.distance, ctx.z_val, two)
        scores = {"1": ctx.evaluate(on_grid(res.ema, "consistency", one)),
                  "2": {"tau": tau, "val_by_tau": {str(t): v for t, v in val.items()},
                        **ctx.evaluate(two[tau], val[tau])}}
        note += "; 2 steps re-noise to tau chosen on validation"
    elif name == "kd":
        method = get_method("kd")(num_pairs=s.kd_pairs, solver="ipndm", nfe=s.kd_nfe)
        res = train(method, method.init_student(teacher, ctx.edm()), ctx.train_data,
                    ctx.config(name, steps), teacher=teacher)
        scores = {"1": ctx.evaluate(on_grid(res.ema, "ddim", one))}
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
        scores = {"1": ctx.evaluate(on_grid(res.ema, "ddim", method.sigmas(1))),
                  "2": ctx.evaluate(on_grid(two_step, "ddim", method.sigmas(2)))}
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


@dataclass(frozen=True)
class Splits:
    """Train (what models see), validation (choices) and test (final figures) samples, and the
    pool the data floor's subsets are drawn from."""

    train: Tensor
    val: Tensor
    test: Tensor
    floor_subset: Callable[[int], Tensor]  # i -> the i-th random train subset


def splits(name: str, setup: Setup, seed: int) -> Splits:
    """Toys: fresh draws per role (training draw seeded by the training seed). Images: a fixed
    fifth of the train split held out as validation, the whole test split for test."""
    ds = data.get(name)
    n = setup.n_eval
    if setup.n_train:
        return Splits(ds.load("train", n=setup.n_train, seed=seed),
                      ds.load("train", n=n, seed=VAL_SEED), ds.load("test", n=n, seed=1),
                      lambda i: ds.load("train", n=n, seed=FLOOR_SEED + i))
    full = ds.load("train")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(2))
    n_val = len(full) // 5

    def subset(i: int) -> Tensor:
        g = torch.Generator().manual_seed(FLOOR_SEED + i)
        return full[torch.randperm(len(full), generator=g)[: min(n, len(full))]]

    return Splits(full[perm[n_val:]], full[perm[:n_val]], ds.load("test"), subset)


def quick(setup: Setup) -> Setup:
    """Smoke-test scale: few samples and reference noises."""
    return dataclasses.replace(setup, n_eval=min(setup.n_eval, 200), n_ref=32, ref_tol=1e-3,
                               kd_pairs=128)


def run_floor(name: str, setup: Setup, out: Path) -> None:
    """``<out>/<data>/floor.json``: the test metrics of ``FLOOR_SUBSETS`` random train subsets."""
    path = out / name / "floor.json"
    if path.exists():
        return
    sp = splits(name, setup, 0)
    scorer = Scorer(sp.test, feature_fn(name), PRIMARY[name])
    rows = [scorer(sp.floor_subset(i)) for i in range(FLOOR_SUBSETS)]
    text = json.dumps({"n": len(sp.floor_subset(0)), "subsets": rows}, indent=1)
    atomic_write(path, lambda p: p.write_text(text))


def make_context(name: str, setup: Setup, sp: Splits, seed: int, out: Path, *,
                 sample_seeds: int, scale: float, feats: Any) -> Context:
    """The scoring context of data set ``name`` at training ``seed``: validation and test
    scorers (distances in ``feats``' space; None: raw samples) and the start noises, one
    validation set (``VAL_NOISE_SEED``) and one test set per sampling seed j
    (``TEST_NOISE_SEED + j``), shared by every protocol script so that methods compare on the
    same noise."""
    noise = [SIGMA_MAX * torch.randn(setup.n_eval, *sp.train.shape[1:],
                                     generator=torch.Generator().manual_seed(s))
             for s in (VAL_NOISE_SEED, *(TEST_NOISE_SEED + j for j in range(sample_seeds)))]
    return Context(name, setup, tuple(sp.train.shape[1:]), sp.train,
                   Scorer(sp.val, feats, PRIMARY[name]), Scorer(sp.test, feats, PRIMARY[name]),
                   noise[0], noise[1:], out, scale, seed)


def run_dataset(name: str, seed: int, methods: list[str], args: argparse.Namespace) -> None:
    """Train and score everything of one data set at one training seed (resumable)."""
    setup = quick(SETUPS[name]) if args.quick else SETUPS[name]
    out = Path(args.out) / name / f"seed{seed}"
    results = Results(out / "scores.json")
    sp = splits(name, setup, seed)
    feats = feature_fn(name)
    ctx = make_context(name, setup, sp, seed, out, sample_seeds=args.sample_seeds,
                       scale=args.scale, feats=feats)
    results.get_or_run("setup", lambda: {
        "n_eval": setup.n_eval, "n_ref": setup.n_ref, "ref_tol": setup.ref_tol,
        "batch": setup.batch, "n_train": len(sp.train), "n_val": len(sp.val),
        "n_test": len(sp.test), "primary": PRIMARY[name], "scale": args.scale,
        "threads": args.threads, "seed": seed, "sample_seeds": args.sample_seeds})

    cfg = dataclasses.replace(ctx.config("teacher", ctx.steps(setup.teacher_steps)),
                              warmup_steps=100, ema_decay=0.998)
    res = train(get_method("edm")(sigma_data=setup.sigma_data), ctx.edm(), sp.train, cfg)
    teacher = res.ema
    results.get_or_run("teacher_cost", lambda: {
        **dataclasses.asdict(res.cost),
        "params": sum(p.numel() for p in teacher.parameters())})
    ref_path = out / "ref_endpoints.pt"
    if not ref_path.exists():
        with torch.no_grad():
            ref = reference_solution(teacher, ctx.z_test[0][: setup.n_ref], SIGMA_MAX,
                                     rtol=setup.ref_tol, atol=setup.ref_tol).double()
        atomic_write(ref_path, lambda p: torch.save(ref, p))
    ctx.test.ref_endpoints = torch.load(ref_path)
    results.get_or_run("teacher", lambda: score_teacher(ctx, teacher))
    for m in methods:
        t0 = time.perf_counter()
        r = results.get_or_run(m, lambda m=m: distil(ctx, m, teacher))
        print(f"[{name} seed {seed}] {m}: {r['cost']['steps']} steps, "
              f"{r['cost']['seconds']:.0f} s train; 1 step val {PRIMARY[name]} "
              f"{r['scores']['1']['val']:.4g} ({time.perf_counter() - t0:.0f} s this run)",
              flush=True)


# --------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Interval:
    """A figure over training seeds: its centre and 95% bounds (NaN bounds with one seed)."""

    mean: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{fmt(self.mean)} (1 seed)"
        return f"{fmt(self.mean)} [{fmt(self.lo, '.3g')}, {fmt(self.hi, '.3g')}]"


def positive_interval(values: Sequence[float]) -> Interval | None:
    """Geometric mean and the exponentiated 95% t-interval of ``log(values)`` (one value per
    training seed), so the bounds of a nonnegative metric or a ratio stay positive. None if
    any value is non-finite or not positive (a diverged seed)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not (np.isfinite(v) & (v > 0)).all():
        return None
    s = mean_ci(np.log(v))
    return Interval(math.exp(s.mean), math.exp(s.lo), math.exp(s.hi), s.n)


def fraction_interval(values: Sequence[float]) -> Interval | None:
    """Mean and 95% t-interval, clipped to [0, 1], of a fraction (precision, recall, ...)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        return None
    s = mean_ci(v)
    return Interval(s.mean, max(0.0, s.lo), min(1.0, s.hi), s.n)


def per_seed(records: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """One value per training seed: ``metric`` averaged over that seed's sampling seeds
    (``record["test"]``, one score dict per sampling seed; those without it are skipped)."""
    return [float(np.mean([t[metric] for t in r["test"] if metric in t] or [math.nan]))
            for r in records]


def ratio_interval(students: Sequence[Mapping[str, Any]], teachers: Sequence[Mapping[str, Any]],
                   metric: str) -> Interval | None:
    """Student / teacher ratio of ``metric``, paired by training seed (log-ratio t-interval)."""
    return positive_interval([a / b for a, b in zip(per_seed(students, metric),
                                                     per_seed(teachers, metric), strict=True)])


def select_on_validation(candidates: Mapping[str, Sequence[Mapping[str, Any]]]) -> str | None:
    """The candidate (method) whose records -- one per training seed -- have the lowest mean
    validation score ``record["val"]``. Reads nothing else of a record (never ``"test"``).
    Candidates with a non-finite validation score rank last; None if there are none."""
    def key(name: str) -> tuple[bool, float]:
        v = [float(r["val"]) for r in candidates[name]]
        ok = bool(v) and all(math.isfinite(x) for x in v)
        return not ok, float(np.mean(v)) if ok else math.inf

    return min(candidates, key=key, default=None)


def target_status(ratio: Interval | None, teacher: Interval | None, floor_hi: float) -> str:
    """Whether "2-step student within ``TARGET``x of the teacher at 50 NFE" is met: counted only
    where the teacher's interval lies above the data floor's range ``floor_hi``, met only if
    the ratio's upper bound is <= TARGET. A ratio below 1 is flagged, never a win."""
    if ratio is None or teacher is None:
        return "missed (diverged)"
    flag = "; BELOW TEACHER: weak teacher or metric at floor, not a win" if ratio.mean < 1 else ""
    if ratio.n < 2 or teacher.n < 2:
        return "not counted (one seed)" + flag
    if not teacher.lo > floor_hi:
        return "not counted (teacher at floor)" + flag
    return ("met" if ratio.hi <= TARGET else "missed") + flag


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


@dataclass(frozen=True)
class Floor:
    """The data floor of the primary metric over random train subsets."""

    mean: float
    std: float
    lo: float  # 2.5th percentile
    hi: float  # 97.5th percentile
    count: int
    n: int  # samples per subset
    fractions: dict[str, float]  # mean precision, recall, coverage

    @classmethod
    def of(cls, floor: Mapping[str, Any], metric: str) -> Floor:
        v = np.array([s[metric] for s in floor["subsets"]], dtype=np.float64)
        lo, hi = np.percentile(v, [2.5, 97.5])
        return cls(float(v.mean()), float(v.std(ddof=1)), float(lo), float(hi), len(v),
                   floor["n"], {f: float(np.mean([s[f] for s in floor["subsets"]]))
                                for f in FRACTIONS})

    def __str__(self) -> str:
        return (f"{fmt(self.mean)} +- {fmt(self.std, '.2g')} (95% range {fmt(self.lo, '.3g')}"
                f"-{fmt(self.hi, '.3g')})")


def cells(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    """One table cell per metric: distances and RMSE on the log scale, fractions clipped."""
    out = []
    for m in metrics:
        iv = (fraction_interval if m in FRACTIONS else positive_interval)(per_seed(records, m))
        out.append(str(iv) if iv else "diverged")
    return out


def report_dataset(name: str, runs: Sequence[Mapping[str, Any]], floor: Mapping[str, Any] | None
                   ) -> tuple[str, list[str] | None, list[list[str]]]:
    """The data set's markdown section, its summary row (None if incomplete) and one row per
    2-step student for the every-method table."""
    runs = [r for r in runs if "teacher" in r]
    if not runs or floor is None:
        return f"## {name}: not scored yet\n", None, []
    st, p = runs[0]["setup"], runs[0]["setup"]["primary"]
    other = [m for m in ("fd", "sw") if m != p and m in runs[0]["teacher"]["50"]["test"][0]]
    metrics = [p, *other, "precision", "recall", "rmse"]
    fl = Floor.of(floor, p)
    seeds = [r["setup"]["seed"] for r in runs]
    tc = runs[0]["teacher_cost"]
    lines = [f"## {name}",
             f"Training seeds {seeds} x {st['sample_seeds']} sampling seeds. EDM teacher "
             f"({tc['params'] / 1e6:.2f} M parameters): {tc['steps']} steps x batch "
             f"{st['batch']}, {np.mean([r['teacher_cost']['seconds'] for r in runs]):.0f} s "
             f"mean. {st['n_eval']} samples vs the {st['n_test']} test samples; validation "
             f"{st['n_val']} samples; RMSE on {st['n_ref']} noises (sampling seed 0) vs RK45 "
             f"(tol {st['ref_tol']:g}). Primary metric: {p.upper()}. Cells: geometric mean "
             f"[95% interval] over training seeds (P, R: mean [95%], clipped).",
             "",
             f"Data floor ({fl.count} random train subsets of {fl.n} vs test): {p.upper()} "
             f"{fl}; precision {fl.fractions['precision']:.3f}, recall "
             f"{fl.fractions['recall']:.3f}.", ""]
    heads = [m.upper() if m not in FRACTIONS else m[0].upper() for m in metrics]
    t50 = [r["teacher"]["50"] for r in runs]
    rows = []
    for nfe in TEACHER_NFES:
        recs = [r["teacher"][str(nfe)] for r in runs]
        rows.append([f"teacher NFE {nfe}", ",".join(r["solver"] for r in recs),
                     *cells(recs, metrics)])
    lines += [table(["model", "solver (val., per seed)", *heads], rows), ""]
    rows, notes, two = [], [], {}
    for m in ALL_METHODS:
        have = [r for r in runs if m in r]
        if not have:
            continue
        notes.append(f"- {m}: {have[0][m]['note']}; train s per seed "
                     + ", ".join(f"{r[m]['cost']['seconds']:.0f}" for r in have)
                     + f"; teacher cost {have[0][m]['cost']['teacher_nfe']:.0f} full-batch "
                     "evaluations")
        for k in ("1", "2"):
            if k not in have[0][m]["scores"]:
                continue
            recs = [r[m]["scores"][k] for r in have]
            ratio = ratio_interval(recs, [r["teacher"]["50"] for r in have], p)
            taus = ",".join(str(r["tau"]) for r in recs if "tau" in r) or "-"
            rows.append([m, k, taus, *cells(recs, metrics), str(ratio) if ratio else "diverged"])
            if k == "2":
                two[m] = (recs, ratio, training_cost([r[m] for r in have], have))
    lines += [table(["student", "steps", "tau (val.)", *heads, f"{p.upper()} / teacher@50"],
                    rows), "", *notes, ""]
    teacher = positive_interval(per_seed(t50, p))
    excess = positive_interval([v / fl.mean for v in per_seed(t50, p)])
    above = teacher is not None and teacher.n > 1 and teacher.lo > fl.hi
    method_rows = [[name, m, str(len(recs)), *cells(recs, [p, "precision", "recall"]),
                    str(ratio) if ratio else "diverged", target_status(ratio, teacher, fl.hi),
                    *cost, "2 (teacher 50)"]
                   for m, (recs, ratio, cost) in two.items()]
    lines.append(f"Teacher at 50 NFE {teacher}; over the floor x{excess} "
                 f"({'clearly above the floor' if above else 'NOT clearly above the floor'}).")
    lines += [f"- 2-step {r[1]}: ratio {r[6]}: {r[7]}" for r in method_rows]
    if "cd" in two and "direct_cm" in two:
        cd = [r["cd"]["scores"]["1"] for r in runs if "cd" in r and "direct_cm" in r]
        dc = [r["direct_cm"]["scores"]["1"] for r in runs if "cd" in r and "direct_cm" in r]
        lines.append(f"- Direct CM vs CD at 1 step (means over seeds): ODE RMSE "
                     f"{fmt(np.mean(per_seed(dc, 'rmse')))} vs "
                     f"{fmt(np.mean(per_seed(cd, 'rmse')))}; {p.upper()} "
                     f"{fmt(np.mean(per_seed(dc, p)))} vs {fmt(np.mean(per_seed(cd, p)))}.")
    best = select_on_validation({m: recs for m, (recs, _, _) in two.items()})
    summary = None
    if best is not None:
        status = target_status(two[best][1], teacher, fl.hi)
        lines.append(f"Best 2-step student on validation: {best}; test ratio {two[best][1]}: "
                     f"{status}.")
        summary = [name, p.upper(), str(len(runs)), str(fl), str(teacher), str(excess),
                   "yes" if above else "no", best, str(two[best][1]), status]
    return "\n".join(lines) + "\n", summary, method_rows


def training_cost(students: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]
                  ) -> list[str]:
    """Two cells: the student's training wall-clock per training seed (mean) with the
    teacher's own beside it, and the teacher evaluations it spent (full-batch units, mean)."""
    s = np.mean([r["cost"]["seconds"] for r in students])
    t = np.mean([r["teacher_cost"]["seconds"] for r in runs])
    return [f"{s:.0f} (+ {t:.0f})", f"{np.mean([r['cost']['teacher_nfe'] for r in students]):.0f}"]


def report(out: Path, names: list[str]) -> str:
    sections, summary, methods = [], [], []
    for name in names:
        root = out / name
        runs = [json.loads(p.read_text()) for p in sorted(root.glob("seed*/scores.json"))]
        floor = json.loads((root / "floor.json").read_text()) if (root / "floor.json").exists() \
            else None
        text, row, mrows = report_dataset(name, runs, floor)
        sections.append(text)
        methods += mrows
        if row:
            summary.append(row)
    head = ["data", "metric", "seeds", "data floor", "teacher@50", "teacher / floor",
            "above floor", "best 2-step (val.)", "its ratio", "target"]
    mhead = ["data", "2-step student", "seeds", "primary", "precision", "recall",
             "ratio to teacher@50", "target", "train s/seed (+ teacher)", "teacher evals",
             "sampling NFE"]
    return ("\n".join(sections) + "\n## Summary: the student chosen on validation\n\n"
            + table(head, summary) + "\n\n## Every 2-step student\n\n" + table(mhead, methods)
            + "\n")


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; raises ValueError naming a bad entry."""
    seeds = []
    for s in text.split(","):
        if not s.strip().isdigit():
            raise ValueError(f"bad training seed {s!r} in --train-seeds {text!r}")
        seeds.append(int(s))
    return seeds


def protocol_parser(data_default: str, data_help: str) -> argparse.ArgumentParser:
    """The arguments every script on this protocol takes (run root, data sets, seeds, scale,
    threads, --report, --quick); a script adds its own."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run root (re-running resumes)")
    ap.add_argument("--data", default=data_default, help=data_help)
    ap.add_argument("--train-seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--sample-seeds", type=int, default=3, help="sampling seeds per figure")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all training steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for these small batches on a busy box)")
    ap.add_argument("--report", action="store_true", help="print the tables from finished runs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: few samples and reference noises (use with --scale 0.02)")
    return ap


def run_protocol(ap: argparse.ArgumentParser, args: argparse.Namespace, names: list[str],
                 run_one: Callable[[str, int], None], report: Callable[[Path, list[str]], str],
                 report_file: str) -> None:
    """The protocol's run loop: check the seeds, then per data set its floor and one
    ``run_one(name, seed)`` per training seed (each resumes), unless ``--report``; then print
    ``report(out, names)``, write it to ``out/report_file`` atomically and print the total
    wall-clock."""
    try:
        seeds = seed_list(args.train_seeds)
    except ValueError as e:
        ap.error(str(e))
    if args.sample_seeds < 1:
        ap.error(f"--sample-seeds must be >= 1; got {args.sample_seeds}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.report:
        for name in names:
            run_floor(name, quick(SETUPS[name]) if args.quick else SETUPS[name], Path(args.out))
            for seed in seeds:
                run_one(name, seed)
    text = report(Path(args.out), names)
    print(text)
    atomic_write(Path(args.out) / report_file, lambda p: p.write_text(text))
    print(f"total wall-clock {time.perf_counter() - t0:.0f} s ({args.threads} thread(s), "
          f"scale {args.scale})")


def main() -> None:
    ap = protocol_parser(",".join(TOYS + IMAGES), "comma-separated data sets")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset")
    args = ap.parse_args()
    names = [n for n in args.data.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    if bad := set(names) - set(SETUPS):
        ap.error(f"unknown data sets {sorted(bad)}; choose from {sorted(SETUPS)}")
    if bad := set(methods) - set(ALL_METHODS):
        ap.error(f"unknown methods {sorted(bad)}; choose from {ALL_METHODS}")
    run_protocol(ap, args, names, lambda name, seed: run_dataset(name, seed, methods, args),
                 report, "report.md")


if __name__ == "__main__":
    main()
