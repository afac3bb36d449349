"""One-off cost (training a student, tuning a solver) amortised over the samples drawn.

A row's sampling cost is its wall-clock per sample (``time_per_sample_s``) plus its set-up per
sample (``setup_time_s / n_samples``) and its NFE per sample; its one-off cost is what making
the method cost once (seconds and teacher network evaluations, per sample row). Spread over
``M`` samples, the cost per sample is

    amortised(M) = one_off / M + per_sample

so at 10^3 samples a trained student pays for its training, at 10^6 almost nothing. One-off
fields are read from the row (the first present of :data:`ONE_OFF_SECONDS` /
:data:`ONE_OFF_TEACHER_NFE`, top level first, then inside ``config``); a training-free method
(a solver, a peer, a baseline) without them costs 0, a student without them is *not known*
(NaN): it is reported, never assumed free, and left off the front.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fewstep.metrics import registry as metric_registry

from .aggregate import Agg, GroupKey, Row, aggregate, finite, group, mean_of
from .ranking import pareto_front, sanity_flags

__all__ = ["AMORTISE_OVER", "ONE_OFF_SECONDS", "ONE_OFF_TEACHER_NFE", "CostPoint", "amortised",
           "amortised_front", "amortised_fronts", "one_off_cost"]

AMORTISE_OVER = (10**3, 10**6)  # samples drawn from one trained / tuned method
ONE_OFF_SECONDS = ("train_seconds", "tuning_seconds", "tune_seconds")
ONE_OFF_TEACHER_NFE = ("train_teacher_nfe", "tuning_teacher_nfe", "tune_teacher_nfe")


def _field(row: Row, names: Sequence[str]) -> float | None:
    """The first of ``names`` present in the row (top level, then ``config``) as a float;
    None when none is present; NaN when present but not a finite number (not known)."""
    for where in (row, row.get("config") or {}):
        for name in names:
            if name in where:
                v = finite(where[name])
                return math.nan if v is None else v
    return None


def _trained(row: Row) -> bool:
    return str(row.get("method", "")).startswith("student:") or row.get("impl") == "student"


def one_off_cost(row: Row) -> tuple[float, float]:
    """(seconds, teacher NFE per sample row) it cost once to make the row's method: the
    recorded fields, 0 for a training-free method without them, NaN (not known) for a
    student without them."""
    default = math.nan if _trained(row) else 0.0
    seconds, nfe = _field(row, ONE_OFF_SECONDS), _field(row, ONE_OFF_TEACHER_NFE)
    return (default if seconds is None else seconds, default if nfe is None else nfe)


@dataclass(frozen=True)
class CostPoint:
    """A (teacher, method, NFE) aggregate with its costs (means over its seeds' rows).

    ``one_off_s`` / ``one_off_nfe``: training or tuning seconds / teacher NFE (NaN: not known);
    ``per_sample_s``: sampling plus set-up seconds per sample; ``nfe``: evaluations per sample.
    """

    agg: Agg
    one_off_s: float
    one_off_nfe: float
    per_sample_s: float
    nfe: float

    def seconds(self, samples: int) -> float:
        """Seconds per sample when the one-off cost is spread over ``samples`` samples."""
        return self.one_off_s / samples + self.per_sample_s

    def teacher_nfe(self, samples: int) -> float:
        """Network evaluations per sample, the one-off teacher evaluations spread over
        ``samples`` samples."""
        return self.one_off_nfe / samples + self.nfe


def _per_sample_s(rows: Sequence[Row]) -> float:
    def one(r: Row) -> float | None:
        t = finite(r.get("time_per_sample_s"))
        setup, n = finite(r.get("setup_time_s")) or 0.0, finite(r.get("n_samples")) or 0.0
        return None if t is None else t + (setup / n if n > 0 else 0.0)

    return mean_of(one(r) for r in rows)


def amortised(rows: Iterable[Row], metric: str) -> list[CostPoint]:
    """A :class:`CostPoint` for every aggregate of ``metric`` (see :func:`aggregate`)."""
    rows = list(rows)
    groups: dict[GroupKey, list[Row]] = group(rows)
    out = []
    for a in aggregate(rows, metric):
        g = groups[(a.teacher, a.method, a.nfe_target)]
        costs = [one_off_cost(r) for r in g]
        out.append(CostPoint(a, _mean(c[0] for c in costs), _mean(c[1] for c in costs),
                             _per_sample_s(g), a.nfe))
    return out


def _mean(values: Iterable[float]) -> float:
    """Mean that stays NaN when any value is NaN (one unknown cost makes the mean unknown)."""
    xs = list(values)
    return sum(xs) / len(xs) if xs else math.nan


def amortised_front(points: Sequence[CostPoint], samples: int) -> dict[str, list[CostPoint]]:
    """Per teacher, the eligible cases on the Pareto front of the metric against seconds per
    sample amortised over ``samples`` samples, cheapest first. Eligible: not a baseline, not
    flagged by :func:`sanity_flags` (no better than a trivial baseline, a peer beside its
    twin), and its one-off cost known."""
    by_teacher: dict[str, list[CostPoint]] = {}
    for p in points:
        by_teacher.setdefault(p.agg.teacher, []).append(p)
    out = {}
    for teacher, items in sorted(by_teacher.items()):
        flags = sanity_flags([p.agg for p in items])
        ok = [p for p in items if not p.agg.is_baseline and math.isfinite(p.seconds(samples))
              and (p.agg.method, p.agg.nfe_target) not in flags]
        xy = [(p.seconds(samples), metric_registry.get(p.agg.metric).sign * p.agg.summary.mean)
              for p in ok]
        out[teacher] = [ok[i] for i in pareto_front(xy)]
    return out


def amortised_fronts(points: Sequence[CostPoint], over: Sequence[int] = AMORTISE_OVER
                     ) -> dict[int, dict[str, list[CostPoint]]]:
    """:func:`amortised_front` for each number of samples in ``over``."""
    return {m: amortised_front(points, m) for m in over}
