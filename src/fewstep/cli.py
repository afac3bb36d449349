"""The ``fewstep`` command.

User errors (a bad value, a missing or unreadable file: ``ValueError`` and ``OSError``, which
every check raises naming the value) print one line and exit with status 2, argument errors
included; Ctrl-C prints one line and exits with 130, keeping finished work.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench.students import RENOISE_SIGMA_MIN

DEFAULT_STEPS = 2000
RESULTS_DB = "results.sqlite"  # the database inside a results directory
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _rampup(text: str) -> float | None:
    """--ema-rampup: a positive fraction or 'none'."""
    if text.lower() == "none":
        return None
    return positive_float(text)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def device(text: str) -> str:
    """argparse type: a torch device string that exists on this machine."""
    if text == "cpu":
        return text
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps)") \
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine "
                                         f"(torch {torch.__version__}); use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA "
                                         "device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    return text


def registered(kind: str, names: Callable[[], list[str]]) -> Callable[[str], str]:
    """argparse type: one of a registry's ``names()``, else an error listing them."""
    def check(text: str) -> str:
        if text not in (valid := names()):
            raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; available: "
                                             f"{', '.join(valid)}")
        return text
    return check


class _Listing(str):
    """A help text ending in a registry's names, listed when the help is shown (argparse
    expands every help text with ``%``), not when the parser is built: the registries behind
    ``distill`` and ``tune`` import ~1 s of modules (scipy.optimize) that no other command
    needs."""

    names: Callable[[], list[str]]

    def __new__(cls, text: str, names: Callable[[], list[str]]) -> _Listing:
        listing = super().__new__(cls, text)
        listing.names = names
        return listing

    def __mod__(self, params: Any) -> str:
        return (str(self) + ", ".join(self.names())) % params


def _datasets() -> list[str]:
    from . import data

    return data.available()


def _distill_methods() -> list[str]:
    from .distill import available_methods

    return available_methods()


def _tune_methods() -> list[str]:
    from .tune import METHODS

    return list(METHODS)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def results_paths(out: str) -> tuple[Path, Path]:
    """(database, report directory) of ``--out``: a results directory holding
    ``results.sqlite``, or a database file itself (e.g. ``fewstep merge``'s ``all.sqlite``),
    whose report goes beside it."""
    path = Path(out)
    if not path.is_dir() and (path.is_file() or path.suffix in (".sqlite", ".sqlite3", ".db")):
        return path, path.parent
    return path / RESULTS_DB, path


def _check_metric(metric: str, rows: list[dict], db: Path) -> None:
    """``metric`` must be present in ``rows``, else an error naming the ones that are."""
    from .bench.report import metrics_present

    if rows and metric not in (present := metrics_present(rows)):
        raise ValueError(f"--metric {metric!r}: not a metric of the rows in {db}; "
                         f"available: {', '.join(present)}")

def _print_tables(rows: list[dict], metric: str) -> None:
    """The terminal tables of bench and report: decision, leaderboard, peers, the
    amortised-cost front and (on ode_rmse) the convergence table."""
    from .bench import report

    print(report.format_decision(report.decide(rows, metric)))
    print(report.format_leaderboard(report.leaderboard(rows, metric=metric)))
    print(report.format_peer_comparison(report.peer_comparison(rows, metric=metric)))
    print(report.format_amortised(report.amortised_fronts(report.amortised(rows, metric))))
    if "ode_rmse" in report.metrics_present(rows):
        print(report.format_convergence(report.convergence(rows)))


EPILOG_BENCH = """examples:
  fewstep bench                         # the quick suite on the built-in teachers
  fewstep bench --suite smoke           # a seconds-long suite
  fewstep bench --suite my_suite.toml --out results --shard 0/2   # half of a suite
  fewstep bench --list                  # the cases a suite expands to, without running them
  fewstep bench --suite full --ray local   # cases as Ray tasks on this machine's cores
  fewstep bench --teacher checkpoint:runs/moons-teacher   # your trained teacher
  fewstep bench --teacher python:my_models:teacher        # your own denoiser (see docs/zoo.md)
"""


