"""Diffusion-GAN hybrids (DDGAN, SIDDM) trained from data: quality at their native NFE over
training seeds, training cost, and the fraction of runs that diverge. CPU only.

    nice -n 10 .venv/bin/python benchmarks/diffusion_gan.py --out runs/gan \
        [--data moons,digits] [--methods ddgan,siddm] [--T 4] [--seeds 0,1,2] \
        [--sample-seeds 2] [--scale 1.0] [--threads 1] [--quick]
    .venv/bin/python benchmarks/diffusion_gan.py --out runs/gan --report   # tables only

Protocol: the splits, scorers, start noises, data floor and statistics of
``benchmarks/distill_suite.py`` (its ``ds.*`` helpers), so the figures sit beside its
consistency students: the primary distance (SW for the toys, FD in ``digits_cnn`` features for
digits), precision/recall (PRDC, k = 5), each averaged over the sampling seeds within a training
seed, then a 95% t-interval over training seeds on the log scale. The test split is read only
for the final figures; nothing is chosen on it (no checkpoint selection: every student is its
final EMA, and the hyper-parameters below were fixed before any test figure was seen).

A run *diverges* if its loss or samples are non-finite, or if its samples score no better than
the moment-matched Gaussian (the train split's mean and per-coordinate std): such a generator
has learnt nothing beyond two moments. Diverged runs count in the divergence fraction and are
left out of the quality intervals (which then say how many seeds they hold).

Every run directory resumes (the training loop's checkpoints; finished scores are cached in
``<out>/<data>/<method>-T<T>/seed<s>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_suite as ds  # the shared protocol helpers

from fewstep import solvers
from fewstep._io import atomic_write
from fewstep.denoiser import NonFiniteError
from fewstep.distill import gan_pair, get_method
from fewstep.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class GanSetup:
    """Budgets of one data set (steps at ``--scale 1``) and the student's width."""

    steps: int
    batch: int
    width: int
    lr: float


SETUPS = {"moons": GanSetup(steps=3000, batch=256, width=128, lr=2e-4),
          "digits": GanSetup(steps=800, batch=64, width=16, lr=2e-4)}
BETAS = (0.5, 0.9)  # DDGAN's Adam betas
EMA_DECAY = 0.999


def run_one(name: str, method: str, T: int, seed: int, args: argparse.Namespace) -> dict:
    """Train one student and score it on the test split at every sampling seed."""
    gs, setup = SETUPS[name], _setup(name, args)
    sp = ds.splits(name, setup, seed)
    shape = tuple(sp.train.shape[1:])
    out = Path(args.out) / name / f"{method}-T{T}"
    torch.manual_seed(seed)
    pair = gan_pair(shape, method, width=gs.width)
    m = get_method(method)(T=T)
    cfg = TrainConfig(steps=max(1, round(gs.steps * args.scale)), batch_size=gs.batch,
                      lr=gs.lr, betas=BETAS, ema_decay=EMA_DECAY, grad_clip=None,
                      log_every=100, progress=False, out_dir=str(out / f"seed{seed}"),
                      seed=seed)
    t0 = time.perf_counter()
    try:
        res = train(m, pair, sp.train, cfg)
    except NonFiniteError as err:
        return {"diverged": True, "why": str(err), "cost": None, "test": []}
    test = ds.Scorer(sp.test, ds.feature_fn(name), ds.PRIMARY[name])
    scores = []
    for j in range(args.sample_seeds):
        z = torch.randn(setup.n_eval, *shape,
                        generator=torch.Generator().manual_seed(ds.TEST_NOISE_SEED + j))
        gens = solvers.sample_generators(ds.TEST_NOISE_SEED + j, len(z))
        scores.append(test(m.sample(res.ema, z, gens)))
    gauss = gaussian_baseline(sp.train, setup.n_eval, test)
    bad = [s for s in scores if not math.isfinite(s[ds.PRIMARY[name]])
           or s[ds.PRIMARY[name]] >= gauss]
    return {"diverged": bool(bad), "why": "no better than the moment-matched Gaussian"
            if bad else None, "cost": dataclasses.asdict(res.cost), "test": scores,
            "gaussian": gauss, "seconds_this_run": time.perf_counter() - t0,
            "params": sum(p.numel() for p in res.ema.generator.parameters())}


