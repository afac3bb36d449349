"""Latent consistency distillation on a class-conditional digits teacher (pixel space, 8x8):
the 4-step LCM against the guided teacher's 20-NFE Frechet distance at the same w.

Stages (each resumable; run directories under --work):
1. a class-conditional EDM teacher (UNet 16/32 channels, label dropout 0.1) on digits' train split;
2. LCD: a w-conditioned consistency student warm-started from it, w ~ U[w_min, w_max];
3. Frechet distance in the digits-CNN feature space against the test split (and the CNN's
   accuracy on the requested labels: how well samples follow their class), for the guided
   teacher (DPM-Solver++(2M), 20 guided evaluations = 40 network rows per sample) and the LCM at
   1, 2, 4 steps (bench student ``student:RUN@w=W``), at several w, over sampling seeds (the same
   start noise and class labels for both), with 95% t intervals.

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcm_digits.py --work /tmp/lcm \\
        --out benchmarks/results/lcm_digits.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from fewstep import data, solvers
from fewstep._io import atomic_write
from fewstep.bench import students
from fewstep.denoiser import CFGDenoiser
from fewstep.distill import get_method
from fewstep.metrics import frechet_distance_from_features, mean_ci
from fewstep.metrics.extractors import digits_cnn
from fewstep.nets import ConsistencyPrecond, EDMPrecond
from fewstep.nets.unet import UNet
from fewstep.train import TrainConfig, checkpoint_info, train

SIGMA_MAX = 80.0


def _unet(w: bool) -> UNet:
    return UNet(1, 16, (1, 2), 1, emb_dim=64, cond_type="label", num_classes=10, w_embedding=w)


def _arg(v: object) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/lcm_digits")
    ap.add_argument("--out", default="benchmarks/results/lcm_digits.json")
    ap.add_argument("--teacher-steps", type=int, default=500)
    ap.add_argument("--lcd-steps", type=int, default=200)
    ap.add_argument("--w", type=float, nargs="+", default=[1.5, 2.5, 4.0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=359)  # the test split's size
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    batch = data.get("digits").load_labelled("train")

    teacher_net = EDMPrecond(_unet(False), 0.5)
    t0 = time.time()
    res = train(get_method("edm")(label_dropout=0.1), teacher_net, batch, TrainConfig(
        steps=args.teacher_steps, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.998,
        checkpoint_every=100, progress=False, out_dir=str(work / "teacher"), seed=0))
    teacher = res.ema.eval().requires_grad_(False)
    print(f"teacher: {time.time() - t0:.0f} s this call", flush=True)

    lcd = get_method("lcd")(N=30, k=3, solver="euler", w_min=1.0, w_max=4.0, mu=0.95,
                            distance="pseudo_huber")
    t0 = time.time()
    train(lcd, ConsistencyPrecond(_unet(True), 0.002, 0.5), batch, TrainConfig(
        steps=args.lcd_steps, batch_size=64, lr=4e-4, ema_decay=0.99, checkpoint_every=50,
        progress=False, out_dir=str(work / "lcd"), seed=0), teacher=teacher)
    print(f"lcd: {time.time() - t0:.0f} s this call", flush=True)

    extractor = digits_cnn()
    with torch.no_grad():
        ref = extractor(data.get("digits").load("test"))
    rows = []
    for w in args.w:
        method = f"student:{work / 'lcd'}@w={w:g}"
        students.check(method)
        lcm = students.model(method)
        guided = CFGDenoiser(teacher, w, {"cond": -1})
        fd: dict[str, list[float]] = {"teacher20": [], "lcm1": [], "lcm2": [], "lcm4": []}
        acc: dict[str, list[float]] = {key: [] for key in fd}
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(args.n, 1, 8, 8, generator=g) * SIGMA_MAX
            labels = students.class_labels(seed, args.n, 10)
            with torch.no_grad():
                out = {"teacher20": solvers.sample(
                    guided, x, "dpmpp_2m", nfe=20, schedule_kwargs={"sigma_max": SIGMA_MAX},
                    cond={"cond": labels})}
                for k in (1, 2, 4):
                    out[f"lcm{k}"] = students.run_student(method, lcm, x, k, SIGMA_MAX, seed)[0]
                for key, samples in out.items():
                    feats = extractor(samples.clamp(-1, 1))
                    fd[key].append(frechet_distance_from_features(feats, ref))
                    acc[key].append(float((extractor.head(feats).argmax(1) == labels)
                                          .float().mean()))
        row = {"w": w}
        for key, values in fd.items():
            s = mean_ci(values)
            row[key] = {"mean": s.mean, "lo": s.lo, "hi": s.hi, "per_seed": values,
                        "label_accuracy": float(sum(acc[key]) / len(acc[key]))}
        row["ratio_lcm4_over_teacher20"] = [a / b for a, b in zip(fd["lcm4"], fd["teacher20"],
                                                                   strict=True)]
        row["met_1.5x"] = bool(math.fsum(fd["lcm4"]) <= 1.5 * math.fsum(fd["teacher20"]))
        rows.append(row)
        print(json.dumps({k: (v["mean"] if isinstance(v, dict) else v) for k, v in row.items()
                          if k != "ratio_lcm4_over_teacher20"}), flush=True)

    result = {
        "command": "PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcm_digits.py "
                   + " ".join(f"--{k.replace('_', '-')} {_arg(v)}" for k, v in vars(args).items()),
        "teacher": {"train": checkpoint_info(work / "teacher")["cost"],
                    "recipe": "EDM, UNet 16/32 ch, label_dropout 0.1, batch 64, lr 2e-3"},
        "lcd": {"train": checkpoint_info(work / "lcd")["cost"], "method": lcd.__dict__,
                "batch_size": 64, "lr": 4e-4},
        "metric": "Frechet distance, digits-CNN 64-d features, against digits' test split "
                  f"({len(ref)} images); {args.n} samples per seed, labels uniform",
        "teacher_sampler": "CFGDenoiser(teacher, w) with dpmpp_2m, 20 guided evaluations "
                           "(40 network rows per sample)",
        "rows": rows,
        "torch_threads": args.threads,
    }
    out_path = Path(args.out)
    atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