EPILOG_SAMPLE = """examples:
  fewstep sample --teacher moons --solver unipc_bh2 --nfe 6
  fewstep sample --teacher runs/moons-teacher --solver heun --nfe 15   # a trained teacher
  fewstep sample --teacher zoo:digits-edm --student zoo:digits-cd --nfe 2
  fewstep sample --teacher digits --solver heun --nfe 15 --n 64 --out digits-heun
  fewstep sample --teacher diffusers:/path/to/pipeline --solver dpmpp_2m --nfe 20
"""


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.report import write_report
    from .bench.runner import parse_shard, run_suite
    from .bench.store import Store
    from .bench.suite import load_suite
    from .metrics import registry as metric_registry

    metric_registry.get(args.metric)  # an unknown metric fails before any case runs
    shard = parse_shard(args.shard)
    if args.ray is not None:
        from .bench.distributed import RAY_MISSING, check_reachable, require_ray

        try:
            require_ray()
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        check_reachable(args.ray)  # before the suite loads: ray.init would wait without limit
        if args.data:
            raise ValueError(f"--data {args.data!r} with --ray: Ray workers cannot see a "
                             "folder registered in this process; run without --ray")
    if args.data and not any(t.startswith("diffusers:") for t in args.teacher or []):
        raise ValueError(f"--data {args.data!r} needs --teacher diffusers:PATH (the built-in "
                         "teachers score against their own data)")
    suite = load_suite(args.suite)
    if args.inception_weights:
        suite = dataclasses.replace(suite, inception_weights=args.inception_weights)
    if args.teacher:
        names = _register_teachers(args.teacher, args.data)
        suite = dataclasses.replace(suite, teachers=names, by_teacher={
            t: v for t, v in suite.by_teacher.items() if t in names})
        suite.validate()
    if args.list:
        for c in suite.cases():
            if int(c.key, 16) % shard[1] != shard[0]:
                continue
            print(f"{c.key}  {c.teacher:14s} {c.method:22s} nfe={c.nfe:<3d} seed={c.seed}")
        for why in suite.skipped:
            print(f"skipped: {why}")
        return 0
    if Path(args.out).is_file():
        raise ValueError(f"--out {args.out!r} is a file; bench writes a results directory "
                         f"(its database is DIR/{RESULTS_DB})")
    t0 = time.perf_counter()
    summary = run_suite(suite, args.out, shard=shard, device=args.device,
                        progress=not args.quiet, ray=args.ray)
    print(f"suite {suite.name!r}: {summary.total} cases in this shard, {summary.already_done} "
          f"already done, {summary.ran} run ({summary.failed} failed), {summary.elsewhere} "
          f"left to another run on this --out, in {summary.seconds:.1f} s; "
          f"{len(summary.skipped)} unreachable budgets skipped (the report's 'Not run' "
          "section lists them)")
    for i, line in enumerate(summary.failure_lines()):
        print(f"{summary.failed} failed: {line}" if i == 0 else f"  {line}")
    db = Path(args.out) / RESULTS_DB
    store = Store(db, read_only=True)
    rows = store.rows(suite=suite.name)
    _check_metric(args.metric, rows, db)
    _print_tables(rows, args.metric)
    if not args.no_report:  # the store, not rows: the report lists the failed cases too
        path = write_report(store, args.out, suite=suite.name, metric=args.metric)
        print(f"report: {path}")
    print(f"total wall-clock: {time.perf_counter() - t0:.1f} s")
    return 1 if summary.failed else 0


def _register_teachers(specs: list[str], data_dir: str | None) -> list[str]:
    """Register ``diffusers:PATH`` teachers, scored against an image folder if given."""
    from . import data
    from .bench import teachers

    names = []
    for spec in specs:
        if spec.startswith("diffusers:") and data_dir is not None:
            name = f"folder:{data_dir}"
            if name not in data.available():
                t = teachers.diffusers_teacher(spec.removeprefix("diffusers:"))
                data.register(data.from_image_folder(name, data_dir, size=t.sample_shape[-1],
                                                     channels=t.sample_shape[0]))
            teachers.register(spec, functools.partial(
                teachers.diffusers_teacher, spec.removeprefix("diffusers:"), data=name),
                overwrite=True)
        teacher = teachers.get(spec)  # fail early, naming a bad teacher
        if data_dir is not None and teacher.reference_samples is not None:
            teacher.reference_samples(2, 0)  # read the folder once: a bad image fails here
        names.append(spec)
    return names


