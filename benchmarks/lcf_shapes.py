"""Latent consistency fine-tuning (LCF) without a teacher: the digits LCM of lcm_digits.py
(8x8, 10 classes; its UNet is convolutional) adapted to ``shapes`` (16x16, 3 classes).

Sliced Wasserstein distance (pixel space, 256 fixed directions) to shapes' test split, at
w = 2 and 1, 2, 4 steps, before and after LCF, over sampling seeds (95% t intervals).

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcf_shapes.py --work /tmp/lcm \\
        --out benchmarks/results/lcf_shapes.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep import data, solvers
from fewstep._io import atomic_write
from fewstep.bench.students import RENOISE_SIGMA_MIN, class_labels
from fewstep.distill import get_method
from fewstep.metrics import mean_ci
from fewstep.metrics.distribution import SlicedReference
from fewstep.train import TrainConfig, checkpoint_info, load_checkpoint, train

SIGMA_MAX = 80.0


def _scores(f, ref: SlicedReference, n: int, seeds: int, w: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for k in (1, 2, 4):
        p = solvers.plan("consistency", k, sigma_min=RENOISE_SIGMA_MIN, sigma_max=SIGMA_MAX)
        for seed in range(seeds):
            x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
            cond = {"cond": class_labels(seed, n, 3), "w": torch.full((n,), w)}
            with torch.no_grad():
                s = solvers.get("consistency")(f, x * SIGMA_MAX, p.sigmas, cond=cond,
                                               generator=solvers.sample_generators(seed, n))
            out.setdefault(f"lcm{k}", []).append(ref.distance(s.flatten(1).clamp(-1, 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/lcm_digits")
    ap.add_argument("--out", default="benchmarks/results/lcf_shapes.json")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--w", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    shapes = data.get("shapes")
    ref = SlicedReference(shapes.load("test").flatten(1), 256, torch.Generator().manual_seed(0))
    before = _scores(load_checkpoint(work / "lcd"), ref, args.n, args.seeds, args.w)
    lcf = get_method("lcf")(N=30, k=3, w_min=1.0, w_max=4.0)
    t0 = time.time()
    res = train(lcf, load_checkpoint(work / "lcd").train().requires_grad_(True),
                shapes.load_labelled("train"),
                TrainConfig(steps=args.steps, batch_size=64, lr=2e-4, ema_decay=0.99,
                            checkpoint_every=50, progress=False, out_dir=str(work / "lcf")))
    print(f"lcf: {time.time() - t0:.0f} s this call", flush=True)
    after = _scores(res.ema, ref, args.n, args.seeds, args.w)
    rows = {}
    for key in before:
        rows[key] = {name: {"mean": (s := mean_ci(v)).mean, "lo": s.lo, "hi": s.hi,
                            "per_seed": v} for name, v in (("before", before[key]),
                                                           ("after", after[key]))}
        print(key, json.dumps({n: r["mean"] for n, r in rows[key].items()}), flush=True)
    result = {"command": "PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcf_shapes.py "
                         + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "lcf": {"train": checkpoint_info(work / "lcf")["cost"], "method": lcf.__dict__,
                      "batch_size": 64, "lr": 2e-4},
              "metric": "sliced Wasserstein-2, pixels in [-1, 1], 256 directions, against "
                        "shapes' test split (2000 images); labels uniform over 3 classes",
              "w": args.w, "rows": rows, "torch_threads": args.threads}
    atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
