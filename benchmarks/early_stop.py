"""Early-stopped DDPM (Lyu et al. 2022) sweep: quality against denoising steps for each prior.

    nice -n 10 .venv/bin/python benchmarks/early_stop.py --out benchmarks/results/early_stop.md \
        [--teachers zoo:digits-edm,zoo:checkerboard-edm] [--seeds 0,1,2] [--nfe 2,4,8,16]
        [--n 512] [--threads 1] [--ufogen-steps 300] [--runs runs/early_stop]

Re-running resumes: the (teacher, prior) blocks already in ``--out``'s JSON are kept, the
missing ones are run (a new prior adds its block without re-running the others).

For each teacher and prior, a prior sample is noised to ``sigma_s`` and the teacher runs
DPM-Solver++(2M) from ``sigma_s`` to 0 with NFE in ``--nfe`` (:func:`fewstep.early_stop.
sample_early_stopped`); ``sigma_s = 0`` is the prior alone (0 NFE) and ``sigma_s = 80`` the
ordinary sampler from the teacher's sigma_max. Priors:

- ``gaussian``: the mean and full covariance of the train split (0 network passes);
- ``vae`` (image teachers): the zoo VAE ``digits-vae``'s decoder on a Gaussian fit of the
  encoded train split (1 decoder pass per sample on top of the denoiser NFE);
- ``ufogen`` (checkerboard): the paper's GAN prior, a one-step UFOGen student ``x0 =
  G(sigma_max z, sigma_max)`` trained here from the teacher (``--ufogen-steps`` steps, batch
  256, ``benchmarks/gan_distill.py``'s settings; kept in ``--runs``, resumed); 1 pass;
- ``kd`` (checkerboard): the zoo's one-step KD student ``checkerboard-kd`` as the prior; 1 pass.

Every prior is the bench's (:func:`fewstep.bench.early_stopped.prior`), so these rows and the
bench's ``early_stop:SOLVER:PRIOR@sigma_s=S`` rows sample the same priors.

Scores are the bench's (:mod:`fewstep.bench.runner`): against the teacher's held-out test split,
Frechet distance in the bench's feature space (digits: the fewstep digits CNN) and sliced
Wasserstein in data space for images; sliced Wasserstein and MMD for 2-D sets. Cells are means
with 95% t-intervals over ``--seeds`` (each seed draws its own prior samples and noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewstep import data, metrics, zoo
from fewstep._io import atomic_write
from fewstep.bench import early_stopped, runner
from fewstep.bench import teachers as bench_teachers
from fewstep.early_stop import sample_early_stopped
from fewstep.metrics.stats import mean_ci

SIGMAS = {"image": [0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 80.0],
          "vector": [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 80.0]}
SOLVER = "dpmpp_2m"


# UFOGen prior: benchmarks/gan_distill.py's checkerboard settings (its best on validation)
UFOGEN = {"num_scales": 1, "rec_weight": 0.1}
UFOGEN_TRAIN = {"batch_size": 256, "lr": 5e-4, "betas": (0.5, 0.999), "ema_decay": 0.995}


def train_ufogen(teacher_name: str, steps: int, runs: Path) -> tuple[Path, float]:
    """A one-step UFOGen student of the zoo teacher ``teacher_name`` (initialised from it),
    trained ``steps`` steps on its data set's train split (resumes); (run dir, seconds)."""
    from fewstep.distill import get_method
    from fewstep.nets import build_model, model_spec
    from fewstep.train import TrainConfig, train

    name = teacher_name.removeprefix("zoo:")
    out = runs / f"{name}-ufogen"
    teacher = zoo.load(name)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=steps, progress=False, out_dir=str(out), seed=0,
                      data_n=zoo.recipe(name).data_n, **UFOGEN_TRAIN)
    res = train(get_method("ufogen")(**UFOGEN), build_model(model_spec(teacher)),
                zoo.recipe(name).data, cfg, teacher=teacher)
    return out, float(res.cost.seconds)


ENTRIES = {"gaussian": "gaussian", "vae": "zoo:digits-vae", "kd": "student:zoo:checkerboard-kd"}