def _sample_own_grid(args: argparse.Namespace, D, x, sigma_max: float):
    """A PD student with DDIM on its own training grid, at exactly its step count; a KD or
    UFOGen student in its one step; an ADD student re-noising over its own levels."""
    from .bench import students

    entry = f"student:{args.student}"
    if why := students.unreachable(entry, args.nfe):
        raise ValueError(why)
    return students.run_student(entry, D, x, args.nfe, sigma_max, args.seed)[0]


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from . import solvers
    from .bench import teachers
    from .bench.runner import start_noise
    from .distill import CONSISTENCY_SAMPLERS, OWN_SAMPLERS
    from .viz import save_samples

    if args.teacher.startswith("diffusers:"):
        _register_teachers([args.teacher], None)
    elif args.teacher not in teachers.available() and ":" not in args.teacher and \
            Path(args.teacher).exists():  # a `fewstep train` run directory or checkpoint
        args.teacher = f"checkpoint:{args.teacher}"
    teacher = teachers.get(args.teacher)
    denoiser, solver = teacher.denoiser, args.solver
    nfe_given = args.nfe is not None
    if args.student:
        from .bench import students

        students.check(f"student:{args.student}")
        if why := students.wrong_teacher(f"student:{args.student}", args.teacher):
            raise ValueError(f"{why} (--teacher)")
        own_data = students.trained_on(f"student:{args.student}")
        if own_data is not None:  # a run directory records its built-in data set
            from . import data as datasets

            if tuple(datasets.get(own_data).shape) != tuple(teacher.sample_shape):
                raise ValueError(f"--student {args.student} was trained on {own_data} "
                                 f"{tuple(datasets.get(own_data).shape)}; --teacher "
                                 f"{args.teacher} samples {tuple(teacher.sample_shape)}")
        denoiser = students.model(f"student:{args.student}")
        method = students.method_name(args.student)
        kind: str | None = students.sampler(method)
        if solver is not None and kind in OWN_SAMPLERS:
            raise ValueError(f"--solver {solver}: {args.student} is a {method} student, sampled "
                             f"by its own {kind.replace('_', ' ')} sampler; leave --solver out")
        if kind == "own_grid" and args.nfe is None:  # its own k steps
            args.nfe = students.own_grid(f"student:{args.student}")[0]
        if kind in ("one_step", "own_levels") and args.nfe is None:
            args.nfe = 1  # a one-step (or ADD) student samples in its one step
        if kind == "gan" and args.nfe is None:  # its T posterior steps
            args.nfe = students.gan_method(f"student:{args.student}").T
        if kind == "one_step" and args.nfe != 1:
            raise ValueError(f"--nfe {args.nfe}: {args.student} is a one-step ({method}) "
                             "student; sample it with --nfe 1")
        if solver is None:
            solver = "consistency" if kind in CONSISTENCY_SAMPLERS else "ddim"
    else:
        method, kind = None, None
    solver = solver or "dpmpp_2m"
    args.solver = solver
    spec = solvers.get(solver)
    if spec.tuned is not None:  # a tuned solver: its own teacher, at its own NFE
        spec.tuned.check_teacher(teacher.denoiser, args.teacher)  # not a student's weights
        args.nfe = args.nfe or spec.tuned.nfe
    if not spec.plannable and nfe_given:
        raise ValueError(f"--nfe {args.nfe}: solver {solver!r} is {spec.kind}, its NFE follows "
                         "its error tolerances; leave --nfe out")
    if args.steps is not None and spec.kind != "parallel":
        spends = "--nfe evaluations" if spec.plannable else f"its NFE as {spec.kind}"
        raise ValueError(f"--steps {args.steps}: only a parallel solver (paradigms) runs a "
                         f"sequential grid; solver {solver!r} spends {spends}")
    args.nfe = args.nfe or 10
    x = start_noise(teacher, args.seed, args.n).float()
    knobs: dict = {}
    info: dict = {}
    if spec.kind == "adaptive":  # it reports the evaluations it spent
        sigmas = torch.tensor([teacher.sigma_max, teacher.sigma_min, 0.0])
        knobs["info"] = info
    elif spec.kind == "parallel":  # the sequential DDIM grid it runs in fewer rounds
        sigmas = solvers.plan("ddim", args.steps or 50, args.schedule,
                              sigma_min=teacher.sigma_min, sigma_max=teacher.sigma_max).sigmas
        knobs["info"] = info
    else:
        sigma_min = args.sigma_min if args.sigma_min is not None else (
            RENOISE_SIGMA_MIN if solver == "consistency" else teacher.sigma_min)
        p = solvers.plan(solver, args.nfe, args.schedule, sigma_min=sigma_min,
                         sigma_max=teacher.sigma_max)
        sigmas, knobs = p.sigmas, dict(p.knobs)
    if spec.stochastic:
        knobs["generator"] = solvers.sample_generators(args.seed, args.n)
    with torch.no_grad():
        if args.student and kind in OWN_SAMPLERS:
            out = _sample_own_grid(args, denoiser, x, teacher.sigma_max)
        else:
            out = spec(denoiser, x, sigmas, **knobs)
    if info:
        args.nfe = f"{info['nfe']:.3g} ({spec.kind})"
        rounds = (f" in {info['rounds']} sequential rounds over a {info['steps']}-step grid"
                  if spec.kind == "parallel" else "")
        print(f"solver {solver!r} is {spec.kind}: it spent {info['nfe']:.3g} evaluations per "
              f"sample (mean){rounds}")
    paths = save_samples(teacher.to_data(out), args.out, kind=teacher.kind,
                         title=f"{args.teacher} / {args.solver} / NFE {args.nfe}")
    for path in paths:
        print(f"wrote {path}")
    return 0


