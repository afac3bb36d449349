"""Sanity baselines: trivial "samplers" every teacher is scored against (``baseline:NAME``).

A method that is not significantly better than a *trivial* baseline on a metric (paired over
seeds) is flagged in the report and never named best there; baselines themselves are never
best. The data statistics they need come from the teacher's own reference samples: the tight
PF-ODE endpoints of the same start noise that the runner has already computed (cached), so
nothing is recomputed and no held-out (scoring) data is used.

- ``baseline:noise``: the start noise mapped to data scale, ``mu + s * x / sigma_max`` (the
  per-coordinate mean and std of the reference samples): a moment-matched Gaussian, what
  unsampled start noise looks like after the best possible affine rescaling;
- ``baseline:mean``: every sample is the reference samples' mean (what one Euler/DDIM step
  from sigma_max returns);
- ``baseline:reference``: the reference endpoints themselves (the teacher solved to
  tolerance). Not trivial: it is the ceiling a solver approaches, shown for scale.

Baselines spend no denoiser evaluations and run once per (teacher, seed) at ``nfe = 0``;
the report compares them with every NFE budget of their teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .._registry import Registry

__all__ = ["BASELINES", "Baseline", "available", "get", "is_baseline", "run_baseline"]

PREFIX = "baseline:"


@dataclass(frozen=True)
class Baseline:
    """A baseline method: ``fn(x, ref, sigma_max) -> samples`` shaped like ``x``.

    ``trivial``: whether a method no better than it is flagged as an artefact.
    """

    name: str
    fn: Callable[[Tensor, Tensor, float], Tensor]
    trivial: bool
    doc: str


def _noise(x: Tensor, ref: Tensor, sigma_max: float) -> Tensor:
    mu, s = ref.mean(0), ref.std(0)
    return (mu + s * x.double() / sigma_max).to(x.dtype)


def _mean(x: Tensor, ref: Tensor, sigma_max: float) -> Tensor:
    return ref.mean(0).expand_as(x).to(x.dtype).clone()


def _reference(x: Tensor, ref: Tensor, sigma_max: float) -> Tensor:
    if len(ref) < len(x):
        raise ValueError(f"baseline:reference needs {len(x)} reference samples; got {len(ref)}")
    return ref[: len(x)].to(x.dtype)


BASELINES: Registry[Baseline] = Registry("baseline", {b.name: b for b in (
    Baseline("baseline:noise", _noise, True,
             "start noise x / sigma_max mapped to the data's per-coordinate mean and std"),
    Baseline("baseline:mean", _mean, True, "every sample is the data mean"),
    Baseline("baseline:reference", _reference, False,
             "the teacher's tight-tolerance PF-ODE endpoints (the runner's reference)"),
)})


def available() -> list[str]:
    """Baseline method names."""
    return list(BASELINES)


def is_baseline(method: str) -> bool:
    """Whether ``method`` names a baseline (``baseline:...``)."""
    return method.startswith(PREFIX)


def get(method: str) -> Baseline:
    """The baseline called ``method``; raises :class:`~fewstep._registry.UnknownNameError` (a
    ValueError) listing the known ones."""
    return BASELINES[method]


def run_baseline(method: str, x: Tensor, ref: Tensor, sigma_max: float) -> Tensor:
    """Samples of baseline ``method`` for start noise ``x`` (N, ...) at ``sigma_max``, given
    the reference endpoints ``ref`` (N', ...) of the same teacher and seed."""
    ref = ref.to(x.device, dtype=ref.dtype)
    return get(method).fn(x, ref.reshape(len(ref), *x.shape[1:]), sigma_max)
