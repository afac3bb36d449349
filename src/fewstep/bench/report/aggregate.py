"""Rows to per-case aggregates: one (teacher, method, NFE budget) summarised over seeds.

Intervals respect each metric's range (:func:`fewstep.metrics.range_ci` with the range from
:mod:`fewstep.metrics.registry`); per-seed values are kept so rankings can pair them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fewstep.bench.store import Store, distinct_errors
from fewstep.metrics import Summary, mean_ci, range_ci
from fewstep.metrics import registry as metric_registry

__all__ = ["Agg", "GroupKey", "Row", "aggregate", "failure_summary", "load", "metrics_present",
           "role", "skipped_summary"]

Row = dict[str, Any]
GroupKey = tuple[str, str, int]


def finite(x: Any) -> float | None:
    """``x`` as a float if it is a finite number, else None."""
    if x is None or isinstance(x, bool | str):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def finite_values(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values``."""
    return [v for v in map(finite, values) if v is not None]


def nan_summary() -> Summary:
    """A Summary with no data."""
    return Summary(mean=math.nan, lo=math.nan, hi=math.nan, n=0, std=math.nan)


def mean_of(values: Iterable[Any]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = finite_values(values)
    return sum(xs) / len(xs) if xs else math.nan


def metric_value(row: Row, metric: str) -> float | None:
    """The row's value of ``metric`` if present and finite."""
    return finite((row.get("metrics") or {}).get(metric))


def metric_summary(values: Iterable[Any], metric: str) -> Summary:
    """Range-respecting 95% interval of the finite values of a registered metric."""
    spec = metric_registry.get(metric)
    xs = finite_values(values)
    return range_ci(xs, spec.lo, spec.hi) if xs else nan_summary()


def role(method: str, impl: str | None) -> str:
    """"baseline", "peer" (another library's implementation) or "own" (fewstep, students,
    tuned solvers, early-stopped rows)."""
    if method.startswith("baseline:") or impl == "baseline":
        return "baseline"
    if method.startswith(("student:", "tuned:", "early_stop:")) or \
            impl in ("student", "tuned", "early_stop"):
        return "own"
    return "peer" if (impl not in (None, "", "fewstep")) or ":" in method else "own"


@dataclass(frozen=True)
class Agg:
    """One (teacher, method, NFE budget) case aggregated over seeds for one metric.

    ``summary``: range-respecting interval (geometric mean for [0, inf) metrics);
    ``per_seed``: (seed, value) pairs, for paired comparisons.
    """

    teacher: str
    method: str
    impl: str
    nfe_target: int
    nfe: float
    metric: str
    summary: Summary
    time_per_sample: Summary
    overhead_per_step: float
    per_seed: tuple[tuple[int, float], ...] = ()

    @property
    def role(self) -> str:
        """See :func:`role`."""
        return role(self.method, self.impl)

    @property
    def is_peer(self) -> bool:
        """True for a peer library's implementation (not fewstep's own)."""
        return self.role == "peer"

    @property
    def is_baseline(self) -> bool:
        """True for a ``baseline:`` method."""
        return self.role == "baseline"

    @property
    def label(self) -> str:
        """``method@nfe`` label used on plots and in decision tables."""
        return self.method if self.is_baseline else f"{self.method}@{self.nfe_target}"


def _key(row: Row) -> GroupKey:
    return (str(row.get("teacher")), str(row.get("method")), int(row.get("nfe_target") or 0))


def group(rows: Iterable[Row]) -> dict[GroupKey, list[Row]]:
    """Rows grouped by (teacher, method, nfe_target), keys sorted."""
    groups: dict[GroupKey, list[Row]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    return dict(sorted(groups.items()))


def impl_of(rows: Sequence[Row]) -> str:
    """The implementation name of a group (first non-empty)."""
    return next((str(r["impl"]) for r in rows if r.get("impl")), "fewstep")


def metrics_present(rows: Iterable[Row]) -> list[str]:
    """Sorted names of metrics that have at least one finite value."""
    names = {k for r in rows for k, v in (r.get("metrics") or {}).items() if finite(v) is not None}
    return sorted(names)


def _agg(key: GroupKey, rows: Sequence[Row], metric: str) -> Agg | None:
    have = [r for r in rows if metric_value(r, metric) is not None]
    if not have:
        return None
    teacher, method, nfe_target = key
    values = {int(r.get("seed") or 0): metric_value(r, metric) for r in have}
    per_seed = tuple(sorted((s, v) for s, v in values.items() if v is not None))
    times = finite_values(r.get("time_per_sample_s") for r in have)
    return Agg(teacher=teacher, method=method, impl=impl_of(have), nfe_target=nfe_target,
               nfe=mean_of(r.get("nfe") for r in have), metric=metric,
               summary=metric_summary((v for _, v in per_seed), metric),
               time_per_sample=mean_ci(times) if times else nan_summary(),
               overhead_per_step=mean_of(r.get("overhead_per_step_s") for r in have),
               per_seed=per_seed)


def aggregate(rows: Iterable[Row], metric: str) -> list[Agg]:
    """Per (teacher, method, nfe_target) seed aggregates of ``metric``; rows lacking it are
    skipped. Raises ValueError (listing the known ones) for an unregistered metric."""
    metric_registry.get(metric)
    out = (_agg(k, g, metric) for k, g in group(rows).items())
    return [a for a in out if a is not None]


def load(store_or_rows: Store | str | os.PathLike[str] | Iterable[Row],
         suite: str | None) -> tuple[list[Row], list[Row]]:
    """(finished rows, failed rows) from a Store, a database path or an iterable of rows."""
    if isinstance(store_or_rows, str | os.PathLike):
        store_or_rows = Store(os.fspath(store_or_rows))
    if isinstance(store_or_rows, Store):
        rows = store_or_rows.rows(suite=suite, status=None)
    else:
        rows = [r for r in store_or_rows if suite is None or r.get("suite") == suite]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    return ok, [r for r in rows if r.get("status", "ok") != "ok"]


_SKIP = re.compile(r"^(?P<method>\S+) at NFE (?P<nfe>\d+): (?P<why>.*)$")


def skipped_summary(reasons: Iterable[str]) -> list[tuple[str, str]]:
    """``(method, what was not run and why)``, one per method and reason, in first-seen order:
    the runner's "METHOD at NFE n: WHY" lines of one method and reason merge into
    "NFE 1, 2: WHY" (``nfe=n`` inside WHY reads "this NFE"); any other "METHOD: WHY" line
    stands alone."""
    nfes: dict[tuple[str, str], list[int]] = {}
    for reason in reasons:
        if m := _SKIP.match(reason):
            n = int(m["nfe"])
            why = re.sub(rf"\bnfe={n}\b", "this NFE", m["why"])
            nfes.setdefault((m["method"], why), []).append(n)
        else:
            method, _, why = reason.partition(": ")
            nfes.setdefault((method, why or reason), [])
    return [(method, f"NFE {', '.join(map(str, sorted(ns)))}: {why}" if ns else why)
            for (method, why), ns in nfes.items()]


def failure_summary(rows: Iterable[Row]) -> list[tuple[str, int, Row]]:
    """Each distinct error message of the failed rows with its count and one example row,
    most frequent first."""
    failed = [(r, str(r.get("error") or "unknown error (no message stored)")) for r in rows
              if r.get("status", "ok") != "ok"]
    return distinct_errors(sorted(failed, key=lambda f: f[1]))  # ties: by message
