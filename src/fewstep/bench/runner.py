"""Run a suite: every case in-process, warm, synchronised, measured, stored as one row.

Each (teacher, seed) has one start noise ``x = sigma_max * z`` shared by every method, and
one reference PF-ODE endpoint (tight RK45 in float64), cached on disk.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import metrics, solvers
from .._io import atomic_write
from ..solvers import reference_solution
from . import baselines, early_stopped, peers, students
from .meters import EnergyMeter, MemoryMeter, TimedDenoiser, environment, synchronize
from .store import Store, distinct_errors
from .suite import Case, Suite
from .teachers import Teacher
from .teachers import get as get_teacher

__all__ = ["RunSummary", "case_label", "parse_shard", "run_case", "run_suite", "start_noise"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
N_REFERENCE = 1000  # held-out / exact samples for sliced Wasserstein, Frechet and KID
N_MMD = 500  # of those, the ones MMD compares against (its cost is quadratic)
HELD_OUT_CACHE = 16  # (teacher, seed) held-out sides kept prepared per run


@dataclass(frozen=True)
class RunSummary:
    """What a :func:`run_suite` call did; ``elsewhere`` counts cases another process had
    claimed, ``failures`` holds (case label, error message) of the failed cases."""

    total: int
    already_done: int
    ran: int
    failed: int
    skipped: list[str]
    seconds: float
    elsewhere: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def failure_lines(self) -> list[str]:
        """Each distinct error once, most frequent first, with its count and one case, e.g.
        ``34 x ValueError: cannot read image bad.png (e.g. digits/ddim/nfe=4/seed=0)``."""
        return [f"{n} x {error} (e.g. {label})"
                for error, n, label in distinct_errors(self.failures)]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n), checked."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4); got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard index must satisfy 0 <= i < n; got {text!r}")
    return i, n


def start_noise(teacher: Teacher, seed: int, n: int) -> Tensor:
    """The shared start sample ``sigma_max * z`` (float64) of a (teacher, seed)."""
    g = torch.Generator().manual_seed(1_000_003 * seed + 17)
    return teacher.sigma_max * torch.randn(n, *teacher.sample_shape, generator=g,
                                           dtype=torch.float64)


def _file_safe(name: str) -> str:
    """A file-name-safe, collision-free version of a teacher name (which may be a path)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[-40:]}-{digest}"