EPILOG_TRAIN = """examples:
  fewstep train --data moons --steps 3000 --out runs/moons-teacher
  fewstep distill --method kd --teacher runs/moons-teacher --data moons --steps 2000 \\
      --out runs/moons-kd
  fewstep distill --method cd --teacher runs/moons-teacher --data moons --out runs/moons-cd
  fewstep sample --teacher moons --student runs/moons-cd --nfe 2
"""


EPILOG_TUNE = """examples:
  fewstep tune --teacher gmm16 --method gits --nfe 5 --out tuned/gmm16-gits-5
  fewstep tune --teacher moons --method s4s --nfe 4 --param iters=300 --out tuned/moons-s4s-4
  fewstep sample --teacher moons --solver tuned/moons-s4s-4
"""


def _cmd_tune(args: argparse.Namespace) -> int:
    from . import tune

    options: dict[str, Any] = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        options[key] = _literal(value)
    base = args.base or ("ddim" if args.method == "pas" else "dpmpp_2m")
    tuned = tune.tune(args.teacher, args.method, args.nfe, base=base, n_cal=args.n_cal,
                      n_val=args.n_val, seed=args.seed, cache=args.cache, **options)
    path = tuned.save(args.out)
    print(tuned.describe())
    print(f"wrote {path} (use it as --solver {path})")
    return 0


