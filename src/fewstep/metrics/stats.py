"""Summaries of repeated measurements (seeds, runs) with confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
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
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std / math.sqrt(n)
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