def reference(teacher: Teacher, seed: int, n: int, rtol: float, cache: Path) -> Tensor:
    """The reference PF-ODE endpoint for a (teacher, seed), cached atomically on disk."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{_file_safe(teacher.name)}-s{seed}-n{n}-r{rtol:g}.pt"
    if path.exists():
        return torch.load(path)
    D = copy.deepcopy(teacher.denoiser)
    D = D.double() if isinstance(D, torch.nn.Module) else D
    ref = reference_solution(D, start_noise(teacher, seed, n), teacher.sigma_max, rtol=rtol,
                             atol=rtol)
    atomic_write(path, lambda tmp: torch.save(ref, tmp))
    return ref


@dataclass(frozen=True)
class _Prepared:
    """A case's method with its set-up done (fewstep's plan and noise generators, or a peer's
    scheduler): ``run(model(D), x) -> (samples, solver steps)``. ``model`` is the network as
    the method calls it (a peer's eps adapter included); the timer wraps it, so an adapter
    counts as network time and the per-step overhead is the solver's own on both sides."""

    run: Callable[[Any, Tensor], tuple[Tensor, int]]
    model: Callable[[Any], Any] = lambda D: D


def _prepare(case: Case, teacher: Teacher, x: Tensor, ref: Tensor | None = None) -> _Prepared:
    """The set-up of a case's method for start noise ``x``, timed apart from sampling;
    ``baseline:NAME`` methods use the (already computed) reference solution ``ref``."""
    if case.impl == "baseline":
        if ref is None:
            raise ValueError(f"{case.method} needs the reference solution (ref=)")
        return _Prepared(lambda D, x: (baselines.run_baseline(case.method, x, ref,
                                                              teacher.sigma_max), 0))
    if case.impl == "student":
        return _Prepared(lambda D, x: students.run_student(
            case.method, D, x, case.nfe, teacher.sigma_max, case.seed, case.schedule))
    if case.impl == "early_stop":
        early_stopped.prior(early_stopped.parse(case.method)[1], teacher.name)  # built once
        return _Prepared(lambda D, x: early_stopped.run(case.method, D, x, case.nfe, teacher,
                                                        case.seed, case.schedule))
    if case.impl == "diffusers":
        peer = peers.PreparedPeer(case.method, case.nfe, teacher.sigma_min, teacher.sigma_max)
        return _Prepared(lambda eps, x: (peer.sample(eps, x), peer.steps), peer.model)
    spec = solvers.get(case.method)
    if spec.tuned is not None:
        spec.tuned.check_teacher(teacher.denoiser, teacher.name)
    plan = solvers.plan(case.method, case.nfe, case.schedule, sigma_min=teacher.sigma_min,
                        sigma_max=teacher.sigma_max, denoise_to_zero=case.denoise_to_zero)
    knobs = dict(plan.knobs)
    if spec.stochastic:
        knobs["generator"] = solvers.sample_generators(case.seed, x.shape[0], x.device)
    return _Prepared(lambda D, x: (spec(D, x, plan.sigmas, **knobs), plan.steps))


def _run_method(case: Case, D: Any, x: Tensor, teacher: Teacher,
                ref: Tensor | None = None) -> tuple[Tensor, int]:
    """Sample with the case's method, set-up included; returns the samples and the number of
    solver steps. For ``student:PATH`` methods ``D`` is the student, not the teacher."""
    prepared = _prepare(case, teacher, x, ref)
    return prepared.run(prepared.model(D), x)


@dataclass(frozen=True)
class _Timing:
    """One case's timing: medians over the case's ``timing_repeats`` warm runs, in seconds."""

    setup: float  # plan / scheduler construction, outside the per-step figure
    wall: float  # sampling, set-up excluded
    network: float  # inside the network as the method calls it (adapters included)
    overhead_per_step: float  # (wall - network) / steps of each run, then the median
    rows: int  # network rows evaluated by one run
    calls: int  # network calls of one run (sequential rounds)


def _timed_runs(case: Case, teacher: Teacher, D: Any, x: Tensor, device: str,
                ref: Tensor | None = None) -> tuple[Tensor, _Timing]:
    """Run the case ``case.timing_repeats`` times, each run set-up then sampling, timed apart
    and synchronised; returns the first run's samples and the timing. Every run starts from
    the same ``x`` with freshly seeded noise, so the runs are identical."""
    runs: list[tuple[float, float, float]] = []
    first: Tensor | None = None
    for _ in range(case.timing_repeats):
        synchronize(device)
        t0 = time.perf_counter()
        prepared = _prepare(case, teacher, x, ref)
        timed = TimedDenoiser(prepared.model(D), device)
        synchronize(device)
        t1 = time.perf_counter()
        out, steps = prepared.run(timed, x)
        synchronize(device)
        runs.append((t1 - t0, time.perf_counter() - t1, timed.seconds))
        first = out if first is None else first  # later runs' samples are dropped at once
    setup, wall, network = (statistics.median(r[k] for r in runs) for k in range(3))
    overhead = statistics.median(max(w - n, 0.0) / max(steps, 1) for _, w, n in runs)
    assert first is not None  # timing_repeats >= 1 (checked by the suite)
    return first, _Timing(setup, wall, network, overhead, timed.rows, timed.calls)


def feature_space(teacher: Teacher, cache: Path) -> tuple[str, Any]:
    """The feature space image metrics are computed in, described with what its extractor was
    trained on: a fewstep-trained extractor where one exists for the teacher's data, else raw
    pixels."""
    if teacher.extra.get("extractor") == "digits_cnn":
        from ..metrics.extractors import digits_cnn

        net = digits_cnn(cache)
        return f"{net.name} (64-d penultimate layer of a CNN trained by fewstep; trained on " \
               f"{net.trained_on}; weights hash-checked)", net
    return "pixels (flattened; no learned features, trained on nothing)", None


def _features(extractor: Any, images: Tensor) -> Tensor:
    if extractor is None:
        return images.double().flatten(1)
    with torch.no_grad():
        return extractor(images.float()).double()


@dataclass(frozen=True)
class _HeldOut:
    """A (teacher, seed)'s held-out sample and what every case scores against it, prepared
    once: the sorted sliced-Wasserstein projections and, for images, the reference features
    and their Frechet statistics."""

    samples: Tensor  # (N_REFERENCE, ...) as the teacher gives them
    sliced: metrics.SlicedReference  # 256 directions seeded by the case seed
    features: Tensor | None = None  # (N_REFERENCE, F) float64 in the feature space
    stats: tuple[Any, Any] | None = None  # their mean and covariance


def held_out(teacher: Teacher, seed: int, extractor: Any = None) -> _HeldOut | None:
    """The prepared held-out side of ``teacher`` for seed ``seed`` (None without reference
    samples); image teachers' features are taken with ``extractor`` (None: pixels)."""
    if teacher.reference_samples is None:
        return None
    y = teacher.reference_samples(N_REFERENCE, seed)
    sliced = metrics.SlicedReference(y.double(), n_projections=256,
                                     generator=torch.Generator().manual_seed(seed))
    if teacher.kind != "image":
        return _HeldOut(y, sliced)
    f = _features(extractor, y)
    return _HeldOut(y, sliced, f, metrics.feature_stats(f))


def _score(case: Case, teacher: Teacher, out: Tensor, ref: Tensor, held: _HeldOut | None,
           extractor: Any = None) -> dict[str, float | None]:
    out64 = out.double()
    m: dict[str, float | None] = {"ode_rmse": float((out64 - ref).pow(2).mean().sqrt())}
    if held is not None:  # scored in data space: a latent teacher's samples decoded
        m.update(_distribution_metrics(case, teacher, teacher.to_data(out64), held, extractor))
    if teacher.log_prob is not None:
        m["nll"] = metrics.nll(out64.float(), teacher.log_prob)
    if teacher.modes is not None:
        cov = metrics.mode_coverage(out64, teacher.modes[0].double(), teacher.modes[1].double())
        m["mode_coverage"] = cov["mode_fraction"]
        m["high_quality"] = cov["high_quality_fraction"]
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in m.items()}