def _literal(text: str) -> object:
    """A ``--param`` value: int, float, or the string itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _template(data_name: str, method: str, hidden: int, seed: int, sigma_max: float = 80.0):
    """A fresh network for ``data_name``, initialised from ``seed``: an MLP for vectors, a small
    UNet for images, preconditioned as an EDM denoiser, (consistency methods) a consistency
    function or (rectified-flow methods) a velocity field; for ``dfno`` a trajectory operator
    ``hidden`` channels wide from ``sigma_max``."""
    import torch

    from . import data, nets
    from .distill import gan_pair, network_kind

    ds = data.get(data_name)
    torch.manual_seed(seed)
    kind = network_kind(method)
    if kind == "autoencoder":
        raise ValueError(f"--method {method} trains the autoencoder of a latent teacher, not a "
                         "student: build one with `fewstep zoo build digits-vae` or from Python")
    if kind == "operator":
        return nets.TrajectoryOperator(list(ds.shape), sigma_max=sigma_max, width=hidden)
    if kind == "gan":  # a generator and its discriminator
        return gan_pair(tuple(ds.shape), method,
                        width=hidden if ds.kind == "vector" else max(16, hidden // 8))
    net: Any
    if ds.kind == "vector":
        net = nets.MLPDenoiserNet(ds.shape[0], hidden=hidden)
    else:
        net = nets.UNet(in_channels=ds.shape[0], channels=max(16, hidden // 8))
    precond = {"velocity": nets.FlowPrecond, "consistency": nets.ConsistencyPrecond}
    return precond.get(kind, nets.EDMPrecond)(net)


def _train_config(args: argparse.Namespace, steps: int | None = None):
    from .train import TrainConfig

    return TrainConfig(steps=steps or args.steps or DEFAULT_STEPS, batch_size=args.batch_size,
                       lr=args.lr,
                       ema_decay=args.ema_decay, ema_rampup=args.ema_rampup,
                       mixed_precision=args.mixed_precision,
                       checkpoint_every=args.checkpoint_every, seed=args.seed, out_dir=args.out,
                       resume=not args.overwrite, overwrite=args.overwrite,
                       progress=not args.quiet)


def _report_training(result) -> None:
    c = result.cost
    print(f"trained {c.steps} steps in {c.seconds:.1f} s, teacher NFE {c.teacher_nfe:.0f} "
          f"(full-batch units); checkpoint: {result.checkpoint}")


def _cmd_train(args: argparse.Namespace) -> int:
    from .distill import get_method
    from .train import train

    method = get_method("edm")()
    result = train(method, _template(args.data, "edm", args.hidden, args.seed), args.data,
                   _train_config(args))
    _report_training(result)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import get_method
    from .train import load_checkpoint, train

    method, steps = _method_and_steps(get_method(args.method), args.param, args.steps)
    teacher = load_checkpoint(args.teacher) if args.teacher else None
    labelled = _labelled(teacher, args.data, args.teacher)
    if labelled is None:
        template = _template(args.data, args.method, args.hidden, args.seed,
                             sigma_max=getattr(method, "sigma_max", 80.0))
    else:
        template = _conditional_template(teacher, method, args.seed)
    student = method.init_student(teacher, template)
    data = args.data if labelled is None else labelled
    result = train(method, student, data, _train_config(args, steps), teacher=teacher)
    _report_training(result)
    return 0


def _labelled(teacher: Any, data_name: str, source: str | None) -> dict[str, Any] | None:
    """The labelled train split ``{"x", "cond"}`` of ``data_name`` when ``teacher`` is
    class-conditional (its class labels go to the teacher and the student); None for an
    unconditional teacher or none. ValueError naming the data set when it has no labels or
    another number of classes than the teacher."""
    from . import data
    from .bench.students import _num_classes

    K = _num_classes(teacher)
    if not K:
        return None
    ds = data.get(data_name)
    labelled = [n for n in data.available() if data.get(n).num_classes == K]
    if not ds.num_classes:
        raise ValueError(f"--data {data_name!r} has no class labels, but the teacher {source} "
                         f"is class-conditional ({K} classes); use a labelled data set with "
                         f"{K} classes ({', '.join(labelled) or 'none built in'})")
    if ds.num_classes != K:
        raise ValueError(f"--data {data_name!r} has {ds.num_classes} classes, the teacher "
                         f"{source} was trained on {K}; use a data set with {K} classes "
                         f"({', '.join(labelled) or 'none built in'})")
    return ds.load_labelled("train")


def _conditional_template(teacher: Any, method: Any, seed: int) -> Any:
    """A fresh student with a class-conditional teacher's architecture (its recorded spec and
    sigma_data), initialised from ``seed``: a consistency function for consistency methods,
    else an EDM denoiser; a guidance-scale input (``w_embedding``) for the w-conditioned
    methods (those with a ``w_min`` field: lcd, lcf, guided)."""
    import torch

    from . import nets
    from .distill import network_kind
    from .nets.spec import build_model, model_spec

    kind = network_kind(method.name)
    if kind not in ("denoiser", "consistency"):
        raise ValueError(f"--method {method.name} has no class-conditional student in the CLI; "
                         "distil a class-conditional teacher from Python with a template")
    spec = model_spec(getattr(teacher, "net", teacher))
    if spec is None:
        raise ValueError("the class-conditional teacher records no buildable architecture; "
                         "distil it from Python with a student template")
    if hasattr(method, "w_min"):
        spec = {**spec, "kwargs": {**spec["kwargs"], "w_embedding": True}}
    torch.manual_seed(seed)
    net, sigma_data = build_model(spec), float(getattr(teacher, "sigma_data", 0.5))
    if kind == "consistency":
        return nets.ConsistencyPrecond(net, getattr(method, "sigma_min", 0.002), sigma_data)
    return nets.EDMPrecond(net, sigma_data)


def _method_and_steps(cls: Any, pairs: Sequence[str], steps: int | None):
    """The method built from ``--param KEY=VALUE`` pairs, and the optimiser steps to run: a
    method whose schedule spans ``total_steps`` (iCT) gets ``--steps``; one whose rounds fix
    it (PD) must agree with ``--steps`` if given."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(fields)} ({cls.name})")
        params[key] = _typed(value, fields[key].default, key)
    if "total_steps" in fields and "total_steps" not in params:
        params["total_steps"] = steps or DEFAULT_STEPS
    method = cls(**params)
    fixed = getattr(method, "total_steps", None) if "total_steps" not in fields else None
    if fixed is not None and steps is not None and steps != fixed:
        raise ValueError(f"--steps {steps} disagrees with {cls.name}'s rounds ({fixed} steps); "
                         "leave --steps out or change the rounds with --param")
    return method, fixed or steps or DEFAULT_STEPS