def _setup(name: str, args: argparse.Namespace) -> ds.Setup:
    return ds.quick(ds.SETUPS[name]) if args.quick else ds.SETUPS[name]


def gaussian_baseline(train_data: torch.Tensor, n: int, scorer: ds.Scorer) -> float:
    """The primary distance of samples from N(train mean, train per-coordinate std^2)."""
    g = torch.Generator().manual_seed(4321)
    x = train_data.double()
    z = torch.randn((n, *x.shape[1:]), generator=g, dtype=torch.float64)
    return scorer.distance((x.mean(0) + x.std(0) * z).float())


# ------------------------------------------------------------------------------------ report


def report(out: Path) -> str:
    lines = ["# Diffusion-GAN hybrids (DDGAN, SIDDM): quality at native NFE, cost, divergence",
             ""]
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        floor = json.loads((d / "floor.json").read_text()) if (d / "floor.json").exists() \
            else None
        metric = ds.PRIMARY[d.name]
        lines += [f"## {d.name} (primary: {metric.upper()}, lower is better)", ""]
        if floor is not None:
            v = [r[metric] for r in floor["subsets"]]
            lines.append(f"Data floor ({len(v)} train subsets of {floor['n']}): "
                         f"{np.mean(v):.4g} (range {min(v):.4g}-{max(v):.4g}).")
        lines.append("'failed': non-finite, or no better than the moment-matched Gaussian "
                     "(diverged or not yet learnt); quality intervals are over the other seeds.")
        head = ["method", "NFE", "seeds", "failed", f"{metric} [95%]", "precision", "recall",
                "moment-matched Gaussian", "train steps", "train s/seed"]
        rows = []
        for run in sorted(p for p in d.iterdir() if p.is_dir()):
            recs = [json.loads(f.read_text()) for f in sorted(run.glob("seed*.json"))]
            if not recs:
                continue
            ok = [r for r in recs if not r["diverged"]]
            cost = [r["cost"] for r in recs if r["cost"]]
            gauss = [r["gaussian"] for r in recs if "gaussian" in r]
            method, T = run.name.rsplit("-T", 1)
            rows.append([method, T, str(len(recs)), f"{len(recs) - len(ok)}/{len(recs)}",
                         str(ds.positive_interval(ds.per_seed(ok, metric)) or "-"),
                         str(ds.fraction_interval(ds.per_seed(ok, "precision")) or "-"),
                         str(ds.fraction_interval(ds.per_seed(ok, "recall")) or "-"),
                         ds.fmt(float(np.mean(gauss))) if gauss else "-",
                         str(cost[0]["steps"]) if cost else "-",
                         ds.fmt(float(np.mean([c["seconds"] for c in cost])), ".0f")
                         if cost else "-"])
        lines += ["", ds.table(head, rows), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="moons,digits")
    p.add_argument("--methods", default="ddgan,siddm")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--seeds", type=ds.seed_list, default=[0, 1, 2])
    p.add_argument("--sample-seeds", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke test: 200 evaluation samples")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        print(report(out))
        return
    torch.set_num_threads(args.threads)
    names = args.data.split(",")
    for name in names:
        if name not in SETUPS:
            p.error(f"--data {name!r}: this benchmark has setups for {', '.join(SETUPS)}")
        ds.run_floor(name, _setup(name, args), out)
        for seed in args.seeds:  # seed-major: an interrupted sweep has both methods
            for method in args.methods.split(","):
                path = out / name / f"{method}-T{args.T}" / f"seed{seed}.json"
                if path.exists():
                    continue
                rec = run_one(name, method, args.T, seed, args)
                text = json.dumps(rec, indent=1)
                atomic_write(path, lambda f, text=text: f.write_text(text))
                prim = [s[ds.PRIMARY[name]] for s in rec["test"]]
                print(f"[{name} {method} T={args.T} seed {seed}] diverged={rec['diverged']} "
                      f"{ds.PRIMARY[name]}={prim} cost={rec['cost']}", flush=True)


if __name__ == "__main__":
    main()