def priors(teacher: bench_teachers.Teacher, ufogen_steps: int, runs: Path) -> dict[str, Any]:
    """The priors of a teacher's data set (see the module docstring): name -> a function
    returning its bench prior entry (the UFOGen prior's trains it first)."""
    name = zoo.recipe(teacher.name.removeprefix("zoo:")).data
    out: dict[str, Any] = {"gaussian": lambda: ENTRIES["gaussian"]}
    if teacher.kind == "image" and name == "digits":
        out["vae"] = lambda: ENTRIES["vae"]
    if name == "checkerboard":
        out["ufogen"] = lambda: f"student:{train_ufogen(teacher.name, ufogen_steps, runs)[0]}"
        out["kd"] = lambda: ENTRIES["kd"]
    return out


def one_off_seconds(entry: str) -> float | None:
    """The prior's one-off (training) seconds, as the bench's row records it."""
    return early_stopped.training_cost(f"early_stop:ddim:{entry}@sigma_s=1")[0]


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


def on_split(teacher: bench_teachers.Teacher, split: str) -> bench_teachers.Teacher:
    """``teacher`` scored against ``split`` of its data set instead of the test split (the
    ``train`` split picks sigma_s for the bench without looking at the test split: digits has
    no validation split)."""
    if split == "test":
        return teacher
    ds = data.get(zoo.recipe(teacher.name.removeprefix("zoo:")).data)

    def reference(n: int, seed: int) -> Tensor:
        x = ds.load(split, seed=0) if getattr(ds, "finite", True) else \
            ds.load(split, n=n, seed=seed)
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]

    return dataclasses.replace(teacher, reference_samples=reference,
                               description=f"{teacher.description} (here: against the {split} "
                               "split)")


def sweep(teacher_name: str, seeds: list[int], n: int, nfes: list[int], cache: Path,
          done: dict[str, Any], ufogen_steps: int, runs: Path,
          save: Callable[[dict], None], *, split: str = "test",
          only: list[str] | None = None, sigmas: list[float] | None = None) -> dict:
    """The teacher's table rows; the priors already in ``done`` (a previous result) are kept;
    ``save`` gets the result after each prior's block. ``only``: these priors; ``sigmas``:
    these sigma_s (default :data:`SIGMAS`)."""
    teacher = on_split(bench_teachers.get(teacher_name), split)
    D = teacher.denoiser
    extractor = None
    if teacher.kind == "image":
        _, extractor = runner.feature_space(teacher, cache)
    held = {seed: runner.held_out(teacher, seed, extractor) for seed in seeds}
    rows: dict[str, Any] = dict(done.get("rows", {}))
    for prior_name, entry_of in priors(teacher, ufogen_steps, runs).items():
        if any(r["prior"] == prior_name for r in rows.values()) or \
                (only is not None and prior_name not in only):
            continue  # resumed, or not asked for
        entry = entry_of()
        prior = early_stopped.prior(entry, teacher_name)
        one_off = one_off_seconds(entry)
        for sigma_s in sigmas or SIGMAS[teacher.kind]:
            for nfe in ([0] if sigma_s == 0 else nfes):
                cells = []
                t0 = time.perf_counter()
                for seed in seeds:
                    x0 = prior.sample(n, torch.Generator().manual_seed(1000 + seed)).float()
                    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(
                        2000 + seed))
                    with torch.no_grad():
                        out = sample_early_stopped(D, x0, eps, sigma_s, SOLVER, max(nfe, 1),
                                                   sigma_min=teacher.sigma_min,
                                                   sigma_max=teacher.sigma_max)
                    cells.append(score(teacher, held[seed], extractor, out))
                key = f"{prior_name}|{sigma_s:g}|{nfe}"
                rows[key] = {"prior": prior_name, "sigma_s": sigma_s, "nfe": nfe,
                             "prior_evaluations": prior.evaluations, "prior_entry": entry,
                             "prior_one_off_s": one_off,
                             "seconds": time.perf_counter() - t0,
                             "values": {k: [c[k] for c in cells] for k in cells[0]}}
                print(teacher_name, key, {k: round(sum(v) / len(v), 4)
                                          for k, v in rows[key]["values"].items()}, flush=True)
        save({"teacher": teacher_name, "description": teacher.description, "rows": rows})
    return {"teacher": teacher_name, "description": teacher.description, "rows": rows}


def _cell(values: list[float]) -> str:
    s = mean_ci(values)
    return f"{s.mean:.3g} [{s.lo:.3g}, {s.hi:.3g}]" if s.n > 1 else f"{s.mean:.3g}"