def _typed(value: str, default: object, key: str) -> object:
    """``value`` converted to the type of the field's default."""
    kind = type(default)
    try:
        if kind is bool:
            return {"true": True, "false": False}[value.lower()]
        return kind(value) if kind in (int, float, str) else value
    except (KeyError, ValueError):
        raise ValueError(f"--param {key}={value!r}: expected a {kind.__name__}") from None


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=registered("data set", _datasets),
                   help="built-in data set (moons, digits, ...)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log; resumes)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"optimiser steps (default {DEFAULT_STEPS}; PD: its rounds' total)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ema-rampup", type=_rampup, default=0.05, help="EMA half-life <= this "
                   "fraction of the steps so far (EDM), or 'none': constant --ema-decay (runs "
                   "recorded before this option had none)")
    p.add_argument("--hidden", type=positive_int, default=256, help="network width")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order, noise")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out "
                   "(default: resume it with the same settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import write_report
    from .bench.store import Store

    db, report_dir = results_paths(args.out)
    store = Store(db, read_only=True)
    rows = store.rows(suite=args.suite)
    if not store.rows(suite=args.suite, status=None):
        print(f"no cases in {db}", file=sys.stderr)
        return 1
    if not rows:  # only failed cases: the report lists them
        print(f"no finished cases in {db}; the report lists the failed ones", file=sys.stderr)
    _check_metric(args.metric, rows, db)
    _print_tables(rows, args.metric)
    report_dir = Path(args.report_dir) if args.report_dir else report_dir
    try:  # the store, not rows: the report lists the failed cases too
        path = write_report(store, report_dir, suite=args.suite, metric=args.metric)
    except OSError as e:
        raise OSError(f"cannot write the report in {report_dir} ({e.strerror or e}); "
                      "choose another folder with --report-dir") from None
    print(f"report: {path}")
    return 0 if rows else 1


def _cmd_merge(args: argparse.Namespace) -> int:
    from .bench.store import merge

    n = merge(args.target, args.sources)
    print(f"merged {len(args.sources)} database(s) into {args.target}: {n} rows written "
          "(newest finished row per case)")
    return 0


def _cmd_solvers(args: argparse.Namespace) -> int:
    from . import solvers

    print(f"{'name':22s} {'kind':11s} {'order':>5s} {'history':>7s} {'min NFE':>7s}  "
          f"stochastic  reference")
    for name in solvers.available():
        s = solvers.get(name)
        ref = f"= {s.alias_of}" if s.alias_of else s.reference
        if s.requires:
            ref += f" [needs a {s.requires} model]"
        print(f"{name:22s} {s.kind:11s} {s.order:5d} {s.history:7d} {s.min_nfe:7d}  "
              f"{'yes' if s.stochastic else 'no':10s}  {ref}")
    return 0


