"""Trained students as bench methods, sampled on the case's teacher's sigma range and start
noise with the sampler its method calls for:

- ``student:PATH``: a training run directory or checkpoint written by
  :func:`fewstep.train.train`;
- ``student:zoo:NAME``: a built zoo student (:mod:`fewstep.zoo`); it runs only on its own
  teacher ``zoo:TEACHER`` (on any other teacher the case is listed as skipped); a student of
  a class-conditional teacher runs as ``student:zoo:NAME@w=W`` on ``zoo:TEACHER@w=W``, the
  same guidance strength, class-balanced like its teacher (row ``i`` of class ``i mod K``;
  a w-conditioned guided-distillation student is given ``w=W``, see
  :class:`~fewstep.bench.teachers.GuidedRows`). A student distilled from another student
  (a chain of progressive-distillation rounds) belongs to the chain's root teacher and its
  row's training cost is the whole chain's;
- ``student:python:MODULE:ATTR``: an external consistency function ``f(x, sigma, **cond) ->
  x0_hat`` that fewstep did not train (or a factory, a callable without required arguments,
  returning one), e.g. an ONNX model wrapped in a few lines; an optional attribute ``nfe`` (a
  tuple of budgets, e.g. ``(1,)`` for a one-step generator ``x0 = f(sigma_max z,
  sigma_max)``) limits the budgets it is run at. Its training cost is not known to fewstep:
  the row says so (NULL), never zero.

Samplers by training method:

- consistency students (cd, ct, ect, direct_cm, external): the ``consistency`` sampler,
  re-noising down to ``RENOISE_SIGMA_MIN`` (the plan's own sigma_min would waste an
  evaluation, since f(x, sigma_min) = x);
- latent consistency models (lcd, lcf): the same sampler at the guidance scale named in the
  entry, ``student:PATH@w=SCALE`` (required); a class-conditional LCM samples class labels
  uniformly per sample, drawn from the case's seed (:func:`class_labels`);
- one-step students (kd, rf_distill, ufogen) and trajectory operators (dfno): one step,
  ``x0 = D(sigma_max z, sigma_max)``;
- ADD students (add): the consistency sampler over ``k`` of their own student levels
  (``method.sampling_sigmas(k)``), at NFE 1 up to their ``num_student_steps``;
- w-conditioned guided-distillation students (guided, Meng et al. 2023 stage 1): DDIM at
  any NFE on the case's schedule, like a teacher;
- progressive-distillation students (pd): DDIM on their own training grid
  ``method.sigmas(k)``, only at NFE ``k``, the step count of the checkpoint's round (point at
  an intermediate ``checkpoints/step_*`` directory for the earlier, longer students);
- diffusion-GAN students (ddgan, siddm): the method's own sampler (posterior steps on its own
  grid, a fresh latent per step), only at NFE ``T``; the case's start noise ``sigma_max z``
  starts it as ``sigma_T z`` (the same ``z``).

Each row carries the student's one-off training cost: ``train_seconds`` (wall-clock) and
``train_teacher_nfe`` (teacher network evaluations, counted per sample row: full-batch
evaluations times the training batch size), 0 for training-free methods.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .. import solvers

__all__ = [
    "EXTERNAL",
    "RENOISE_SIGMA_MIN",
    "check",
    "class_labels",
    "guidance",
    "label",
    "model",
    "run_student",
    "sampler",
    "training_cost",
    "unreachable",
    "wrong_teacher",
]

EXTERNAL = "external"  # a python:MODULE:ATTR consistency function
RENOISE_SIGMA_MIN = 0.821  # Song et al. 2023's two-step re-noise level


def sampler(name: str) -> str | None:
    """How a student trained with the method ``name`` is sampled: the method's registered
    ``sampler`` (:data:`fewstep.distill.STUDENT_SAMPLERS`), ``consistency`` for an external
    student, None for a method that makes no few-step student or an unknown name."""
    from ..distill import available_methods, student_sampler

    if name == EXTERNAL:
        return "consistency"
    return student_sampler(name) if name in available_methods() else None


def _path(method: str) -> str:
    return method.removeprefix("student:").split("@w=")[0]


def guidance(method: str) -> float | None:
    """The guidance scale of ``student:PATH@w=SCALE``, or None without one; ValueError for a
    scale that is not a finite number >= 0 (:func:`~fewstep.bench.teachers.split_guidance`)."""
    from .teachers import split_guidance

    return split_guidance(method)[1]


def trained_on(method: str) -> str | None:
    """The built-in data set a run-directory student records (None for zoo, python: and
    students trained on a tensor)."""
    return info(_path(method)).get("dataset")


def class_labels(seed: int, n: int, num_classes: int) -> Tensor:
    """``n`` class labels uniform over ``num_classes``, from ``seed`` alone (a case's samples
    and its guided teacher's share them)."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    return torch.randint(num_classes, (n,), generator=g)


def _num_classes(model: Any) -> int:
    from ..nets.embedding import CondEmbedding

    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    return next((m.num_classes for m in modules
                 if isinstance(m, CondEmbedding) and m.num_classes > 0), 0)


@functools.cache
def info(source: str) -> dict[str, Any]:
    """A checkpoint-like record of the student at ``source`` (a path, ``zoo:NAME`` or
    ``python:MODULE:ATTR``): ``method`` {name, params}, ``step``, ``cost`` {seconds,
    teacher_nfe (sample rows)} or None, and ``teacher`` (its zoo teacher, or None)."""
    if source.startswith("zoo:"):
        from .. import zoo
        from .teachers import num_classes, split_guidance

        base, w = split_guidance(source.removeprefix("zoo:"))
        e = zoo.entry(base)
        if e.recipe.role != "student":
            raise ValueError(f"student:{source} is a teacher; bench it as --teacher {source}")
        if w is not None and not num_classes(f"zoo:{base}"):
            raise ValueError(f"student:{source}: guidance (@w=) needs a student of a "
                             "class-conditional teacher")
        chain = [e]  # the student, its student teachers, ..., up to the root teacher
        while (t := zoo.RECIPES.get(str(chain[-1].recipe.teacher))) is not None \
                and t.role == "student":
            chain.append(zoo.entry(chain[-1].recipe.teacher))
        root = f"zoo:{chain[-1].recipe.teacher}" + ("" if w is None else f"@w={w:g}")
        return {"method": e.method, "step": e.cost.steps, "teacher": root,
                "cost": {"seconds": sum(c.cost.seconds for c in chain),
                         "teacher_nfe": sum(c.cost.teacher_nfe * c.recipe.batch_size
                                            for c in chain)}}
    if source.startswith("python:"):
        return {"method": {"name": EXTERNAL, "params": {}}, "step": 0, "teacher": None,
                "cost": None}
    from ..train import checkpoint_info

    rec = checkpoint_info(source)
    batch = int(rec.get("config", {}).get("batch_size", 1))
    return {"method": rec.get("method", {}), "step": rec["step"], "teacher": None,
            "dataset": rec.get("dataset"),
            "cost": {"seconds": rec["cost"]["seconds"],
                     "teacher_nfe": rec["cost"]["teacher_nfe"] * batch}}


@functools.cache
def method_name(path: str) -> str:
    """The training method recorded for the student at ``path`` (see :func:`info`)."""
    method = info(path).get("method", {})
    return str(method.get("name")) if isinstance(method, dict) else str(method)


@functools.cache
def own_grid(method: str) -> tuple[int, Tensor]:
    """A PD student's step count ``k`` and its sampling grid ``method.sigmas(k)``."""
    from ..distill import get_method

    rec = info(_path(method))
    pd = get_method("pd")(**rec["method"]["params"])
    k = pd.student_steps(pd.round_at(max(rec["step"] - 1, 0)))
    return k, pd.sigmas(k)


@functools.cache
def gan_method(method: str) -> Any:
    """The recorded method (hyper-parameters) of a diffusion-GAN or ADD student: it knows its
    own sampling grids."""
    from ..distill import get_method

    rec = info(_path(method))["method"]
    return get_method(rec["name"])(**rec["params"])


def check(method: str) -> str:
    """The training method of a ``student:...`` entry, or a clear error (ValueError)."""
    source = _path(method)
    try:
        name = method_name(source)
    except FileNotFoundError:
        raise ValueError(f"{method!r}: no checkpoint at {source!r}") from None
    if name == EXTERNAL:
        model(method)  # imports it: a bad module or attribute fails here, named
        return name
    from ..distill import student_methods

    if sampler(name) is None:
        raise ValueError(f"{method!r} was trained with {name!r}; the bench samples students of "
                         f"{', '.join(student_methods())}")
    w = guidance(method)
    lcms = ", ".join(student_methods("lcm"))
    if sampler(name) == "lcm" and w is None:
        raise ValueError(f"{method!r}: an LCM ({lcms}) student is sampled at a guidance scale: "
                         "student:PATH@w=SCALE")
    if w is not None and sampler(name) != "lcm" and not source.startswith("zoo:"):
        raise ValueError(f"{method!r}: a {name} student takes no guidance scale (@w=); only "
                         f"LCMs ({lcms}) and the students of a class-conditional zoo teacher do")
    return name


def wrong_teacher(method: str, teacher: str) -> str | None:
    """Why the student ``method`` cannot run on ``teacher`` (a zoo student records its own
    teacher, whose data and scale it learnt), or None."""
    own = info(_path(method))["teacher"]
    if own is not None and _guided(teacher)[0] != _guided(own)[0]:
        return f"{method}: a student of {own}, not run on {teacher}"
    if own is not None and _guided(teacher)[1] != (guidance(method) or 0.0):
        return (f"{method}: a student of {own} at guidance w={guidance(method) or 0:g}, not "
                f"run on {teacher}")
    return None


def unreachable(method: str, nfe: int, teacher: str | None = None) -> str | None:
    """Why ``method`` cannot spend ``nfe`` evaluations (on ``teacher``, if given), or None."""
    name = check(method)
    if teacher is not None and (why := wrong_teacher(method, teacher)):
        return why
    if sampler(name) == "one_step" and nfe != 1:
        return f"{method} at NFE {nfe}: a one-step ({name.upper()}) student"
    if sampler(name) == "own_levels" and not 1 <= nfe <= gan_method(method).num_student_steps:
        n = gan_method(method).num_student_steps
        return f"{method} at NFE {nfe}: an {name.upper()} student samples in 1..{n} steps"
    if sampler(name) == "own_grid" and nfe != own_grid(method)[0]:
        return f"{method} at NFE {nfe}: a {own_grid(method)[0]}-step PD student (its own grid)"
    if sampler(name) == "gan" and nfe != gan_method(method).T:
        return f"{method} at NFE {nfe}: a {gan_method(method).T}-step {name.upper()} student"
    if name == EXTERNAL and (allowed := getattr(model(method), "nfe", None)) is not None \
            and nfe not in tuple(allowed):
        return f"{method} at NFE {nfe}: it declares nfe={tuple(allowed)}"
    return None


def _guided(teacher: str) -> tuple[str, float]:
    """A teacher name as (name, guidance strength), ``@w=`` parsed, 0 without it."""
    from .teachers import split_guidance

    base, w = split_guidance(teacher)
    return base, w or 0.0


def training_cost(method: str) -> tuple[float | None, float | None]:
    """(train_seconds, train_teacher_nfe) of a bench method: the student's recorded cost,
    (None, None) for an external student (not known), (0, 0) for training-free methods."""
    if not method.startswith("student:"):
        return 0.0, 0.0
    cost = info(_path(method))["cost"]
    return (None, None) if cost is None else (float(cost["seconds"]),
                                              float(cost["teacher_nfe"]))


def label(method: str) -> str:
    """A short name that tells students apart in tables: ``zoo/cd`` (a zoo student, on its
    own teacher's rows), the run directory's name (``moons-cd``; ``moons-pd/step_00000400`` for
    an intermediate checkpoint) or ``py:ATTR``; early-stopped rows by
    :func:`fewstep.bench.early_stopped.label`; other methods unchanged."""
    if method.startswith("early_stop:"):
        from .early_stopped import label as es_label

        return es_label(method)
    if not method.startswith("student:"):
        return method
    source = _path(method)
    if source.startswith("zoo:"):
        from .. import zoo
        from .teachers import split_guidance

        base, w = split_guidance(source.removeprefix("zoo:"))[0], guidance(method)
        r, root = zoo.RECIPES.get(base), base
        while root in zoo.RECIPES and zoo.RECIPES[root].teacher is not None:
            root = str(zoo.RECIPES[root].teacher)
        if r is None:
            return source
        # the name past the root teacher's data set ("cd", "guided-pd4"), and the guidance
        short = base.removeprefix(root.removesuffix("-edm") + "-")
        return f"zoo/{short}" + ("" if w is None else f"@w={w:g}")
    if source.startswith("python:"):
        return f"py:{source.rsplit(':', 1)[-1]}"
    parts = [p for p in source.rstrip("/").split("/") if p] or [source]
    name = "/".join(parts[-3::2]) if parts[-1].startswith("step_") and len(parts) >= 3 \
        else parts[-1]
    w = guidance(method)
    return name if w is None else f"{name}@w={w:g}"


@functools.cache
def model(method: str) -> Any:
    """The student of a ``student:...`` entry (EMA weights, frozen; loaded once)."""
    source = _path(method)
    if source.startswith("zoo:"):
        from .. import zoo
        from .teachers import GuidedRows, num_classes, split_guidance

        base, w = split_guidance(source.removeprefix("zoo:"))[0], guidance(method)
        info(source)  # checks the guidance suffix
        K = num_classes(f"zoo:{base}")
        if not K:
            return zoo.load(base)
        r = zoo.recipe(base)
        takes_w = bool(r.backbone["kwargs"].get("w_embedding"))
        # an LCM's w is the CFG scale D_u + w (D_c - D_u) (fewstep.distill.lcm); the zoo
        # teacher's @w=W is Meng et al.'s (1 + W) D_c - W D_u: the LCM is given 1 + W
        scale = (w or 0.0) + (1.0 if sampler(r.method) == "lcm" else 0.0)
        return GuidedRows(zoo.load(base), K, scale, takes_w=takes_w)
    if source.startswith("python:"):
        from .teachers import import_attr, is_factory

        obj = import_attr(source.removeprefix("python:"))
        obj = obj() if is_factory(obj) else obj
        if not callable(obj):
            raise ValueError(f"{method}: a {type(obj).__name__}, not a consistency function "
                             "f(x, sigma, **cond)")
        return obj
    from ..train import load_checkpoint

    return load_checkpoint(source)


def _check_start(method: str, name: str, sigmas: Tensor, sigma_max: float) -> None:
    """A student on its own grid starts where it was trained: the teacher's sigma_max."""
    if not math.isclose(float(sigmas[0]), sigma_max, rel_tol=1e-6):
        raise ValueError(f"{method}: the {name.upper()} student was trained from sigma_max="
                         f"{float(sigmas[0]):g}, the teacher starts at {sigma_max:g}")


def run_student(method: str, D: Any, x: Tensor, nfe: int, sigma_max: float, seed: int,
                schedule: str = "karras") -> tuple[Tensor, int]:
    """Sample the student ``D`` (its model, possibly wrapped); returns (samples, steps)."""
    name = check(method)
    kind = sampler(name)
    if kind == "one_step":
        return solvers.get("ddim")(D, x, torch.tensor([sigma_max, 0.0])), 1
    if kind == "gan":
        gan = gan_method(method)
        return gan.sample(D, x / sigma_max, solvers.sample_generators(seed, x.shape[0],
                                                                     x.device)), gan.T
    if kind == "ddim":
        p = solvers.plan("ddim", nfe, schedule, sigma_max=sigma_max)
        return solvers.get("ddim")(D, x, p.sigmas), p.steps
    if kind == "own_grid":
        k, sigmas = own_grid(method)
        _check_start(method, name, sigmas, sigma_max)
        return solvers.get("ddim")(D, x, sigmas), k
    if kind == "own_levels":
        sigmas = gan_method(method).sampling_sigmas(nfe)
        _check_start(method, name, sigmas, sigma_max)
        gens = solvers.sample_generators(seed, x.shape[0], x.device)
        return solvers.get("consistency")(D, x, sigmas, sigma_min=0.0, generator=gens), nfe
    p = solvers.plan("consistency", nfe, schedule, sigma_min=min(RENOISE_SIGMA_MIN, sigma_max),
                     sigma_max=sigma_max)
    gens = solvers.sample_generators(seed, x.shape[0], x.device)
    cond: dict[str, Tensor] = {}
    if kind == "lcm":
        cond["w"] = torch.full((x.shape[0],), float(guidance(method) or 0.0), device=x.device)
        if k := _num_classes(model(method)):
            cond["cond"] = class_labels(seed, x.shape[0], k).to(x.device)
    return solvers.get("consistency")(D, x, p.sigmas, cond=cond, generator=gens), p.steps