def _distribution_metrics(case: Case, teacher: Teacher, out64: Tensor, held: _HeldOut,
                          extractor: Any) -> dict[str, float | None]:
    """Sliced Wasserstein and MMD against held-out samples; Frechet and KID for images."""
    m: dict[str, float | None] = {
        "sw": held.sliced.distance(out64),
        "mmd": metrics.mmd(out64.flatten(1), held.samples[:N_MMD].double().flatten(1)),
    }
    if held.features is not None and held.stats is not None:
        f_out, f_ref = _features(extractor, out64), held.features
        m["fd"] = metrics.frechet_distance(*metrics.feature_stats(f_out), *held.stats)
        k = min(100, len(f_out), len(f_ref))
        m["kid"] = metrics.kid(f_out, f_ref, subsets=10, subset_size=k,
                               generator=torch.Generator().manual_seed(case.seed))[0]
    return m


class _Context:
    """Per-process state: warmed (teacher, method) pairs, references, environment."""

    def __init__(self, out_dir: Path, device: str):
        self.out_dir, self.device = out_dir, device
        self.warm: set[tuple[str, str]] = set()
        self.envs: dict[str, dict[str, Any]] = {}
        self._inception: dict[str, Any] = {}
        self._features: dict[str, tuple[str, Any]] = {}
        self._held: dict[tuple[str, int], _HeldOut | None] = {}

    def held_out(self, teacher: Teacher, seed: int, extractor: Any) -> _HeldOut | None:
        """:func:`held_out`, prepared once per (teacher, seed) and kept for the
        :data:`HELD_OUT_CACHE` most recently prepared pairs."""
        key = (teacher.name, seed)
        if key not in self._held:
            if len(self._held) >= HELD_OUT_CACHE:
                self._held.pop(next(iter(self._held)))
            self._held[key] = held_out(teacher, seed, extractor)
        return self._held[key]

    def feature_space(self, teacher: Teacher) -> tuple[str, Any]:
        """:func:`feature_space` of ``teacher``, loaded (and hash-checked) once per run."""
        if teacher.name not in self._features:
            self._features[teacher.name] = feature_space(teacher, self.out_dir / "extractors")
        return self._features[teacher.name]

    def inception(self, weights: str | None) -> Any:
        """The Inception extractor for ``weights`` (loaded once), or None without weights."""
        if weights is None:
            return None
        if weights not in self._inception:
            from ..metrics.inception import InceptionExtractor

            self._inception[weights] = InceptionExtractor(weights, device=self.device)
        return self._inception[weights]


def _inception_note(case: Case) -> str:
    from ..metrics.inception import CONVENTIONS, TRAINED_ON

    if case.inception_weights is None:
        return ("Inception FID/KID not computed: no weights file given (suite key "
                "inception_weights or --inception-weights); fd/kid are in the stated feature "
                "space instead")
    return f"fid_inception / kid_inception: {CONVENTIONS}; trained on {TRAINED_ON}"