def _cmd_zoo_list(args: argparse.Namespace) -> int:
    from . import zoo

    print(f"{'name':24s} {'role':11s} {'method':11s} {'data':12s} {'steps':>5s} "
          f"{'train s':>7s} {'teacher NFE':>11s}  sha256")
    for name in zoo.available():
        r = zoo.recipe(name)
        if zoo.built(name):
            e = zoo.entry(name)
            cost = f"{e.cost.seconds:7.0f} {e.cost.teacher_nfe * r.batch_size:11.0f}  " \
                f"{e.sha256[:12]}"
        else:
            cost = f"{'-':>7s} {'-':>11s}  not built (fewstep zoo build {name})"
        print(f"{name:24s} {r.role:11s} {r.method:11s} {r.data:12s} {r.steps:5d} {cost}")
    print("teacher NFE: teacher network evaluations per sample row during training")
    return 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from . import zoo

    recorded = zoo.entry(args.name) if zoo.built(zoo.recipe(args.name).name) else None
    e = zoo.build(args.name, args.out, progress=not args.quiet)
    print(f"built {e.name} in {e.cost.seconds:.1f} s ({e.cost.steps} steps): {e.weights} "
          f"sha256 {e.sha256}")
    if recorded is None:
        print("no recorded entry to compare with")
        return 0
    if recorded.sha256 == e.sha256:
        print("matches the recorded hash: the build is reproduced bitwise")
        return 0
    print(f"differs from the recorded hash {recorded.sha256} (recorded with torch "
          f"{recorded.environment.get('torch')}; CPU training repeats bitwise only on the same "
          "machine type and torch build)")
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fewstep", description="Fast diffusion sampling, measured "
                                "honestly: solvers, distillation and a benchmark harness.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="run a benchmark suite, print the leaderboard, write the "
                       "report", epilog=EPILOG_BENCH,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--suite", default="quick", help="built-in suite name (quick, smoke, full) "
                   "or a TOML file (default: quick)")
    b.add_argument("--out", default="fewstep-results", help="results directory (SQLite store, "
                   "reference cache, report); default: fewstep-results")
    b.add_argument("--shard", default="0/1", help="run only shard i of n, as 'i/n'")
    b.add_argument("--device", default="cpu", type=device, help="torch device (cpu, cuda, "
                   "cuda:1, mps)")
    b.add_argument("--metric", default="ode_rmse", help="leaderboard metric (default ode_rmse)")
    b.add_argument("--no-report", action="store_true", help="skip writing the HTML report")
    b.add_argument("--list", action="store_true", help="list the cases and exit")
    b.add_argument("--teacher", action="append", default=[], help="run the suite's methods on "
                   "this teacher instead (repeatable): a built-in or zoo:NAME teacher, "
                   "checkpoint:PATH (a fewstep train run), diffusers:PATH or "
                   "python:MODULE:ATTR")
    b.add_argument("--data", default=None, help="folder of reference images to score a "
                   "diffusers teacher's samples against (sliced Wasserstein, MMD, FD, KID)")
    b.add_argument("--inception-weights", default=None, help="local FID Inception weights "
                   "(torch-fidelity's inception-v3-compat .pth) for field-standard FID/KID on "
                   "image teachers; without it they are reported as not computed")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--ray", default=None, metavar="ADDRESS", help="run the cases as Ray tasks: "
                   "'local' (this machine) or a cluster address (e.g. ray://head:10001, auto); "
                   "rows go to the same store, so resume, --shard and merge work as usual. "
                   "Needs the extra: pip install 'fewstep[ray]'")
    b.set_defaults(fn=_cmd_bench)

    r = sub.add_parser("report", help="write the HTML report and print the leaderboard from a "
                       "results directory", epilog="example:\n  fewstep report --out "
                       "fewstep-results --metric sw",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--out", default="fewstep-results", help="results directory, or a database "
                   "file such as merge's all.sqlite (default: fewstep-results)")
    r.add_argument("--report-dir", default=None, help="where to write report.html (default: "
                   "the results directory, or the database file's folder)")
    r.add_argument("--suite", default=None, help="only this suite's rows")
    r.add_argument("--metric", default="ode_rmse")
    r.set_defaults(fn=_cmd_report)

    m = sub.add_parser("merge", help="merge shard databases into one (per case the newest "
                       "finished row; an error never replaces a finished result)",
                       epilog="example:\n  fewstep merge all.sqlite a/results.sqlite "
                       "b/results.sqlite", formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("target")
    m.add_argument("sources", nargs="+")
    m.set_defaults(fn=_cmd_merge)

    sp = sub.add_parser("sample", help="sample a teacher with a solver; write tensors and a PNG "
                        "grid (images) or scatter plot (2-D)", epilog=EPILOG_SAMPLE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--teacher", default="gmm2", help="built-in teacher (gmm2, moons, digits, "
                    "...), zoo:NAME, a fewstep train run directory (or checkpoint:PATH), "
                    "diffusers:PATH or python:MODULE:ATTR")
    sp.add_argument("--solver", default=None, help="registered solver or a tuned solver's "
                    "directory (default dpmpp_2m; consistency for consistency students, ddim "
                    "for other students)")
    sp.add_argument("--student", default=None, help="a trained student (run directory or "
                    "checkpoint, zoo:NAME or python:MODULE:ATTR) to sample instead of the "
                    "teacher, on the teacher's sigma range")
    sp.add_argument("--nfe", type=positive_int, default=None,
                    help="evaluations (default 10; a tuned solver's own NFE; not for adaptive "
                    "or parallel solvers, whose NFE follows their tolerances and is printed)")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help="a parallel solver's (paradigms) sequential grid: the DDIM steps it "
                    "runs in fewer rounds (default 50); its NFE and rounds are printed")
    sp.add_argument("--schedule", default="karras")
    sp.add_argument("--sigma-min", type=float, default=None, help="last nonzero sigma of the "
                    "plan (default: the teacher's; 0.821 for the consistency sampler)")
    sp.add_argument("--n", type=positive_int, default=64, help="number of samples")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="fewstep-samples", help="output directory")
    sp.set_defaults(fn=_cmd_sample)

    t = sub.add_parser("train", help="train an EDM teacher on a built-in data set",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    _training_args(t)
    t.set_defaults(fn=_cmd_train)

    d = sub.add_parser("distill", help="distil a teacher checkpoint into a few-step student",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--method", required=True, type=registered("method", _distill_methods),
                   help=_Listing("a registered method (fewstep.distill.available_methods()): ",
                                 _distill_methods))
    d.add_argument("--teacher", default=None, help="teacher run directory or checkpoint "
                   "(not needed by ct); a class-conditional teacher trains on --data's "
                   "labelled train split a student of its own architecture (plus a guidance "
                   "input w for lcd, lcf, guided; --hidden unused)")
    d.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyper-parameter, e.g. --param N=18 --param solver=heun "
                   "(pd: --param teacher_steps=16 --param steps_per_round=200); repeatable")
    _training_args(d)
    d.set_defaults(fn=_cmd_distill)

    from . import edit

    e = sub.add_parser("edit", help="zero-shot inpainting, colourisation, super-resolution and "
                       "stroke-guided generation; PNG in, PNG out",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  fewstep edit inpaint digit.png --model digits "
                       "--solver heun --nfe 15 --out filled.png\n  fewstep edit super-resolve "
                       "patch.png --model runs/patches-cd --nfe 4")
    edit.add_arguments(e)
    e.set_defaults(fn=edit.edit_cli)

    z = sub.add_parser("zoo", help="list the zoo's trained teachers and students, or rebuild "
                       "one from its recipe and check its weights hash",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  fewstep zoo list\n  fewstep zoo build "
                       "checkerboard-cd --out fewstep-zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="every entry: recipe, weights hash, training cost")
    zl.set_defaults(fn=_cmd_zoo_list)
    zb = zsub.add_parser("build", help="rebuild an entry (one CPU thread; resumes) and compare "
                         "its weights hash with the recorded one")
    from .zoo.recipes import RECIPES  # names only: no torch, no weights read

    zb.add_argument("name", help=f"zoo entry, one of: {', '.join(RECIPES)} (see fewstep zoo "
                    "list)")
    zb.add_argument("--out", default="fewstep-zoo", help="where the weights, record and run "
                    "directory go (default: fewstep-zoo)")
    zb.add_argument("--quiet", action="store_true", help="no progress bar")
    zb.set_defaults(fn=_cmd_zoo_build)
    tu = sub.add_parser("tune", help="tune a solver's schedule or coefficients to a teacher at "
                        "one NFE; writes a tuned-solver directory", epilog=EPILOG_TUNE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_argument("--teacher", required=True, help="built-in teacher (gmm16, moons, ...)")
    tu.add_argument("--method", required=True, type=registered("tuning method", _tune_methods),
                    help=_Listing("a tuning method (fewstep.tune.METHODS): ", _tune_methods))
    tu.add_argument("--nfe", type=positive_int, required=True)
    tu.add_argument("--base", default=None, help="registered multistep solver to start "
                    "from (default dpmpp_2m; ddim for pas, which corrects ddim or ipndm)")
    tu.add_argument("--n-cal", type=positive_int, default=128, help="calibration start noises")
    tu.add_argument("--n-val", type=positive_int, default=128, help="validation start noises")
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a method option, e.g. --param iters=300 --param init=gits")
    tu.add_argument("--cache", default=".fewstep-cache/references",
                    help="reference-solution cache directory")
    tu.add_argument("--out", required=True, help="output directory of the tuned solver")
    tu.set_defaults(fn=_cmd_tune)

    s = sub.add_parser("solvers", help="list the registered solvers")
    s.set_defaults(fn=_cmd_solvers)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fewstep`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError) as e:  # user errors: each names the bad value or file
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fewstep {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fewstep {args.command}: interrupted; finished work is kept (rerun the same "
              "command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
