"""Trained students as bench methods: ``student:PATH`` (a training run directory or checkpoint
written by :func:`fewstep.train.train`), sampled on the case's teacher's sigma range and start
noise with the sampler its method calls for.

- consistency students (cd, ct, ect, direct_cm): the ``consistency`` sampler, re-noising down
  to ``RENOISE_SIGMA_MIN`` (the plan's own sigma_min would waste an evaluation, since
  f(x, sigma_min) = x);
- knowledge-distilled students (kd): one step, ``x0 = D(sigma_max z, sigma_max)``.

Progressive-distillation students are sampled on their own training grid, which a suite's NFE
plan does not reproduce; the benchmark scripts compare them instead.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .. import solvers

__all__ = ["CONSISTENCY_METHODS", "RENOISE_SIGMA_MIN", "check", "model", "run_student",
           "unreachable"]

CONSISTENCY_METHODS = ("cd", "ct", "ect", "direct_cm")
ONE_STEP_METHODS = ("kd",)
RENOISE_SIGMA_MIN = 0.821  # Song et al. 2023's two-step re-noise level


def _path(method: str) -> str:
    return method.removeprefix("student:")


@functools.cache
def _method_name(path: str) -> str:
    from ..train import checkpoint_info

    method = checkpoint_info(path).get("method", {})
    return method.get("name") if isinstance(method, dict) else str(method)


def check(method: str) -> str:
    """The training method of a ``student:PATH`` entry, or a clear error."""
    try:
        name = _method_name(_path(method))
    except FileNotFoundError:
        raise ValueError(f"{method!r}: no checkpoint at {_path(method)!r}") from None
    if name not in CONSISTENCY_METHODS + ONE_STEP_METHODS:
        raise ValueError(f"{method!r} was trained with {name!r}; the bench samples students of "
                         f"{', '.join(CONSISTENCY_METHODS + ONE_STEP_METHODS)}")
    return name


def unreachable(method: str, nfe: int) -> str | None:
    """Why ``method`` cannot spend ``nfe`` evaluations, or None."""
    if check(method) in ONE_STEP_METHODS and nfe != 1:
        return f"{method} at NFE {nfe}: a one-step (KD) student"
    return None


@functools.cache
def model(method: str) -> Any:
    """The student of a ``student:PATH`` entry (EMA weights, frozen; loaded once)."""
    from ..train import load_checkpoint

    return load_checkpoint(_path(method))


def run_student(method: str, D: Any, x: Tensor, nfe: int, sigma_max: float, seed: int,
                schedule: str = "karras") -> tuple[Tensor, int]:
    """Sample the student ``D`` (its model, possibly wrapped); returns (samples, steps)."""
    if check(method) in ONE_STEP_METHODS:
        return solvers.get("ddim")(D, x, torch.tensor([sigma_max, 0.0])), 1
    p = solvers.plan("consistency", nfe, schedule, sigma_min=min(RENOISE_SIGMA_MIN, sigma_max),
                     sigma_max=sigma_max)
    gens = solvers.sample_generators(seed, x.shape[0], x.device)
    return solvers.get("consistency")(D, x, p.sigmas, generator=gens), p.steps
