"""Trained students as bench methods: ``student:PATH`` (a training run directory or checkpoint
written by :func:`fewstep.train.train`), sampled on the case's teacher's sigma range and start
noise with the sampler its method calls for.

- consistency students (cd, ct, ect, direct_cm): the ``consistency`` sampler, re-noising down
  to ``RENOISE_SIGMA_MIN`` (the plan's own sigma_min would waste an evaluation, since
  f(x, sigma_min) = x);
- knowledge-distilled students (kd): one step, ``x0 = D(sigma_max z, sigma_max)``;
- progressive-distillation students (pd): DDIM on their own training grid
  ``method.sigmas(k)``, only at NFE ``k``, the step count of the checkpoint's round (point at
  an intermediate ``checkpoints/step_*`` directory for the earlier, longer students).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .. import solvers

__all__ = ["CONSISTENCY_METHODS", "RENOISE_SIGMA_MIN", "check", "model", "run_student",
           "unreachable"]

CONSISTENCY_METHODS = ("cd", "ct", "ect", "direct_cm")
ONE_STEP_METHODS = ("kd", "rf_distill")
OWN_GRID_METHODS = ("pd",)
METHODS = CONSISTENCY_METHODS + ONE_STEP_METHODS + OWN_GRID_METHODS
RENOISE_SIGMA_MIN = 0.821  # Song et al. 2023's two-step re-noise level


def _path(method: str) -> str:
    return method.removeprefix("student:")


@functools.cache
def method_name(path: str) -> str:
    """The training method recorded in the checkpoint (or run directory) at ``path``."""
    from ..train import checkpoint_info

    method = checkpoint_info(path).get("method", {})
    return method.get("name") if isinstance(method, dict) else str(method)


@functools.cache
def own_grid(method: str) -> tuple[int, Tensor]:
    """A PD student's step count ``k`` and its sampling grid ``method.sigmas(k)``."""
    from ..distill import get_method
    from ..train import checkpoint_info

    info = checkpoint_info(_path(method))
    pd = get_method("pd")(**info["method"]["params"])
    k = pd.student_steps(pd.round_at(max(info["step"] - 1, 0)))
    return k, pd.sigmas(k)


def check(method: str) -> str:
    """The training method of a ``student:PATH`` entry, or a clear error."""
    try:
        name = method_name(_path(method))
    except FileNotFoundError:
        raise ValueError(f"{method!r}: no checkpoint at {_path(method)!r}") from None
    if name not in METHODS:
        raise ValueError(f"{method!r} was trained with {name!r}; the bench samples students of "
                         f"{', '.join(METHODS)}")
    return name


def unreachable(method: str, nfe: int) -> str | None:
    """Why ``method`` cannot spend ``nfe`` evaluations, or None."""
    name = check(method)
    if name in ONE_STEP_METHODS and nfe != 1:
        return f"{method} at NFE {nfe}: a one-step ({name.upper()}) student"
    if name in OWN_GRID_METHODS and nfe != own_grid(method)[0]:
        return f"{method} at NFE {nfe}: a {own_grid(method)[0]}-step PD student (its own grid)"
    return None


@functools.cache
def model(method: str) -> Any:
    """The student of a ``student:PATH`` entry (EMA weights, frozen; loaded once)."""
    from ..train import load_checkpoint

    return load_checkpoint(_path(method))


def run_student(method: str, D: Any, x: Tensor, nfe: int, sigma_max: float, seed: int,
                schedule: str = "karras") -> tuple[Tensor, int]:
    """Sample the student ``D`` (its model, possibly wrapped); returns (samples, steps)."""
    name = check(method)
    if name in ONE_STEP_METHODS:
        return solvers.get("ddim")(D, x, torch.tensor([sigma_max, 0.0])), 1
    if name in OWN_GRID_METHODS:
        k, sigmas = own_grid(method)
        if not math.isclose(float(sigmas[0]), sigma_max, rel_tol=1e-6):
            raise ValueError(f"{method}: the PD student was trained from sigma_max="
                             f"{float(sigmas[0]):g}, the teacher starts at {sigma_max:g}")
        return solvers.get("ddim")(D, x, sigmas), k
    p = solvers.plan("consistency", nfe, schedule, sigma_min=min(RENOISE_SIGMA_MIN, sigma_max),
                     sigma_max=sigma_max)
    gens = solvers.sample_generators(seed, x.shape[0], x.device)
    return solvers.get("consistency")(D, x, p.sigmas, generator=gens), p.steps
