"""Latent diffusion on digits (and the autoencoder floor on shapes), CPU only (issue 14).

    nice -n 10 .venv/bin/python benchmarks/latent_diffusion.py \
        --out benchmarks/results/latent_diffusion.md [--seeds 0,1,2] [--n 256] [--threads 1]

1. The autoencoder floor every latent method shares: the deterministic round trip
   ``dec(mean(x))`` of the test split, as per-image pixel RMSE (data range [-1, 1]) and as the
   bench's distribution scores of the reconstructions against the test split itself (Frechet
   distance in the bench's feature space, sliced Wasserstein in pixels), beside the same
   scores of the test split's own held-out draw (what a perfect generator would get). Digits:
   the zoo's ``digits-vae`` (2x4x4 latent). Shapes 16x16: a VAE (4x4x4 latent, KL weight 1e-3)
   trained here through ``fewstep.train.train`` (``--shapes-steps`` steps; no feature
   extractor exists for shapes, so its scores are in pixel space).
2. The zoo's class-conditional latent teacher ``digits-latent-edm`` (sampled unconditionally,
   the null label) beside the pixel teacher ``digits-edm``, run by the bench (``run_suite``:
   same start-noise protocol, reference ODE solution, timing) with Heun and DPM-Solver++(2M)
   at equal NFE. The latent rows' scores are of decoded samples (``Teacher.decode``); their
   wall-clock excludes the one decoder pass per sample, measured apart below.

Cells: mean [95% t-interval] over seeds (bench rows) or over images (RMSE).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep import data, metrics, zoo
from fewstep._io import atomic_write
from fewstep.bench import runner
from fewstep.bench import teachers as bench_teachers
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.distill import AutoencoderLoss
from fewstep.latent import reconstruction_error
from fewstep.metrics.stats import mean_ci
from fewstep.nets import ConvAutoencoder
from fewstep.train import TrainConfig, train

TEACHERS = ("zoo:digits-latent-edm", "zoo:digits-edm")
METHODS = ("heun", "dpmpp_2m")
NFES = (9, 17)  # Heun's budgets (2 evaluations per step, a final Euler step)


def _ci(values: list[float], fmt: str = ".3g") -> str:
    s = mean_ci(values)
    if s.n == 1:
        return f"{s.mean:{fmt}} (one seed: no interval)"
    return f"{s.mean:{fmt}} [{s.lo:{fmt}}, {s.hi:{fmt}}]"


def floor(name: str, ae: ConvAutoencoder, extractor: object | None) -> dict:
    """Reconstruction scores of the test split (see the module docstring)."""
    test = data.get(name).load("test")
    recon = ae.eval()(test).detach()
    sliced = metrics.SlicedReference(test.double(), n_projections=256,
                                     generator=torch.Generator().manual_seed(0))

    def feats(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return extractor(x.float()).double() if extractor else x.double().flatten(1)

    f_test = feats(test)
    half = len(test) // 2  # the data's own floor: one half of the test split against the other
    f_a, f_b = feats(test[:half]), feats(test[half:])
    return {"rmse": reconstruction_error(ae, test).tolist(),
            "fd_recon": metrics.frechet_distance(*metrics.feature_stats(feats(recon)),
                                                 *metrics.feature_stats(f_test)),
            "fd_half": metrics.frechet_distance(*metrics.feature_stats(f_a),
                                                *metrics.feature_stats(f_b)),
            "sw_recon": sliced.distance(recon.double()), "n_test": len(test)}


def shapes_vae(steps: int, out: Path) -> tuple[ConvAutoencoder, float]:
    torch.manual_seed(0)
    ae = ConvAutoencoder(in_channels=1, latent_channels=4, channels=32, levels=2)
    res = train(AutoencoderLoss(kl_weight=1e-3), ae, "shapes",
                TrainConfig(steps=steps, batch_size=64, lr=2e-3, ema_decay=0.998,
                            warmup_steps=100, out_dir=str(out), checkpoint_every=100,
                            progress=False))
    return res.ema, res.cost.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/latent_diffusion.md")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--shapes-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    work = out.parent / ".latent_diffusion"
    t0 = time.perf_counter()

    digits_teacher = bench_teachers.get("zoo:digits-latent-edm")
    _, extractor = runner.feature_space(digits_teacher, work / "extractors")
    floors = {"digits (zoo digits-vae, 2x4x4)": floor("digits", zoo.load("digits-vae"),
                                                      extractor)}
    ae, seconds = shapes_vae(a.shapes_steps, work / "shapes-vae")
    floors[f"shapes (VAE 4x4x4, {a.shapes_steps} steps, {seconds:.0f} s)"] = \
        floor("shapes", ae, None)

    seeds = [int(s) for s in a.seeds.split(",")]
    suite = Suite(name="latent", teachers=list(TEACHERS), methods=list(METHODS), nfe=list(NFES),
                  seeds=seeds, n_samples=a.n, reference_rtol=1e-3, timing_repeats=1)
    suite.validate()
    summary = runner.run_suite(suite, work / "bench", progress=False)
    rows = Store(work / "bench" / "results.sqlite").rows(suite="latent")

    space = digits_teacher.decode
    z = torch.randn(a.n, *digits_teacher.sample_shape)
    t1 = time.perf_counter()
    for _ in range(5):
        space(z)
    decode_s = (time.perf_counter() - t1) / 5 / a.n

    lines = ["# Latent diffusion: autoencoder floor and latent vs pixel teacher", "",
             f"Made by `nice -n 10 .venv/bin/python benchmarks/latent_diffusion.py --out {a.out} "
             f"--seeds {a.seeds} --n {a.n} --shapes-steps {a.shapes_steps} --threads "
             f"{a.threads}` ({time.perf_counter() - t0:.0f} s, CPU; bench cases failed: "
             f"{summary.failed}).", "",
             "## Autoencoder floor (test split, deterministic round trip)", "",
             "| data (autoencoder) | pixel RMSE per image | FD(recon, test) | FD(test half, "
             "other half) | SW(recon, test) |", "|---|---|---|---|---|"]
    for name, f in floors.items():
        lines.append(f"| {name} | {_ci(f['rmse'])} | {f['fd_recon']:.3g} | {f['fd_half']:.3g} "
                     f"| {f['sw_recon']:.3g} |")
    lines += ["", "FD: digits in the bench's digits-CNN feature space, shapes in pixels. "
              "FD(recon, test) pairs each test image with its own reconstruction (the same "
              "rows), so it has no finite-sample bias: it is the distance the decoder adds. "
              "FD(test half, other half) compares two independent halves of the test split "
              "(179 digits, 1000 shapes): it is the finite-sample level of an FD between "
              "independent sets of that size, which is why generators' FDs below, on 128 "
              "samples against the test split, sit far above the reconstruction FD. Neither is "
              "a bound on the other; both are floors a latent generator cannot go under "
              "(the first by construction, the second by sample size).", "",
              "## Latent teacher vs pixel teacher (bench rows)", "",
              "| teacher | solver | NFE | FD (feature space) | SW (pixels) | wall s / sample |",
              "|---|---|---|---|---|---|"]
    for t in TEACHERS:
        for m in METHODS:
            for k in NFES:
                sel = [r for r in rows if (r["teacher"], r["method"], r["nfe_target"]) == (t, m, k)]
                if not sel:
                    continue
                fd = [r["metrics"]["fd"] for r in sel]
                sw = [r["metrics"]["sw"] for r in sel]
                wall = [r["time_per_sample_s"] for r in sel]
                lines.append(f"| {t} | {m} | {k} | {_ci(fd)} | {_ci(sw)} | "
                             f"{sum(wall) / len(wall):.2e} |")
    lines += ["", f"Decoder cost on top of every latent row: {decode_s:.2e} s per sample "
              "(one pass, measured here, not in the rows' wall-clock).", "",
              "Training cost: " + "; ".join(
                  f"{n} {zoo.entry(n).cost.seconds:.0f} s ({zoo.entry(n).cost.steps} steps)"
                  for n in ("digits-vae", "digits-latent-edm", "digits-edm")) +
              f"; latent scale factor {zoo.entry('digits-latent-edm').latent['scale']:.4f}.", ""]
    atomic_write(out, lambda tmp: tmp.write_text("\n".join(lines)))
    raw = out.with_suffix(".json")
    atomic_write(raw, lambda tmp: tmp.write_text(json.dumps(
        {"floors": floors, "rows": [{k: r[k] for k in ("teacher", "method", "nfe_target", "seed",
                                                      "metrics", "time_per_sample_s")}
                                    for r in rows]}, indent=1, default=str)))
    print(f"wrote {out} and {raw}")


if __name__ == "__main__":
    main()