def _inception_metrics(case: Case, inception: Any, out: Tensor,
                       held_out: Tensor) -> dict[str, float | None]:
    """FID and KID in Inception-v3 pool3 space (field-standard units)."""
    f_out, f_ref = inception(out), inception(held_out)
    k = min(100, len(f_out), len(f_ref))
    return {"fid_inception": metrics.frechet_distance_from_features(f_out, f_ref),
            "kid_inception": metrics.kid(f_out, f_ref, subsets=10, subset_size=k,
                                         generator=torch.Generator().manual_seed(case.seed))[0]}


def run_case(case: Case, ctx: _Context) -> dict[str, Any]:
    """Run one case and return its result row (status "ok" or "error")."""
    with torch.no_grad():  # sampling and scoring never need gradients
        return _run_case(case, ctx)


def _run_case(case: Case, ctx: _Context) -> dict[str, Any]:
    teacher = get_teacher(case.teacher)
    dtype = DTYPES[case.dtype]
    if case.dtype not in ctx.envs:  # once per run and dtype (it asks git for the revision)
        ctx.envs[case.dtype] = environment(ctx.device, dtype)
    row = _base_row(case, ctx.envs[case.dtype])
    try:
        ref = reference(teacher, case.seed, case.n_samples, case.reference_rtol,
                        ctx.out_dir / "references")
        x = start_noise(teacher, case.seed, case.n_samples).to(ctx.device, dtype)
        D = students.model(case.method) if case.impl == "student" else teacher.denoiser
        D = D.to(ctx.device, dtype) if isinstance(D, torch.nn.Module) else D
        if (case.teacher, case.method) not in ctx.warm:  # warm-up: same code path, 8 samples
            _run_method(case, D, x[:8], teacher, ref)
            ctx.warm.add((case.teacher, case.method))
        mem, energy = MemoryMeter(ctx.device), EnergyMeter(ctx.device)
        with mem.measure(), energy.measure() as joules:
            out, timing = _timed_runs(case, teacher, D, x, ctx.device, ref)
        extractor = inception = None
        if teacher.kind == "image" and teacher.reference_samples is not None:
            space, extractor = ctx.feature_space(teacher)
            row["config"]["feature_space"] = space
            inception = ctx.inception(case.inception_weights)
            row["config"]["notes"] = [*row["config"].get("notes", []), _inception_note(case)]
        held = ctx.held_out(teacher, case.seed, extractor)
        row.update(
            status="ok", nfe=timing.rows / case.n_samples, rounds=timing.calls,
            wall_s=timing.wall,
            time_per_sample_s=timing.wall / case.n_samples, network_s=timing.network,
            overhead_per_step_s=timing.overhead_per_step, setup_time_s=timing.setup,
            peak_mem_mb=mem.peak_mb, mem_method=mem.method,
            energy_j=None if joules["joules"] is None else joules["joules"] / case.timing_repeats,
            energy_method=f"{energy.method}, per run (set-up included), mean of "
            f"{case.timing_repeats}"
            if joules["joules"] is not None else "not measured",
            metrics=_score(case, teacher, out.cpu(), ref, held, extractor))
        row["train_seconds"], row["train_teacher_nfe"] = (
            early_stopped.training_cost if case.impl == "early_stop"
            else students.training_cost)(case.method)
        if held is not None and inception is not None:
            row["metrics"].update(_inception_metrics(case, inception, teacher.to_data(out.cpu()),
                                                     held.samples))
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}", metrics={})
    return row


def _base_row(case: Case, env: dict[str, Any]) -> dict[str, Any]:
    """The fields of a case's row that do not depend on running it."""
    return {"key": case.key, "suite": case.suite, "teacher": case.teacher,
            "method": case.method, "impl": case.impl, "nfe_target": case.nfe,
            "seed": case.seed, "n_samples": case.n_samples, "env": env,
            "config": {**case.config, **_notes(case)}}


def error_row(case: Case, error: str) -> dict[str, Any]:
    """The row of a case that did not run to a result (e.g. its Ray worker died); stored like
    any failed case, so a rerun tries it again."""
    return {**_base_row(case, {}), "status": "error", "error": error, "metrics": {}}


