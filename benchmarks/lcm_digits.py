"""Latent consistency distillation on digits: the 4-step LCM against the guided teacher's
20-NFE Frechet distance at the same w, on a class-conditional pixel teacher trained here or on
the zoo's latent teacher (``--latent digits-latent-edm``: Luo et al.'s setting).

Pixel mode (stages resumable; run directories under --work):
1. a class-conditional EDM teacher (UNet 16/32 channels, label dropout 0.1) on digits' train
   split;
2. LCD: a w-conditioned consistency student warm-started from it, w ~ U[w_min, w_max];
3. scoring on the test split (below).

Latent mode (``--latent ENTRY``, a zoo latent teacher; its autoencoder's latents):
1. digits' train split is encoded (labels kept); ``--val-n`` of its rows (a fixed permutation)
   are held out as the validation set, LCD trains on the rest;
2. one LCD run per candidate w range (``--w-ranges``), checkpoints every
   ``--checkpoint-every`` steps, all kept;
3. choice on validation: every (w range, checkpoint) is scored at 4 steps against the
   validation images, one sampling seed (``VAL_SEED``), each w beside the guided teacher on the
   same noise; the pair with the lowest mean FD ratio (LCM / teacher) over the w's wins;
4. only the chosen checkpoint is scored on the test split (below).

Scoring: Frechet distance in the digits-CNN feature space (latent samples decoded by the
autoencoder first, clamped to the data range) and the CNN's accuracy on the requested labels,
for the guided teacher (DPM-Solver++(2M), 20 guided evaluations = 40 network rows per sample)
and the LCM at 1, 2, 4 steps (bench student ``student:RUN@w=W``), at several w, over sampling
seeds (the same start noise and class labels for both), with 95% t intervals.

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcm_digits.py --work /tmp/lcm \\
        --out benchmarks/results/lcm_digits.json
    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcm_digits.py \\
        --latent digits-latent-edm --work /tmp/lcm_latent \\
        --out benchmarks/results/lcm_latent.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewstep import data, solvers, zoo
from fewstep._io import atomic_write
from fewstep.bench import students
from fewstep.denoiser import CFGDenoiser
from fewstep.distill import get_method
from fewstep.latent import encode_data, space
from fewstep.metrics import frechet_distance_from_features, mean_ci
from fewstep.metrics.extractors import digits_cnn
from fewstep.nets import ConsistencyPrecond, EDMPrecond
from fewstep.nets.spec import build_model
from fewstep.nets.unet import UNet
from fewstep.train import TrainConfig, checkpoint_info, train

SIGMA_MAX = 80.0
VAL_SEED = 100  # the validation draw's sampling seed (test seeds are 0, 1, ...)
KEYS = ("teacher20", "lcm1", "lcm2", "lcm4")


def _unet(w: bool) -> UNet:
    return UNet(1, 16, (1, 2), 1, emb_dim=64, cond_type="label", num_classes=10, w_embedding=w)


def _arg(v: object) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def _lcd(w_min: float, w_max: float) -> Any:
    return get_method("lcd")(N=30, k=3, solver="euler", w_min=w_min, w_max=w_max, mu=0.95,
                             distance="pseudo_huber")


def _w_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    return float(lo), float(hi)


def score(teacher: nn.Module, method: str, w: float, seeds: list[int], n: int,
          shape: tuple[int, ...], ref: Tensor, to_image: Callable[[Tensor], Tensor],
          extractor: Any, keys: tuple[str, ...] = KEYS) -> dict[str, dict[str, list[float]]]:
    """Per-seed FD (against features ``ref``) and label accuracy of the guided teacher at 20
    NFE and the LCM ``method`` at 1, 2, 4 steps, on the same start noise and labels."""
    lcm = students.model(method)
    guided = CFGDenoiser(teacher, w, {"cond": -1})
    fd: dict[str, list[float]] = {key: [] for key in keys}
    acc: dict[str, list[float]] = {key: [] for key in keys}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *shape, generator=g) * SIGMA_MAX
        labels = students.class_labels(seed, n, 10)
        with torch.no_grad():
            out = {}
            if "teacher20" in keys:
                out["teacher20"] = solvers.sample(
                    guided, x, "dpmpp_2m", nfe=20, schedule_kwargs={"sigma_max": SIGMA_MAX},
                    cond={"cond": labels})
            for key in keys:
                if key.startswith("lcm"):
                    out[key] = students.run_student(method, lcm, x, int(key[3:]), SIGMA_MAX,
                                                    seed)[0]
            for key, samples in out.items():
                feats = extractor(to_image(samples).clamp(-1, 1))
                fd[key].append(frechet_distance_from_features(feats, ref))
                acc[key].append(float((extractor.head(feats).argmax(1) == labels)
                                      .float().mean()))
    return {"fd": fd, "acc": acc}


def rows_of(scores: dict[float, dict[str, dict[str, list[float]]]]) -> list[dict[str, Any]]:
    """Result rows (mean, 95% t interval, per seed; 4-step ratio; 1.5x target) per w."""
    rows = []
    for w, sc in scores.items():
        fd, acc = sc["fd"], sc["acc"]
        row: dict[str, Any] = {"w": w}
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
    return rows


def pixel(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    batch = data.get("digits").load_labelled("train")
    teacher_net = EDMPrecond(_unet(False), 0.5)
    t0 = time.time()
    res = train(get_method("edm")(label_dropout=0.1), teacher_net, batch, TrainConfig(
        steps=args.teacher_steps, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.998,
        checkpoint_every=100, progress=False, out_dir=str(work / "teacher"), seed=0))
    teacher = res.ema.eval().requires_grad_(False)
    print(f"teacher: {time.time() - t0:.0f} s this call", flush=True)

    lcd = _lcd(*_w_range(args.w_ranges[0]))
    t0 = time.time()
    train(lcd, ConsistencyPrecond(_unet(True), 0.002, 0.5), batch, TrainConfig(
        steps=args.lcd_steps, batch_size=64, lr=4e-4, ema_decay=0.99, checkpoint_every=50,
        progress=False, out_dir=str(work / "lcd"), seed=0), teacher=teacher)
    print(f"lcd: {time.time() - t0:.0f} s this call", flush=True)

    extractor = digits_cnn()
    with torch.no_grad():
        ref = extractor(data.get("digits").load("test"))
    scores = {}
    for w in args.w:
        method = f"student:{work / 'lcd'}@w={w:g}"
        students.check(method)
        scores[w] = score(teacher, method, w, list(range(args.seeds)), args.n, (1, 8, 8), ref,
                          lambda x: x, extractor)
    return {
        "teacher": {"train": checkpoint_info(work / "teacher")["cost"],
                    "recipe": "EDM, UNet 16/32 ch, label_dropout 0.1, batch 64, lr 2e-3"},
        "lcd": {"train": checkpoint_info(work / "lcd")["cost"], "method": lcd.__dict__,
                "batch_size": 64, "lr": 4e-4},
        "metric": "Frechet distance, digits-CNN 64-d features, against digits' test split "
                  f"({len(ref)} images); {args.n} samples per seed, labels uniform",
        "rows": rows_of(scores)}


def latent(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    entry = zoo.entry(args.latent)
    teacher, sp = zoo.load(args.latent), space(args.latent)
    full = encode_data(sp, entry.recipe.data, "train")
    images = data.get(entry.recipe.data).load("train")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    val, fit = perm[:args.val_n], perm[args.val_n:]
    batch = {key: v[fit] for key, v in full.items()}
    spec = {**entry.recipe.backbone,
            "kwargs": {**entry.recipe.backbone["kwargs"], "w_embedding": True}}
    sigma_data = entry.recipe.sigma_data
    extractor = digits_cnn()
    with torch.no_grad():
        ref_val = extractor(images[val])
        ref_test = extractor(data.get(entry.recipe.data).load("test"))

    runs: dict[str, Any] = {}
    for text in args.w_ranges:
        lcd = _lcd(*_w_range(text))
        out = work / f"lcd_w{text.replace(':', '-')}"
        torch.manual_seed(0)
        template = ConsistencyPrecond(build_model(spec), 0.002, sigma_data)
        t0 = time.time()
        train(lcd, lcd.init_student(teacher, template), batch, TrainConfig(
            steps=args.lcd_steps, batch_size=64, lr=args.lr, ema_decay=0.99,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=max(1, args.lcd_steps // args.checkpoint_every), progress=False,
            out_dir=str(out), seed=0), teacher=teacher)
        print(f"lcd w in [{text}]: {time.time() - t0:.0f} s this call", flush=True)
        runs[text] = {"dir": out, "method": lcd.__dict__,
                      "train": checkpoint_info(out)["cost"], "checkpoints": {}}
        for ckpt in sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:])):
            ratios = {}
            for w in args.w:
                method = f"student:{ckpt}@w={w:g}"
                students.check(method)
                sc = score(teacher, method, w, [VAL_SEED], args.val_n, tuple(sp.shape),
                           ref_val, sp.decode, extractor, keys=("teacher20", "lcm4"))
                ratios[w] = sc["fd"]["lcm4"][0] / sc["fd"]["teacher20"][0]
            mean_ratio = sum(ratios.values()) / len(ratios)
            runs[text]["checkpoints"][ckpt.name] = {
                "cost": checkpoint_info(ckpt)["cost"], "val_ratio_lcm4_over_teacher20": ratios,
                "val_mean_ratio": mean_ratio}
            print(f"  {ckpt.name}: val ratios {ratios} mean {mean_ratio:.3f}", flush=True)

    text, name = min(((t, c) for t, r in runs.items() for c in r["checkpoints"]),
                     key=lambda tc: runs[tc[0]]["checkpoints"][tc[1]]["val_mean_ratio"])
    chosen = runs[text]["dir"] / "checkpoints" / name
    print(f"chosen on validation: w in [{text}], {name}", flush=True)
    scores = {}
    for w in args.w:
        method = f"student:{chosen}@w={w:g}"
        scores[w] = score(teacher, method, w, list(range(args.seeds)), args.n, tuple(sp.shape),
                          ref_test, sp.decode, extractor)
    for r in runs.values():
        r["dir"] = str(r["dir"])
    return {
        "teacher": {"zoo": args.latent, "train": entry.cost.__dict__,
                    "autoencoder": entry.latent, "description": entry.recipe.description},
        "lcd": {"runs": runs, "batch_size": 64, "lr": args.lr, "train_rows": len(fit),
                "chosen": {"w_range": text, "checkpoint": name,
                           "cost": checkpoint_info(chosen)["cost"]},
                "student_backbone": spec},
        "validation": f"{args.val_n} rows of digits' train split held out from LCD (seed-0 "
                      "permutation; the teacher and autoencoder saw them), one sampling seed "
                      f"({VAL_SEED}), 4-step LCM vs 20-NFE teacher FD ratio averaged over w",
        "metric": "Frechet distance, digits-CNN 64-d features of decoded, clamped samples, "
                  f"against digits' test split ({len(ref_test)} images); {args.n} samples per "
                  "seed, labels uniform",
        "rows": rows_of(scores)}


def _cell(v: dict[str, Any]) -> str:
    """mean [lo, hi], the interval cut at 0 (a distance is not negative)."""
    return f"{v['mean']:.0f} [{max(0.0, v['lo']):.0f}, {v['hi']:.0f}]"


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown page: the command, costs, the validation choice (latent mode)
    and one table row per w."""
    lines = ["# Latent consistency distillation on digits", "",
             f"Made by `{result['command']}` ({result.get('wall_seconds', 0):.0f} s wall, "
             f"{result['torch_threads']} thread).", "", f"Metric: {result['metric']}.",
             f"Teacher sampler: {result['teacher_sampler']}.", ""]
    lcd = result["lcd"]
    if "runs" in lcd:  # latent mode
        t = result["teacher"]
        lines += [f"Teacher: zoo `{t['zoo']}` ({t['description']}; {t['train']['seconds']:.0f} s"
                  f" to train), autoencoder `{t['autoencoder']['autoencoder']}` (latent scale "
                  f"{t['autoencoder']['scale']:.4f}). LCD trains on {lcd['train_rows']} rows "
                  f"(batch {lcd['batch_size']}, lr {lcd['lr']:g}).", "",
                  "## Choice on validation", "", result["validation"] + ".", "",
                  "| w range | checkpoint | steps | train s | val ratio per w | mean |",
                  "|---|---|---|---|---|---|"]
        for text, run in lcd["runs"].items():
            for name, c in run["checkpoints"].items():
                ratios = ", ".join(f"{float(w):g}: {r:.2f}"
                                   for w, r in c["val_ratio_lcm4_over_teacher20"].items())
                lines.append(f"| [{text.replace(':', ', ')}] | {name} | {c['cost']['steps']} | "
                             f"{c['cost']['seconds']:.0f} | {ratios} | "
                             f"{c['val_mean_ratio']:.3f} |")
        ch = lcd["chosen"]
        total = sum(r["train"]["seconds"] for r in lcd["runs"].values())
        lines += ["", f"Chosen: w in [{ch['w_range'].replace(':', ', ')}], {ch['checkpoint']} "
                  f"({ch['cost']['steps']} steps, {ch['cost']['seconds']:.0f} s, "
                  f"{ch['cost']['teacher_nfe']:.0f} teacher NFE in full-batch units). All LCD "
                  f"training: {total:.0f} s.", ""]
    lines += ["## Test split", "",
              "| w | teacher 20 NFE | LCM 1 step | LCM 2 steps | LCM 4 steps | "
              "4-step / teacher (per seed) | within 1.5x? |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ratios = ", ".join(f"{r:.2f}" for r in row["ratio_lcm4_over_teacher20"])
        lines.append(f"| {row['w']:g} | {_cell(row['teacher20'])} | {_cell(row['lcm1'])} | "
                     f"{_cell(row['lcm2'])} | {_cell(row['lcm4'])} | {ratios} | "
                     f"{'met' if row['met_1.5x'] else '**not met**'} |")
    lines += ["", "Cells: FD mean [95% t interval] over sampling seeds; label accuracy (digits "
              "CNN on the requested labels): "
              + "; ".join(f"w={row['w']:g}: teacher {row['teacher20']['label_accuracy']:.2f}, "
                          f"LCM 4-step {row['lcm4']['label_accuracy']:.2f}"
                          for row in result["rows"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/lcm_digits")
    ap.add_argument("--out", default="benchmarks/results/lcm_digits.json")
    ap.add_argument("--latent", default=None, help="a zoo latent teacher (else pixel mode)")
    ap.add_argument("--teacher-steps", type=int, default=500)  # pixel mode only
    ap.add_argument("--lcd-steps", type=int, default=200)
    ap.add_argument("--w-ranges", nargs="+", default=["1:4"],
                    help="candidate LCD w ranges LO:HI (pixel mode: the first)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--checkpoint-every", type=int, default=100)  # latent mode
    ap.add_argument("--val-n", type=int, default=359)  # latent mode
    ap.add_argument("--w", type=float, nargs="+", default=[1.5, 2.5, 4.0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=359)  # the test split's size
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", default=None, help="only write the markdown of this result "
                    "JSON (beside it, .md)")
    args = ap.parse_args()
    if args.render:
        path = Path(args.render)
        text = markdown(json.loads(path.read_text()))
        atomic_write(path.with_suffix(".md"), lambda tmp: tmp.write_text(text))
        print(f"wrote {path.with_suffix('.md')}")
        return
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = (latent if args.latent else pixel)(args, Path(args.work))
    result = {
        "command": "PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/lcm_digits.py "
                   + " ".join(f"--{k.replace('_', '-')} {_arg(v)}" for k, v in vars(args).items()
                              if v is not None),
        **result,
        "teacher_sampler": "CFGDenoiser(teacher, w) with dpmpp_2m, 20 guided evaluations "
                           "(40 network rows per sample)",
        "torch_threads": args.threads,
        "wall_seconds": time.time() - t0,
    }
    out_path = Path(args.out)
    atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    text = markdown(result)
    atomic_write(out_path.with_suffix(".md"), lambda tmp: tmp.write_text(text))
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
