"""Summaries of repeated measurements (seeds, runs) with confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.special
import torch


@dataclass(frozen=True)
class Summary:
    """Sample mean, two-sided confidence bounds, sample count and sample std (ddof=1)."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float


def mean_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor, confidence: float = 0.95
) -> Summary:
    """Student-t interval mean ± t_{(1+c)/2, n-1} s / sqrt(n) (Student 1908).

    With n = 1 the std and interval are undefined: std, lo and hi are NaN and mean is the
    single value. Raises ValueError for empty or non-finite input or confidence outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = _as_array(values)
    n, mean = x.size, float(x.mean())
    if n == 1:
        return Summary(mean=mean, lo=math.nan, hi=math.nan, n=1, std=math.nan)
    std = float(x.std(ddof=1))
    half = float(scipy.special.stdtrit(n - 1, (1 + confidence) / 2)) * std / math.sqrt(n)
    return Summary(mean=mean, lo=mean - half, hi=mean + half, n=n, std=std)


def _as_array(values: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Flat float64 array of values; rejects empty and NaN/inf input."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("values is empty; need at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"values contains non-finite entries: {x[~np.isfinite(x)].tolist()}")
    return x


def range_ci(values: Sequence[float] | np.ndarray | torch.Tensor, lo: float = -math.inf,
             hi: float = math.inf, confidence: float = 0.95) -> Summary:
    """A confidence interval that never leaves the metric's range [lo, hi].

    - range [0, inf) and every value > 0: Student-t interval of the mean of log values,
      mapped back, so ``mean`` is the geometric mean and ``lo > 0`` (the usual log-normal
      interval; Limpert, Stahel & Abbt 2001, BioScience 51(5));
    - otherwise (a bounded range, or a value on the boundary such as a fraction of exactly
      1): the Student-t interval of the arithmetic mean, clipped to [lo, hi].

    ``std`` is always the raw sample std (ddof=1). With n = 1, lo = hi = std = NaN.
    Raises ValueError for empty or non-finite input or confidence outside (0, 1).
    """
    x = _as_array(values)
    if lo == 0.0 and math.isinf(hi) and hi > 0 and bool((x > 0).all()):
        s = mean_ci(np.log(x), confidence)
        std = float(x.std(ddof=1)) if x.size > 1 else math.nan
        return Summary(mean=math.exp(s.mean), lo=math.exp(s.lo), hi=math.exp(s.hi), n=s.n,
                       std=std)
    s = mean_ci(x, confidence)
    if s.n == 1:
        return s
    return Summary(mean=s.mean, lo=min(max(s.lo, lo), hi), hi=max(min(s.hi, hi), lo), n=s.n,
                   std=s.std)


def paired_p(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
             log: bool = False) -> float:
    """One-sided p-value of a paired Student-t test that ``x`` exceeds ``y`` on average.

    ``x[i]`` and ``y[i]`` share a seed (the same start noise), so the test is on the
    differences ``d_i = x_i - y_i`` (``log x_i - log y_i`` when ``log`` and every value is
    positive): H0 mean(d) <= 0, H1 mean(d) > 0, t = mean(d) / (s_d / sqrt(n)) with n - 1
    degrees of freedom (Student 1908; e.g. Wasserman, *All of Statistics*, 2004, sec. 10.1).
    With fewer than 2 pairs nothing can be rejected (p = 1). When every difference is equal
    the test is exact: p = 0 if they are positive, else 1.
    Raises ValueError if the arrays differ in length or hold non-finite values.
    """
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired samples contain non-finite values")
    if log and bool((a > 0).all() and (b > 0).all()):
        a, b = np.log(a), np.log(b)
    d = a - b
    n = d.size
    if n < 2:
        return 1.0
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 0.0 if mean > 0 else 1.0
    return float(scipy.special.stdtr(n - 1, -mean / (sd / math.sqrt(n))))  # P(T > t)


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses the Holm step-down procedure rejects at family-wise level ``alpha``.

    Sort p ascending; reject p_(k) while p_(k) <= alpha / (m - k) (k = 0..m-1), stop at the
    first failure (Holm 1979, Scand. J. Statist. 6(2)). Returns one bool per input, in order.
    """
    m = len(pvalues)
    reject = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        if pvalues[i] > alpha / (m - k):
            break
        reject[i] = True
    return reject
