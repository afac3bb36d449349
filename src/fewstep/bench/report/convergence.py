"""Convergence as NFE grows: each method's empirical order and where it reaches its plateau.

For a lower-is-better error ``e(N)`` at NFE budgets ``N`` (by default ``ode_rmse``, the error
against the teacher's tight reference ODE solution) a method of order ``p`` has
``e(N) ~ C N^-p`` until a floor (the reference's own accuracy, float rounding, or for a
distribution metric the data floor) stops it:

- the **plateau** is the error at the largest budget (geometric mean over seeds); the
  *plateau NFE* is the smallest budget whose error is within ``PLATEAU_TOL`` (10%) of it. When
  that is the largest budget itself the plateau is not reached (the error still falls);
- the **empirical order** is ``-slope`` of the least-squares line of ``log e`` on ``log N``
  over the asymptotic range: budgets ``N >= min_nfe`` and, when the plateau is reached, below
  the plateau NFE (on the floor the slope says nothing about the method). The slope is fitted
  per seed on the same budgets; the order is their mean with a Student-t 95% interval over
  seeds (Student 1908), so it can be set beside the solver's nominal order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fewstep import solvers
from fewstep.metrics import Summary, mean_ci
from fewstep.metrics import registry as metric_registry

from .aggregate import Agg, Row, aggregate, nan_summary

__all__ = ["MIN_FIT_POINTS", "MIN_NFE", "PLATEAU_TOL", "Convergence", "convergence",
           "convergence_of", "nominal_order"]

PLATEAU_TOL = 0.10  # "within 10% of its plateau"
MIN_NFE = 10  # budgets below this are pre-asymptotic (first steps at sigma_max dominate)
MIN_FIT_POINTS = 3  # budgets needed in the asymptotic range to fit a slope


@dataclass(frozen=True)
class Convergence:
    """One (teacher, method)'s error curve summarised.

    ``order``: mean over seeds of ``-d log e / d log N`` over ``fit_nfe`` with its 95% interval
    (NaN when fewer than :data:`MIN_FIT_POINTS` budgets are asymptotic); ``plateau``: the error
    at ``max_nfe``; ``plateau_nfe``: smallest budget within :data:`PLATEAU_TOL` of it;
    ``reached``: whether that budget is below ``max_nfe``.
    """

    teacher: str
    method: str
    metric: str
    order: Summary
    fit_nfe: tuple[int, ...]
    plateau: float
    plateau_nfe: int
    max_nfe: int

    @property
    def reached(self) -> bool:
        """Whether the error stopped falling before the largest budget."""
        return self.plateau_nfe < self.max_nfe


def nominal_order(method: str) -> int | None:
    """The registered solver's nominal order (None for peers, students and baselines)."""
    try:
        return solvers.get(method).order
    except (ValueError, KeyError):
        return None


def _slope(nfe: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of log error on log NFE."""
    return float(np.polyfit(np.log(nfe), np.log(errors), 1)[0])


def convergence_of(curve: Sequence[Agg], min_nfe: int = MIN_NFE) -> Convergence:
    """The convergence summary of one method's aggregates on one teacher (one per budget, a
    lower-is-better metric in [0, inf)). Raises ValueError for a mixed or empty curve."""
    if not curve or len({(a.teacher, a.method, a.metric) for a in curve}) != 1:
        raise ValueError("convergence_of needs the aggregates of one (teacher, method, metric)")
    pts = sorted((a for a in curve if math.isfinite(a.summary.mean)),
                 key=lambda a: a.nfe_target)
    head = curve[0]
    if not pts:
        raise ValueError(f"{head.teacher}/{head.method}: no finite {head.metric} values")
    plateau, max_nfe = pts[-1].summary.mean, pts[-1].nfe_target
    plateau_nfe = next(a.nfe_target for a in pts
                       if a.summary.mean <= (1 + PLATEAU_TOL) * plateau)
    fit = [a for a in pts if a.nfe_target >= min_nfe and a.summary.mean > 0
           and (a.nfe_target < plateau_nfe or plateau_nfe == max_nfe)]
    order = _order(fit)
    return Convergence(head.teacher, head.method, head.metric, order,
                       tuple(a.nfe_target for a in fit) if math.isfinite(order.mean) else (),
                       plateau, plateau_nfe, max_nfe)


def _order(fit: Sequence[Agg]) -> Summary:
    """-slope per seed over the budgets in ``fit`` (seeds present at every budget, all
    errors positive), summarised over seeds."""
    if len(fit) < MIN_FIT_POINTS:
        return nan_summary()
    per_budget = [dict(a.per_seed) for a in fit]
    seeds = sorted(set.intersection(*(set(d) for d in per_budget)))
    nfe = [a.nfe_target for a in fit]
    slopes = [-_slope(nfe, [d[s] for d in per_budget]) for s in seeds
              if all(d[s] > 0 for d in per_budget)]
    return mean_ci(slopes) if slopes else nan_summary()


def convergence(rows: Iterable[Row], metric: str = "ode_rmse",
                min_nfe: int = MIN_NFE) -> list[Convergence]:
    """:func:`convergence_of` for every (teacher, method) with a budget of at least
    ``min_nfe`` (baselines excluded), sorted by teacher then method. Raises ValueError for a
    metric that is not a lower-is-better error in [0, inf)."""
    spec = metric_registry.get(metric)
    if spec.higher_is_better or not spec.positive:
        raise ValueError(f"convergence needs a lower-is-better metric in [0, inf); "
                         f"{metric!r} is not")
    curves: dict[tuple[str, str], list[Agg]] = {}
    for a in aggregate(rows, metric):
        if not a.is_baseline:
            curves.setdefault((a.teacher, a.method), []).append(a)
    return [convergence_of(c, min_nfe) for _, c in sorted(curves.items())
            if max(a.nfe_target for a in c) >= min_nfe]
