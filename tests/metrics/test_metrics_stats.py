"""Hand-computed checks for fewstep.metrics.stats."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import torch

from fewstep.metrics import Summary, holm, mean_ci, paired_p, range_ci, registry

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


# ---------------------------------------------------------------- range-respecting intervals



@pytest.mark.parametrize("metric", registry.available())
@pytest.mark.parametrize("spread", ["tight", "wide", "on_boundary"])
def test_range_ci_stays_in_every_registered_range(metric, spread):
    spec = registry.get(metric)
    lo = spec.lo if math.isfinite(spec.lo) else -10.0
    hi = spec.hi if math.isfinite(spec.hi) else lo + 10.0
    span = hi - lo
    values = {"tight": [lo + 0.5 * span, lo + 0.51 * span, lo + 0.49 * span],
              "wide": [lo + 0.001 * span, lo + 0.9 * span, lo + 0.01 * span],
              "on_boundary": [hi, hi, lo + 0.2 * span] if spec.higher_is_better
              else [lo, lo + 0.3 * span, lo + 0.01 * span]}[spread]
    s = range_ci(values, spec.lo, spec.hi)
    assert spec.lo <= s.lo <= s.mean <= s.hi <= spec.hi
    if spec.positive and min(values) > 0:
        assert s.lo > 0  # strictly: a log axis can draw it


def test_range_ci_log_scale_hand_computed():
    s = range_ci([0.01, 0.5, 0.02, 0.9, 0.03], 0.0, math.inf)
    logs = np.log([0.01, 0.5, 0.02, 0.9, 0.03])
    half = T_975_DF4 * logs.std(ddof=1) / math.sqrt(5)
    assert s.mean == pytest.approx(math.exp(logs.mean()))
    assert (s.lo, s.hi) == pytest.approx((math.exp(logs.mean() - half),
                                          math.exp(logs.mean() + half)))
    assert mean_ci([0.01, 0.5, 0.02, 0.9, 0.03]).lo < 0  # the fault this replaces


def test_range_ci_clips_and_passes_through():
    frac = range_ci([1.0, 1.0, 0.6], 0.0, 1.0)
    t = mean_ci([1.0, 1.0, 0.6])
    assert frac.hi == 1.0 < t.hi and frac.lo == pytest.approx(t.lo)
    assert range_ci([-1.0, 0.5, 2.0]) == mean_ci([-1.0, 0.5, 2.0])  # unbounded: plain t
    with_zero = range_ci([0.0, 0.2, 0.4], 0.0, math.inf)  # no log of 0: clipped t
    assert with_zero.lo == 0.0 and with_zero.mean == pytest.approx(0.2)
    one = range_ci([0.3], 0.0, math.inf)
    assert one.n == 1 and math.isnan(one.lo)


def test_paired_p_separates_a_known_difference_from_noise():
    rng = np.random.default_rng(0)
    seed_effect = rng.uniform(0.1, 1.0, 5)
    assert paired_p(seed_effect * 1.1, seed_effect, log=True) < 1e-6  # exact ratio: p = 0
    worse = seed_effect + 0.05 + rng.normal(0, 0.005, 5)
    assert paired_p(worse, seed_effect) < 0.01
    assert paired_p(seed_effect, worse) > 0.99  # one-sided
    noisy = seed_effect * (1 + rng.normal(0, 0.02, 5))
    assert 0.05 < paired_p(noisy, seed_effect, log=True) < 0.95


def test_paired_p_hand_computed_and_edge_cases():
    d = np.array([0.1, 0.3, 0.2])  # mean 0.2, sd 0.1: t = 0.2 / (0.1 / sqrt 3)
    t = 0.2 / (0.1 / math.sqrt(3))
    assert paired_p(d + 1.0, np.ones(3)) == pytest.approx(scipy.stats.t.sf(t, 2))
    assert paired_p([1.0], [0.0]) == 1.0  # one pair: nothing can be rejected
    assert paired_p([1.0, 2.0], [1.0, 2.0]) == 1.0  # identical
    with pytest.raises(ValueError, match="differ in length"):
        paired_p([1.0, 2.0], [1.0])


def test_holm_hand_example():
    # sorted: 0.01 <= 0.05/4, 0.015 <= 0.05/3, 0.03 > 0.05/2 -> stop
    assert holm([0.03, 0.01, 0.5, 0.015]) == [False, True, False, True]
    assert holm([]) == []
    assert holm([0.04]) == [True]