def _notes(case: Case) -> dict[str, Any]:
    if case.impl == "tuned":  # its one-off cost, outside wall_s and setup_time_s
        try:
            tuned = solvers.get(case.method).tuned
        except ValueError:  # an unreadable artefact fails as the case itself, not here
            return {}
        return {"one_off_s": tuned.tuning_seconds, "one_off_teacher_rows": tuned.teacher_rows,
                "notes": [f"{case.method}: one-off tuning cost {tuned.tuning_seconds:.1f} s "
                          f"({tuned.teacher_rows} teacher evaluations, {tuned.method} on "
                          f"{tuned.base}, calibration {tuned.n_cal} start noises)"]}
    if case.impl == "early_stop":  # its prior's passes per sample and one-off cost
        try:
            return {"notes": early_stopped.notes(case.method)}
        except ValueError:  # a bad entry fails as the case itself, not here
            return {}
    note = peers.NOTES.get(case.method.removeprefix("diffusers:")) if case.impl == "diffusers" \
        else None
    return {"notes": [f"{case.method}: {note}"]} if note else {}


def run_suite(suite: Suite, out_dir: str | Path, *, shard: tuple[int, int] = (0, 1),
              device: str = "cpu", progress: bool = True, ray: str | None = None) -> RunSummary:
    """Run every unfinished case of ``suite`` in this shard, storing rows in
    ``out_dir/results.sqlite``; finished cases are skipped, so an interrupted run resumes.
    Each case is claimed in the store before it runs, so several processes on one ``out_dir``
    share the work instead of repeating it; an interruption releases this run's claims.
    ``ray``: a Ray address ("local" for this machine) to run the claimed cases as Ray tasks
    (:mod:`fewstep.bench.distributed`); this process alone writes their rows, as they finish.
    Raises ImportError when ``ray`` is given and Ray is not installed, ConnectionError when
    nothing answers at its address."""
    if ray is not None:
        from .distributed import connect

        connect(ray)  # before the store is opened: without Ray or its cluster, nothing is touched
    out_dir = Path(out_dir)
    store = Store(out_dir / "results.sqlite")
    cases = [c for c in suite.cases() if int(c.key, 16) % shard[1] == shard[0]]
    store.put_skipped(suite.name, suite.skipped)
    done = store.done()
    todo = [c for c in cases if c.key not in done]
    ctx, elsewhere, t0 = _Context(out_dir, device), 0, time.perf_counter()
    failures: list[Any] = []
    bar = _Progress(len(todo), f"bench {suite.name}", enabled=progress)

    def record(case: Case, row: dict[str, Any]) -> None:
        if row["status"] != "ok":
            failures.append((case_label(case), row["error"]))
        store.put(row)
        bar.finished(len(failures))

    try:
        if ray is None:
            for case in todo:
                if not store.claim(case.key):
                    elsewhere += 1
                    bar.finished(len(failures))
                    continue
                bar.running(case_label(case))
                record(case, run_case(case, ctx))
        else:  # claim all first (other runs skip them), then rows arrive as tasks finish
            from .distributed import ray_rows

            mine = [c for c in todo if store.claim(c.key)]
            elsewhere = len(todo) - len(mine)
            for _ in range(elsewhere):
                bar.finished(0)
            for case, row in ray_rows(mine, out_dir, device, ray):
                record(case, row)
    finally:
        bar.close()
        store.release()
    return RunSummary(len(cases), len(cases) - len(todo), len(todo) - elsewhere, len(failures),
                      list(suite.skipped), time.perf_counter() - t0, elsewhere, failures)


def case_label(case: Case) -> str:
    """A readable name of a case: ``teacher/method/nfe=N/seed=S``."""
    return f"{case.teacher}/{case.method}/nfe={case.nfe}/seed={case.seed}"


PLAIN_PROGRESS_S = 15.0  # seconds between plain progress lines when stderr is not a terminal


class _Progress:
    """Progress of a suite run on stderr: a tqdm bar naming the running case on a terminal;
    elsewhere (CI logs, files) a plain line every :data:`PLAIN_PROGRESS_S` seconds and at
    the end, never carriage-return updates."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n, self.failed, self.t0 = 0, 0, time.monotonic()
        self.last = self.t0
        self.bar = tqdm(total=total, desc=desc, unit="case", dynamic_ncols=True) \
            if enabled and sys.stderr.isatty() else None

    def running(self, label: str) -> None:
        """Name the case now running (on the terminal bar only)."""
        if self.bar is not None:
            self.bar.set_postfix_str(label)

    def finished(self, failed: int) -> None:
        """Count one more case as finished; ``failed`` is the run's failures so far."""
        self.n, self.failed = self.n + 1, failed
        if self.bar is not None:
            self.bar.update()
        elif self.enabled and time.monotonic() - self.last >= PLAIN_PROGRESS_S:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        print(f"{self.desc}: {self.n}/{self.total} cases ({self.failed} failed), "
              f"{self.last - self.t0:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.total:
            self._line()