def table(result: dict, metric: str, nfes: list[int]) -> list[str]:
    lines = [f"| prior | sigma_s | prior passes | prior one-off s | "
             f"{' | '.join(f'NFE {k}' for k in nfes)} |", "|---|---|---|---|" + "---|" * len(nfes)]
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
                     f"{r['prior_one_off_s']:.0f} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/early_stop.md")
    p.add_argument("--teachers", default="zoo:digits-edm,zoo:checkerboard-edm")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nfe", default="2,4,8,16")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ufogen-steps", type=int, default=300)
    p.add_argument("--runs", default="runs/early_stop", help="where the UFOGen prior trains")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="score against this split (to choose sigma_s for the bench: val, or "
                   "train for a data set without a val split)")
    p.add_argument("--priors", default=None, help="only these priors (comma-separated)")
    p.add_argument("--sigmas", default=None, help="only these sigma_s (comma-separated)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    nfes = [int(k) for k in a.nfe.split(",")]
    out = Path(a.out)
    raw = out.with_suffix(".json")
    done = {r["teacher"]: r for r in json.loads(raw.read_text())} if raw.exists() else {}
    for r in done.values():  # rows of an earlier version lack the prior's one-off cost
        for row in r["rows"].values():
            if "prior_one_off_s" not in row:
                row["prior_entry"] = ENTRIES[row["prior"]]
                row["prior_one_off_s"] = one_off_seconds(row["prior_entry"])

    def save(result: dict) -> None:  # every finished block, so an interrupted sweep resumes
        done[result["teacher"]] = result
        atomic_write(raw, lambda tmp: tmp.write_text(json.dumps(list(done.values()), indent=1)))

    for t in a.teachers.split(","):  # teachers not named keep their earlier result
        sweep(t, seeds, a.n, nfes, out.parent / ".early_stop_cache", done.get(t, {}),
              a.ufogen_steps, Path(a.runs), save, split=a.split,
              only=a.priors.split(",") if a.priors else None,
              sigmas=[float(x) for x in a.sigmas.split(",")] if a.sigmas else None)
    results = list(done.values())
    lines = ["# Early-stopped DDPM: quality vs denoising steps, per prior", "",
             "Made by `nice -n 10 .venv/bin/python benchmarks/early_stop.py "
             f"--out {a.out} --teachers {a.teachers} --seeds {a.seeds} --nfe {a.nfe} --n {a.n} "
             f"--threads {a.threads} --ufogen-steps {a.ufogen_steps} --split {a.split}"
             + (f" --priors {a.priors}" if a.priors else "")
             + (f" --sigmas {a.sigmas}" if a.sigmas else "") + "` (CPU; it resumes, so "
             "each prior's block may come from another invocation: the seconds each block's "
             "sampling and scoring took are listed under each teacher).", "",
             f"Solver from sigma_s: {SOLVER}; NFE counts denoiser evaluations only (a VAE "
             "decoder or a one-step student prior adds one network pass per sample, column "
             "'prior passes'; 'prior one-off s' is its training time: the zoo record, or this "
             "script's UFOGen run). sigma_s = 80 is the ordinary sampler from the teacher's "
             "sigma_max. Cells: mean [95% t-interval] over seeds "
             f"{a.seeds}, {a.n} samples each, against the {a.split} split. The same "
             "priors run as bench rows `early_stop:SOLVER:PRIOR@sigma_s=S` (docs/bench.md).", ""]
    for r in results:
        block: dict[str, float] = {}
        for row in r["rows"].values():
            block[row["prior"]] = block.get(row["prior"], 0.0) + row["seconds"]
        r["block_seconds"] = block
        metric_list = ["fd", "sw"] if "fd" in next(iter(r["rows"].values()))["values"] \
            else ["sw", "mmd"]
        for metric in metric_list:
            lines += [f"## {r['teacher']}: {metric}", "", r["description"], "",
                      "Seconds per prior block: " + ", ".join(
                          f"{k} {v:.0f}" for k, v in r["block_seconds"].items()) + ".", "",
                      *table(r, metric, nfes), ""]
    atomic_write(out, lambda tmp: tmp.write_text("\n".join(lines)))
    print(f"wrote {out} and {raw}")


if __name__ == "__main__":
    main()
