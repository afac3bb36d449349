"""Early-stopped DDPM (Lyu et al. 2022) sweep: quality against denoising steps for each prior.

    nice -n 10 .venv/bin/python benchmarks/early_stop.py --out benchmarks/results/early_stop.md \
        [--teachers zoo:digits-edm,zoo:checkerboard-edm] [--seeds 0,1,2] [--nfe 2,4,8,16]
        [--n 512] [--threads 1]

For each teacher and prior, a prior sample is noised to ``sigma_s`` and the teacher runs
DPM-Solver++(2M) from ``sigma_s`` to 0 with NFE in ``--nfe`` (:func:`fewstep.early_stop.
sample_early_stopped`); ``sigma_s = 0`` is the prior alone (0 NFE) and ``sigma_s = 80`` the
ordinary sampler from the teacher's sigma_max. Priors:

- ``gaussian``: the mean and full covariance of the train split (0 network passes);
- ``vae`` (image teachers): the zoo VAE ``digits-vae``'s decoder on a Gaussian fit of the
  encoded train split (1 decoder pass per sample on top of the denoiser NFE).

Scores are the bench's (:mod:`fewstep.bench.runner`): against the teacher's held-out test split,
Frechet distance in the bench's feature space (digits: the fewstep digits CNN) and sliced
Wasserstein in data space for images; sliced Wasserstein and MMD for 2-D sets. Cells are means
with 95% t-intervals over ``--seeds`` (each seed draws its own prior samples and noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewstep import data, metrics, zoo
from fewstep._io import atomic_write
from fewstep.bench import runner
from fewstep.bench import teachers as bench_teachers
from fewstep.early_stop import DecodedPrior, GaussianPrior, sample_early_stopped
from fewstep.metrics.stats import mean_ci

SIGMAS = {"image": [0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 80.0],
          "vector": [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 80.0]}
SOLVER = "dpmpp_2m"


def priors(teacher: bench_teachers.Teacher) -> dict[str, Any]:
    """The priors of a teacher's data set (see the module docstring)."""
    name = zoo.recipe(teacher.name.removeprefix("zoo:")).data
    ds = data.get(name)
    train = ds.load("train", n=None if getattr(ds, "finite", True) else 20_000)
    out: dict[str, Any] = {"gaussian": GaussianPrior.fit(train)}
    if teacher.kind == "image" and name == "digits":
        from fewstep.latent import space

        latent = space("digits-vae")
        out["vae"] = DecodedPrior(GaussianPrior.fit(latent.encode(train)), latent.decode)
    return out


def score(teacher: bench_teachers.Teacher, held: Any, extractor: Any, x: Tensor) -> dict:
    x = x.double()
    m = {"sw": held.sliced.distance(x)}
    if teacher.kind == "image":
        with torch.no_grad():
            f = extractor(x.float()).double() if extractor is not None else x.flatten(1)
        m["fd"] = metrics.frechet_distance(*metrics.feature_stats(f), *held.stats)
    else:
        m["mmd"] = metrics.mmd(x.flatten(1), held.samples[:runner.N_MMD].double().flatten(1))
    return m


def sweep(teacher_name: str, seeds: list[int], n: int, nfes: list[int], cache: Path) -> dict:
    teacher = bench_teachers.get(teacher_name)
    D = teacher.denoiser
    extractor = None
    if teacher.kind == "image":
        _, extractor = runner.feature_space(teacher, cache)
    held = {seed: runner.held_out(teacher, seed, extractor) for seed in seeds}
    rows: dict[str, Any] = {}
    for prior_name, prior in priors(teacher).items():
        for sigma_s in SIGMAS[teacher.kind]:
            for nfe in ([0] if sigma_s == 0 else nfes):
                cells = []
                t0 = time.perf_counter()
                for seed in seeds:
                    x0 = prior.sample(n, torch.Generator().manual_seed(1000 + seed)).float()
                    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(
                        2000 + seed))
                    with torch.no_grad():
                        out = sample_early_stopped(D, x0, eps, sigma_s, SOLVER, max(nfe, 1),
                                                   sigma_min=teacher.sigma_min)
                    cells.append(score(teacher, held[seed], extractor, out))
                key = f"{prior_name}|{sigma_s:g}|{nfe}"
                rows[key] = {"prior": prior_name, "sigma_s": sigma_s, "nfe": nfe,
                             "prior_evaluations": prior.evaluations,
                             "seconds": time.perf_counter() - t0,
                             "values": {k: [c[k] for c in cells] for k in cells[0]}}
                print(teacher_name, key, {k: round(sum(v) / len(v), 4)
                                          for k, v in rows[key]["values"].items()}, flush=True)
    return {"teacher": teacher_name, "description": teacher.description, "rows": rows}


def _cell(values: list[float]) -> str:
    s = mean_ci(values)
    return f"{s.mean:.3g} [{s.lo:.3g}, {s.hi:.3g}]" if s.n > 1 else f"{s.mean:.3g}"


def table(result: dict, metric: str, nfes: list[int]) -> list[str]:
    lines = [f"| prior | sigma_s | prior passes | {' | '.join(f'NFE {k}' for k in nfes)} |",
             "|---|---|---|" + "---|" * len(nfes)]
    rows = result["rows"]
    for r in rows.values():
        if r["nfe"] not in (0, nfes[0]):
            continue
        sigma = "prior alone" if r["sigma_s"] == 0 else f"{r['sigma_s']:g}"
        if r["nfe"] == 0:
            cells = [_cell(r["values"][metric])] + ["" for _ in nfes[1:]]
        else:
            cells = [_cell(rows[f"{r['prior']}|{r['sigma_s']:g}|{k}"]["values"][metric])
                     for k in nfes]
        lines.append(f"| {r['prior']} | {sigma} | {r['prior_evaluations']} | "
                     f"{' | '.join(cells)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/early_stop.md")
    p.add_argument("--teachers", default="zoo:digits-edm,zoo:checkerboard-edm")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nfe", default="2,4,8,16")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    nfes = [int(k) for k in a.nfe.split(",")]
    out = Path(a.out)
    t0 = time.perf_counter()
    results = [sweep(t, seeds, a.n, nfes, out.parent / ".early_stop_cache")
               for t in a.teachers.split(",")]
    lines = ["# Early-stopped DDPM: quality vs denoising steps, per prior", "",
             "Made by `nice -n 10 .venv/bin/python benchmarks/early_stop.py "
             f"--out {a.out} --teachers {a.teachers} --seeds {a.seeds} --nfe {a.nfe} --n {a.n} "
             f"--threads {a.threads}` ({time.perf_counter() - t0:.0f} s, CPU).", "",
             f"Solver from sigma_s: {SOLVER}; NFE counts denoiser evaluations only (the VAE "
             "prior adds one decoder pass per sample, column 'prior passes'). sigma_s = 80 is "
             "the ordinary sampler from the teacher's sigma_max. Cells: mean [95% t-interval] "
             f"over seeds {a.seeds}, {a.n} samples each, against the held-out test split.", ""]
    for r in results:
        metric_list = ["fd", "sw"] if "fd" in next(iter(r["rows"].values()))["values"] \
            else ["sw", "mmd"]
        for metric in metric_list:
            lines += [f"## {r['teacher']}: {metric}", "", r["description"], "",
                      *table(r, metric, nfes), ""]
    atomic_write(out, lambda tmp: tmp.write_text("\n".join(lines)))
    raw = out.with_suffix(".json")
    atomic_write(raw, lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    print(f"wrote {out} and {raw}")


if __name__ == "__main__":
    main()
