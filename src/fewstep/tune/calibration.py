"""Calibration and validation sets: start noises with their tight reference PF-ODE endpoints.

Both sets are bench-style start samples ``sigma_max * z`` of reserved seeds (never a bench
seed), so their references are the bench's own (:func:`fewstep.bench.runner.reference`: RK45
in float64, cached on disk) and the two sets are disjoint draws.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..bench.runner import reference, start_noise
from ..bench.teachers import Teacher
from ..bench.teachers import get as get_teacher

__all__ = ["CALIBRATION_SEED", "Calibration", "CountingDenoiser", "calibrate", "seeds"]

CALIBRATION_SEED = 1_000_000  # tuning seeds start here; bench suites use small seeds


def seeds(seed: int) -> tuple[int, int]:
    """The reserved (calibration, validation) start-noise seeds of tuning run ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative; got {seed}")
    return CALIBRATION_SEED + 2 * seed, CALIBRATION_SEED + 2 * seed + 1


class _Shared:
    """A counter that survives ``copy.deepcopy`` (the bench copies the teacher it solves)."""

    def __init__(self) -> None:
        self.rows = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class CountingDenoiser(nn.Module):
    """Wraps a denoiser and counts the rows it evaluates (teacher NFE summed over samples)."""

    def __init__(self, inner: Any, counter: _Shared | None = None):
        super().__init__()
        self.inner = inner
        self.counter = counter or _Shared()

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        self.counter.rows += x.shape[0]
        out: Tensor = self.inner(x, sigma, **cond)
        return out


@dataclass(frozen=True)
class Calibration:
    """Start samples ``x`` (N, ...) at ``sigma_max`` and their reference endpoints ``ref``
    (float64), for fitting (``x_cal``) and for validation (``x_val``); ``teacher_rows`` is the
    teacher's evaluations spent on the references (0 when they came from the cache)."""

    teacher: Teacher
    x_cal: Tensor
    ref_cal: Tensor
    x_val: Tensor
    ref_val: Tensor
    seeds: tuple[int, int]
    rtol: float
    teacher_rows: int

    @property
    def denoiser(self) -> Any:
        """The teacher in float64 (a copy), as tuning evaluates it."""
        D = copy.deepcopy(self.teacher.denoiser)
        return D.double() if isinstance(D, nn.Module) else D


def calibrate(teacher: Teacher | str, n_cal: int = 128, n_val: int = 128, *, seed: int = 0,
              rtol: float = 1e-6, cache: str | Path = ".fewstep-cache/references"
              ) -> Calibration:
    """Start noises of the reserved seeds :func:`seeds` and their reference endpoints (RK45
    at ``rtol``, cached in ``cache`` as the bench caches its own). Raises ``ValueError`` on a
    non-positive set size."""
    if isinstance(teacher, str):
        teacher = get_teacher(teacher)
    for name, n in (("n_cal", n_cal), ("n_val", n_val)):
        if int(n) != n or n < 1:
            raise ValueError(f"{name} must be a positive integer; got {n!r}")
    s_cal, s_val = seeds(seed)
    counted = CountingDenoiser(teacher.denoiser)
    counting = Teacher(teacher.name, counted, teacher.sample_shape, teacher.sigma_min,
                       teacher.sigma_max, None)
    refs = [reference(counting, s, n, rtol, Path(cache)) for s, n in ((s_cal, n_cal),
                                                                      (s_val, n_val))]
    return Calibration(teacher, start_noise(teacher, s_cal, n_cal), refs[0],
                       start_noise(teacher, s_val, n_val), refs[1], (s_cal, s_val), rtol,
                       counted.counter.rows)
