"""Consistency-model sampling (Song et al. 2023, Alg. 1).

The "denoiser" is a consistency function ``f(x, sigma)``: it maps any point of a PF-ODE
trajectory straight to the trajectory's end at ``sigma_min``. One step is ``x0 = f(x, sigma_0)``;
every further step re-noises the estimate, ``x = x0 + sqrt(sigma_i^2 - sigma_min^2) z``, and
evaluates again.

Sigma convention (the same as every other solver): ``sigmas`` of length ``n + 1`` cost ``n``
evaluations and map a sample at ``sigmas[0]`` to a sample at ``sigmas[-1]``. Step ``i``
evaluates ``f`` at ``sigmas[i]`` and re-noises the estimate to ``sigmas[i + 1]``; a target at
or below ``sigma_min`` (the trailing 0 of every schedule) returns the clean estimate itself.
So ``plan("consistency", k)`` evaluates at the first ``k`` schedule values. The Karras
schedule's last value is the schedule's ``sigma_min`` where ``f`` is the identity, so for a
useful multistep plan pass a larger floor, e.g. ``plan("consistency", 2, sigma_min=0.8)``
(Song et al. 2023 tune the intermediate levels; ~0.5-2 for data in [-1, 1]).
"""

from __future__ import annotations

import math

from torch import Tensor

from .common import Callback, Generator, emit, prepare, randn_like
from .driver import SolverFunction, Steps
from .registry import register

__all__ = ["consistency_steps", "renoise_scale", "sample_consistency"]


def renoise_scale(sigma: float, sigma_min: float) -> float:
    """Noise std that lifts a clean estimate (which sits at sigma_min) to ``sigma``:
    ``sqrt(sigma^2 - sigma_min^2)`` (Song et al. 2023, Alg. 1, line 5); 0 at or below sigma_min."""
    return math.sqrt(sigma**2 - sigma_min**2) if sigma > sigma_min else 0.0


def consistency_steps(x: Tensor, sigmas: Tensor, *, sigma_min: float = 0.002,
                      generator: Generator = None, callback: Callback = None) -> Steps:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): ``x0 = f(x, sigma_i)``, then
    ``x = x0 + sqrt(sigma_{i+1}^2 - sigma_min^2) z``; one evaluation per step."""
    if sigma_min < 0:
        raise ValueError(f"sigma_min must be >= 0; got {sigma_min}")
    s = prepare(x, sigmas)
    for i in range(len(s) - 1):
        x0 = yield x, s[i]  # f(x, sigma_i): jump to the trajectory's end (line 1 / line 6)
        scale = renoise_scale(s[i + 1], sigma_min)
        x = x0 + scale * randn_like(x0, generator) if scale > 0 else x0  # re-noise (line 5)
        emit(callback, i, x, s[i], s[i + 1], x0)
    return x


sample_consistency = SolverFunction(consistency_steps, "sample_consistency")

register("consistency", sample_consistency, order=1, stochastic=True,
         reference="Song et al. 2023, Alg. 1 (multistep consistency sampling)",
         requires="consistency")
