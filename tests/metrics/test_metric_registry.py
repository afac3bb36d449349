"""The metric registry: one entry per metric the bench produces, each consistent."""

import math

import pytest

from fewstep.metrics import registry

BENCH_METRICS = {"ode_rmse", "sw", "mmd", "nll", "mode_coverage", "high_quality", "fd", "kid",
                 "fid_inception", "kid_inception", "energy", "precision", "recall", "density",
                 "coverage"}


def test_every_bench_metric_is_registered():
    assert set(registry.available()) >= BENCH_METRICS


@pytest.mark.parametrize("metric", registry.available())
def test_spec_is_consistent(metric):
    s = registry.get(metric)
    assert s.name == metric and s.lo < s.hi and s.unit and s.feature_space and s.doc
    if s.floor is not None:
        assert s.lo <= s.floor <= s.hi
    assert s.sign == (-1.0 if s.higher_is_better else 1.0)


def test_directions_of_the_reported_faults():
    assert registry.get("high_quality").higher_is_better
    assert registry.get("mode_coverage").higher_is_better
    assert not registry.get("ode_rmse").higher_is_better
    assert registry.get("high_quality").better(0.9, 0.1)
    assert registry.get("sw").better(0.1, 0.9)
    assert registry.get("sw").positive and not registry.get("nll").positive
    assert (registry.get("kid").lo, registry.get("kid").hi) == (0.0, math.inf)


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; available: .*ode_rmse"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("sw", higher_is_better=False, lo=0.0, hi=1.0, floor=None, unit="u",
                          feature_space="f", doc="d")
