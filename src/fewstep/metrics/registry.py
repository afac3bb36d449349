"""The one registry of bench metrics: direction, range, floor, unit and feature space.

Every ranking, interval, plot label and CLI table reads a metric's :class:`MetricSpec` from
here; nothing else guesses whether a metric is better lower or higher. ``lo``/``hi`` bound
the *quantity estimated* (an unbiased MMD² estimate may be slightly negative, the MMD² it
estimates is not), so intervals are clipped to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._registry import Registry

__all__ = ["METRICS", "MetricSpec", "available", "get", "register"]


@dataclass(frozen=True)
class MetricSpec:
    """What the report needs to know about one metric.

    ``lo``/``hi``: the range of the estimated quantity; ``floor``: its best achievable value
    where known (a distance between identical distributions), else None.
    """

    name: str
    higher_is_better: bool
    lo: float
    hi: float
    floor: float | None
    unit: str
    feature_space: str
    doc: str

    @property
    def direction(self) -> str:
        """"higher" or "lower" (is better)."""
        return "higher" if self.higher_is_better else "lower"

    @property
    def sign(self) -> float:
        """Multiply a value by this to get a lower-is-better key (sorting, Pareto fronts)."""
        return -1.0 if self.higher_is_better else 1.0

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b`` under this metric's direction."""
        return self.sign * a < self.sign * b

    @property
    def positive(self) -> bool:
        """Range [0, inf): intervals and paired comparisons use the log scale."""
        return self.lo == 0.0 and math.isinf(self.hi)


_INF = math.inf
_REGISTRY: Registry[MetricSpec] = Registry("metric")


def register(name: str, *, higher_is_better: bool, lo: float, hi: float,
             floor: float | None, unit: str, feature_space: str, doc: str) -> MetricSpec:
    """Add a metric; raises ValueError if the name is taken or the range is empty."""
    if not lo < hi:
        raise ValueError(f"metric {name!r}: empty range [{lo}, {hi}]")
    return _REGISTRY.add(name, MetricSpec(name, higher_is_better, lo, hi, floor, unit,
                                          feature_space, doc))


def get(name: str) -> MetricSpec:
    """The spec of ``name``; raises :class:`~fewstep._registry.UnknownNameError` (a ValueError)
    naming every registered metric otherwise."""
    return _REGISTRY[name]


def available() -> list[str]:
    """Registered metric names, sorted."""
    return _REGISTRY.names()


_DATA = "data space (samples as produced)"
_HELD = " against held-out / exact samples of the teacher's distribution"
_FEAT = "the feature space stated in the report (a fewstep-trained extractor or raw pixels)"
_INCEPTION = "Inception-v3 pool3 (torch-fidelity weights given by the user)"
for _name, _hib, _lo, _hi, _floor, _unit, _space, _doc in (
    ("ode_rmse", False, 0.0, _INF, 0.0, "data units", _DATA,
     "RMSE between the sampler's output and a tight-tolerance reference PF-ODE endpoint from "
     "the same start noise (solver error, not sample quality)"),
    ("sw", False, 0.0, _INF, 0.0, "data units", _DATA,
     "sliced Wasserstein-2 distance (256 random directions)" + _HELD),
    ("mmd", False, 0.0, _INF, 0.0, "squared kernel units", _DATA,
     "unbiased MMD² with Gaussian kernels at 0.5, 1, 2x the median distance" + _HELD +
     " (an estimate may dip below 0; MMD² itself cannot)"),
    ("energy", False, 0.0, _INF, 0.0, "data units", _DATA,
     "energy distance (Székely & Rizzo 2013)" + _HELD),
    ("nll", False, -_INF, _INF, None, "nats per sample", _DATA,
     "exact negative log-likelihood of the samples under the teacher's known density "
     "(lower = samples sit in high-density regions)"),
    ("mode_coverage", True, 0.0, 1.0, 1.0, "fraction of modes", _DATA,
     "fraction of the teacher's modes that receive samples"),
    ("high_quality", True, 0.0, 1.0, 1.0, "fraction of samples", _DATA,
     "fraction of samples within 3 standard deviations of some mode"),
    ("fd", False, 0.0, _INF, 0.0, "squared feature units", _FEAT,
     "Fréchet distance between Gaussian fits of generated and reference features"),
    ("kid", False, 0.0, _INF, 0.0, "squared feature units", _FEAT,
     "kernel inception distance (unbiased polynomial-kernel MMD²; an estimate may dip "
     "below 0)"),
    ("precision", True, 0.0, 1.0, 1.0, "fraction of samples", _FEAT,
     "k-NN precision: fraction of samples inside the reference manifold (Kynkäänniemi et "
     "al. 2019)"),
    ("recall", True, 0.0, 1.0, 1.0, "fraction of reference points", _FEAT,
     "k-NN recall: fraction of reference points inside the samples' manifold"),
    ("density", True, 0.0, _INF, None, "mean ball count / k", _FEAT,
     "k-NN density (Naeem et al. 2020); 1 when the distributions match, may exceed 1"),
    ("coverage", True, 0.0, 1.0, 1.0, "fraction of reference points", _FEAT,
     "k-NN coverage: fraction of reference balls holding a sample (Naeem et al. 2020)"),
    ("fid_inception", False, 0.0, _INF, 0.0, "squared feature units", _INCEPTION,
     "field-standard FID"),
    ("kid_inception", False, 0.0, _INF, 0.0, "squared feature units", _INCEPTION,
     "field-standard KID (unbiased; an estimate may dip below 0)"),
):
    register(_name, higher_is_better=_hib, lo=_lo, hi=_hi, floor=_floor, unit=_unit,
             feature_space=_space, doc=_doc)

METRICS = _REGISTRY  # read-only view by convention: name -> MetricSpec
