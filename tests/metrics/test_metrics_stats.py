"""Hand-computed checks for fewstep.metrics.stats."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fewstep.metrics import Summary, mean_ci

T_975_DF4 = 2.7764451051977987  # Student t quantile, 0.975, 4 dof (table value)
T_975_DF1 = 12.706204736174696  # Student t quantile, 0.975, 1 dof


def test_mean_ci_matches_hand_computed_t_interval():
    s = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert s.lo == pytest.approx(3.0 - half, rel=1e-12)
    assert s.hi == pytest.approx(3.0 + half, rel=1e-12)


def test_mean_ci_two_values():
    s = mean_ci(np.array([0.0, 2.0]))
    assert (s.lo, s.hi) == pytest.approx((1.0 - T_975_DF1, 1.0 + T_975_DF1), rel=1e-12)


def test_mean_ci_narrows_with_lower_confidence_and_accepts_tensors():
    values = torch.tensor([0.3, 0.1, 0.4, 0.15, 0.9])
    wide, narrow = mean_ci(values, 0.99), mean_ci(values, 0.8)
    assert wide.lo < narrow.lo < narrow.mean < narrow.hi < wide.hi


def test_mean_ci_single_value_has_nan_bounds():
    s = mean_ci([4.2])
    assert s.mean == 4.2
    assert s.n == 1
    assert math.isnan(s.lo)
    assert math.isnan(s.hi)
    assert math.isnan(s.std)


def test_summary_is_frozen():
    s = Summary(mean=0.0, lo=0.0, hi=0.0, n=2, std=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 1.0


def test_mean_ci_errors_name_bad_values():
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="nan"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"1\.5"):
        mean_ci([1.0, 2.0], confidence=1.5)
