"""Early-stopped diffusion (ES-DDPM, Lyu et al. 2022) as a bench method row:

    early_stop:SOLVER:PRIOR@sigma_s=S

A prior sample is noised to ``sigma_s = S`` with the case's start noise (``x_s = x_prior +
S z``, the ``z`` of ``x = sigma_max z`` that every method of the case shares) and the teacher
runs the registered fixed-grid ``SOLVER`` (``ddim``, ``heun``, ``dpmpp_2m``, ...) from ``S`` to
0 with the case's NFE on the case's schedule (:func:`fewstep.early_stop.sample_early_stopped`).
NFE counts teacher evaluations only. ``PRIOR`` is one of

- ``gaussian``: a Gaussian fit (mean, full covariance) of the teacher's train split; no network
  pass, no one-off cost;
- ``zoo:NAME``: a zoo autoencoder (e.g. ``zoo:digits-vae``), its decoder on a Gaussian fit of
  the encoded train split (the paper's VAE prior); 1 decoder pass per sample; one-off cost: its
  recorded training seconds (no teacher evaluations);
- ``student:...``: any one-step student entry of :mod:`fewstep.bench.students` (``kd``,
  ``rf_distill``, ``ufogen``, ``dfno``; ``student:zoo:NAME`` or ``student:PATH``), ``x0 =
  G(sigma_max z', sigma_max)`` on its own latent ``z'`` (the paper's GAN prior); 1 generator
  pass per sample; one-off cost: the student's training seconds and teacher evaluations.

``S`` is a number with ``sigma_min < S <= sigma_max`` of the teacher (the prior alone, ``S =
0``, spends no teacher evaluation: it is the sweep's row in ``benchmarks/results/early_stop.md``,
or a one-step student's own ``student:`` row). The prior's latents are drawn from the case's
seed, so the row is deterministic. The prior's network passes run inside the row's wall-clock
(not its NFE) and are named in its notes; its one-off cost is the row's ``train_seconds`` /
``train_teacher_nfe``, as for students. A row runs only on the teacher whose data its prior
learnt (a zoo student's own teacher; a prior of another data set is skipped with the reason);
a latent or class-conditional teacher is skipped (the prior lives in data space, unconditional).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .. import solvers
from ..early_stop import DecodedPrior, GaussianPrior, OneStepPrior, sample_early_stopped
from . import students

__all__ = ["PREFIX", "check", "label", "notes", "parse", "prior", "run", "training_cost",
           "unreachable", "wrong_teacher"]

PREFIX = "early_stop:"
PRIOR_SEED = 7_919  # prior latents of seed s: torch.Generator().manual_seed(PRIOR_SEED + s)
GRAMMAR = "early_stop:SOLVER:PRIOR@sigma_s=S (PRIOR: gaussian, zoo:AUTOENCODER or student:...)"


def parse(method: str) -> tuple[str, str, float]:
    """``early_stop:SOLVER:PRIOR@sigma_s=S`` -> ``(SOLVER, PRIOR, S)``; ValueError naming a
    malformed entry, an unknown or unsuitable solver, or an ``S`` that is not a finite
    number > 0."""
    body, sep, value = method.removeprefix(PREFIX).rpartition("@sigma_s=")
    solver, colon, prior_name = body.partition(":")
    if not method.startswith(PREFIX) or not sep or not colon or not solver or not prior_name:
        raise ValueError(f"{method!r}: an early-stopped method reads {GRAMMAR}")
    try:
        sigma_s = float(value)
    except ValueError:
        raise ValueError(f"{method!r}: sigma_s must be a number; got {value!r}") from None
    if not (0 < sigma_s < math.inf):
        raise ValueError(f"{method!r}: sigma_s must be a finite number > 0 (a bench row "
                         f"spends teacher evaluations; the prior alone is not a row); got {value}")
    try:
        spec = solvers.get(solver)
    except ValueError as e:
        raise ValueError(f"{method!r}: {e}") from None
    if spec.tuned is not None or not spec.plannable:
        what = "tuned" if spec.tuned is not None else spec.kind
        raise ValueError(f"{method!r}: the solver from sigma_s must be a fixed-grid solver, not "
                         f"{'an' if what[0] in 'aeiou' else 'a'} {what} one ({solver})")
    return solver, prior_name, sigma_s


def check(method: str, sigma_max: float | None = None, sigma_min: float | None = None) -> None:
    """Parse ``method`` and check its prior (a known autoencoder, a one-step student) and, with
    a teacher's ``sigma_max`` and ``sigma_min``, that ``sigma_min < sigma_s <= sigma_max``;
    ValueError naming the bad part."""
    _, prior_name, sigma_s = parse(method)
    _prior_source(method, prior_name)
    if sigma_max is not None and sigma_s > sigma_max:
        raise ValueError(f"{method!r}: sigma_s={sigma_s:g} is above the teacher's sigma_max="
                         f"{sigma_max:g}")
    if sigma_min is not None and sigma_s <= sigma_min:
        raise ValueError(f"{method!r}: sigma_s={sigma_s:g} is not above the teacher's "
                         f"sigma_min={sigma_min:g}")


def _prior_source(method: str, prior_name: str) -> dict[str, Any]:
    """What the prior is: ``kind`` (gaussian, autoencoder, student), its data set and zoo
    teacher where known, and its one-off cost (seconds, teacher NFE per sample row)."""
    if prior_name == "gaussian":
        return {"kind": "gaussian", "data": None, "teacher": None, "cost": (0.0, 0.0),
                "passes": 0}
    if prior_name.startswith("zoo:"):
        from .. import zoo

        name = prior_name.removeprefix("zoo:")
        if name not in zoo.RECIPES or zoo.RECIPES[name].role != "autoencoder":
            known = [n for n, r in zoo.RECIPES.items() if r.role == "autoencoder"]
            raise ValueError(f"{method!r}: {prior_name} is not a zoo autoencoder; autoencoders: "
                             f"{', '.join(known)}")
        e = zoo.entry(name)
        return {"kind": "autoencoder", "data": e.recipe.data, "teacher": None,
                "cost": (float(e.cost.seconds), 0.0), "passes": 1}
    if prior_name.startswith("student:"):
        from ..distill import student_methods

        kind = students.check(prior_name)
        if students.sampler(kind) != "one_step":
            raise ValueError(f"{method!r}: the prior {prior_name} is a {kind} student; a prior "
                             f"is a one-step student ({', '.join(student_methods('one_step'))})")
        seconds, nfe = students.training_cost(prior_name)
        return {"kind": "student", "data": students.trained_on(prior_name),
                "teacher": students.info(students._path(prior_name))["teacher"],
                "cost": (seconds, nfe), "passes": 1}
    raise ValueError(f"{method!r}: unknown prior {prior_name!r}; {GRAMMAR}")


def _teacher_data(teacher: str) -> str | None:
    """The built-in data set whose train split ``teacher`` learnt (a zoo teacher's recipe, a
    built-in empirical teacher's own name), or None when fewstep does not know it."""
    from .. import data, zoo

    if teacher.startswith("zoo:"):
        r = zoo.RECIPES.get(teacher.removeprefix("zoo:"))
        return None if r is None else r.data
    return teacher if teacher in data.available() else None


def wrong_teacher(method: str, teacher: str) -> str | None:
    """Why ``method`` does not run on ``teacher`` (another data set than its prior's, another
    teacher than its student prior's, a latent or class-conditional teacher), or None."""
    from .. import zoo
    from .teachers import num_classes, split_guidance

    _, prior_name, _ = parse(method)
    src = _prior_source(method, prior_name)
    base, w = split_guidance(teacher)
    r = zoo.RECIPES.get(base.removeprefix("zoo:")) if base.startswith("zoo:") else None
    if w is not None or num_classes(teacher) or (r is not None and r.autoencoder is not None):
        return f"{method}: a data-space unconditional prior, not run on {teacher} " \
               "(latent or class-conditional)"
    if src["teacher"] is not None and src["teacher"] != teacher:
        return f"{method}: its prior is a student of {src['teacher']}, not run on {teacher}"
    own = _teacher_data(teacher)
    if src["kind"] == "gaussian" and own is None:
        return f"{method}: {teacher}'s train data is not known to fit a Gaussian prior on"
    if src["data"] is not None and src["data"] != own:
        return f"{method}: a prior of {src['data']}, not run on {teacher}"
    return None


def unreachable(method: str, nfe: int, teacher: str) -> str | None:
    """Why ``method`` does not run on ``teacher`` at ``nfe`` (:func:`wrong_teacher`, or a budget
    below the solver's minimum), or None."""
    if why := wrong_teacher(method, teacher):
        return why
    solver = parse(method)[0]
    if nfe < solvers.get(solver).min_nfe:
        return f"{method} at NFE {nfe}: below {solver}'s minimum of {solvers.get(solver).min_nfe}"
    return None


@functools.cache
def prior(prior_name: str, teacher_name: str) -> Any:
    """The prior ``prior_name`` for the teacher ``teacher_name`` (built once: the fits read the
    train split; a student is loaded). See the module docstring."""
    from .. import data
    from .teachers import get as get_teacher

    teacher = get_teacher(teacher_name)
    if prior_name.startswith("student:"):
        return OneStepPrior(students.model(prior_name), teacher.sample_shape, teacher.sigma_max)
    name = _teacher_data(teacher_name) if prior_name == "gaussian" else \
        _prior_source(prior_name, prior_name)["data"]
    assert name is not None  # unreachable() skipped the case otherwise
    ds = data.get(name)
    train = ds.load("train", n=None if getattr(ds, "finite", True) else 20_000)
    if prior_name == "gaussian":
        return GaussianPrior.fit(train)
    from ..latent import space

    latent = space(prior_name.removeprefix("zoo:"))
    return DecodedPrior(GaussianPrior.fit(latent.encode(train)), latent.decode)


def run(method: str, D: Any, x: Tensor, nfe: int, teacher: Any, seed: int,
        schedule: str = "karras") -> tuple[Tensor, int]:
    """ES-DDPM from the case's start noise ``x = sigma_max z``: the prior's samples (latents
    from ``seed``) noised with ``sigma_s z``, then ``SOLVER`` with ``nfe`` evaluations of
    ``D``; returns (samples, solver steps)."""
    solver, prior_name, sigma_s = parse(method)
    p = prior(prior_name, teacher.name)
    x0 = p.sample(x.shape[0], torch.Generator().manual_seed(PRIOR_SEED + seed))
    if tuple(x0.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"{method}: the prior's samples have shape {tuple(x0.shape[1:])}, the "
                         f"teacher's {tuple(x.shape[1:])}")
    gens = solvers.sample_generators(seed, x.shape[0], x.device)
    out = sample_early_stopped(D, x0.to(x), x / teacher.sigma_max, sigma_s, solver, nfe,
                               schedule=schedule, sigma_min=teacher.sigma_min,
                               sigma_max=teacher.sigma_max, generator=gens)
    return out, solvers.plan(solver, nfe, schedule, sigma_min=teacher.sigma_min,
                             sigma_max=sigma_s).steps


def training_cost(method: str) -> tuple[float | None, float | None]:
    """(train_seconds, train_teacher_nfe) of the row: its prior's one-off cost (0 for the
    Gaussian fit; an autoencoder's training seconds; a student's recorded cost, None when not
    known)."""
    _, prior_name, _ = parse(method)
    return _prior_source(method, prior_name)["cost"]


def notes(method: str) -> list[str]:
    """The row's note: the prior's network passes per sample and its one-off cost."""
    _, prior_name, sigma_s = parse(method)
    src = _prior_source(method, prior_name)
    seconds = src["cost"][0]
    cost = "not known" if seconds is None else f"{seconds:.1f} s"
    return [f"{method}: early-stopped from sigma_s={sigma_s:g}; the prior {prior_name} costs "
            f"{src['passes']} network pass(es) per sample (in the wall-clock, not in NFE) and "
            f"{cost} once (training)"]


def label(method: str) -> str:
    """A short table name, ``es/SOLVER/PRIOR@sigma_s=S`` with a student prior by its student
    label (``es/dpmpp_2m/zoo/kd@sigma_s=1``); a malformed entry unchanged."""
    body, sep, value = method.removeprefix(PREFIX).rpartition("@sigma_s=")
    body = body if sep else method.removeprefix(PREFIX)
    solver, _, prior_name = body.partition(":")
    short = students.label(prior_name) if prior_name.startswith("student:") else \
        prior_name.removeprefix("zoo:")
    return f"es/{solver}/{short}" + (f"@sigma_s={value}" if sep else "")
