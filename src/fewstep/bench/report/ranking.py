"""Paired rankings with tie groups, sanity flags, leaderboards, decisions and disagreements.

Every method of a teacher starts from the same noise for a given seed, so two cases are
compared by their per-seed differences (:func:`fewstep.metrics.paired_p`: a one-sided paired
Student-t test, on log values for [0, inf) metrics). The *tie group* of a comparison is the
best eligible case plus every eligible case not significantly worse than it at ``ALPHA``,
Holm-corrected over the comparisons with the best (Holm 1979), so a "winner" is only claimed
when the data support it.

A case cannot be best (it is *flagged*) when it is a baseline, when it is not significantly
better than a trivial baseline of its teacher (paired, on the metric; uncorrected, so the
flag errs towards flagging), or when it is a peer (``diffusers:X``) whose fewstep twin ran
too: that row is shown beside its twin, not as a rival.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fewstep.bench import baselines
from fewstep.metrics import holm, paired_p
from fewstep.metrics import registry as metric_registry

from .aggregate import Agg, Row, aggregate

__all__ = ["ALPHA", "PEER_TWINS", "Decision", "Ranking", "decide", "disagreements",
           "leaderboard", "pareto_front", "rank", "sanity_flags"]

ALPHA = 0.05

# diffusers peer -> the fewstep method that implements the same algorithm
PEER_TWINS: dict[str, str] = {
    "diffusers:ddim": "ddim", "diffusers:dpmpp_2m": "dpmpp_2m",
    "diffusers:dpmpp_3m": "dpmpp_3m", "diffusers:unipc": "unipc_bh2",
    "diffusers:deis": "deis_logrho", "diffusers:heun": "heun", "diffusers:euler": "ddim",
}


def p_worse(a: Agg, b: Agg) -> float:
    """One-sided paired p-value that ``a`` is worse than ``b`` on their metric."""
    return _p_worse(a.metric, a.per_seed, b.per_seed)


@functools.lru_cache(maxsize=65536)
def _p_worse(metric: str, per_a: tuple[tuple[int, float], ...],
             per_b: tuple[tuple[int, float], ...]) -> float:
    """:func:`p_worse` on per-seed values: the report asks the same pair once per table
    and plot (memoised; ~38k calls, a quarter of the quick report's time, measured)."""
    spec = metric_registry.get(metric)
    vb = dict(per_b)
    common = [(x, vb[s]) for s, x in per_a if s in vb]
    if not common:
        return 1.0
    xa, xb = [x for x, _ in common], [y for _, y in common]
    return paired_p(xb, xa, log=spec.positive) if spec.higher_is_better else \
        paired_p(xa, xb, log=spec.positive)


def _twinned(aggs: Sequence[Agg]) -> set[str]:
    """Peer methods whose fewstep twin is among ``aggs`` (same teacher)."""
    methods = {a.method for a in aggs}
    return {p for p, own in PEER_TWINS.items() if p in methods and own in methods}


def sanity_flags(aggs: Sequence[Agg], alpha: float = ALPHA) -> dict[tuple[str, int], str]:
    """Why each (method, nfe_target) of one teacher cannot be best; absent = eligible.

    Baselines are flagged as such; a case not significantly better (paired, one-sided, level
    ``alpha``) than some trivial baseline is flagged "no better than baseline:X"; a peer whose
    fewstep twin ran is flagged "peer of X (shown beside it)".
    """
    trivial = [a for a in aggs if a.is_baseline and a.method in baselines.BASELINES
               and baselines.BASELINES[a.method].trivial]
    twinned = _twinned(aggs)
    out: dict[tuple[str, int], str] = {}
    for a in aggs:
        key = (a.method, a.nfe_target)
        if a.is_baseline:
            out[key] = "baseline"
            continue
        worse = [b.method for b in trivial if p_worse(b, a) > alpha]
        if worse:
            out[key] = f"no better than {', '.join(worse)}"
        elif a.method in twinned:
            out[key] = f"peer of {PEER_TWINS[a.method]} (shown beside it)"
    return out


@dataclass(frozen=True)
class Ranking:
    """One comparison (a teacher at a budget) on one metric.

    ``best``: the best eligible case (None when none is eligible); ``tie_group``: best first,
    then every eligible case not significantly worse; ``ranked``: every case best first;
    ``flags``: label -> why that case cannot be best; ``p``: label -> Holm-tested p vs best.
    """

    teacher: str
    metric: str
    best: Agg | None
    tie_group: list[Agg]
    ranked: list[Agg]
    flags: dict[str, str] = field(default_factory=dict)
    p: dict[str, float] = field(default_factory=dict)

    @property
    def eligible(self) -> list[Agg]:
        """Cases that may be best, best first."""
        return [a for a in self.ranked if a.label not in self.flags]


def _order(aggs: Iterable[Agg]) -> list[Agg]:
    """Best first by the interval centre (ties by fewer NFE, then name)."""
    return sorted(aggs, key=lambda a: (metric_registry.get(a.metric).sign * a.summary.mean,
                                       a.nfe_target, a.method))


def rank(candidates: Sequence[Agg], flags: dict[tuple[str, int], str],
         alpha: float = ALPHA) -> Ranking:
    """Rank ``candidates`` (one teacher, one metric) given their sanity ``flags``."""
    ranked = _order(candidates)
    by_label = {a.label: flags[(a.method, a.nfe_target)] for a in ranked
                if (a.method, a.nfe_target) in flags}
    eligible = [a for a in ranked if a.label not in by_label]
    teacher, metric = (ranked[0].teacher, ranked[0].metric) if ranked else ("", "")
    if not eligible:
        return Ranking(teacher, metric, None, [], ranked, by_label)
    best, rest = eligible[0], eligible[1:]
    ps = [p_worse(a, best) for a in rest]
    worse = holm(ps, alpha)
    tied = [a for a, w in zip(rest, worse, strict=True) if not w]
    return Ranking(teacher, metric, best, [best, *tied], ranked, by_label,
                   {a.label: p for a, p in zip(rest, ps, strict=True)})


def _by_teacher(aggs: Iterable[Agg]) -> dict[str, list[Agg]]:
    out: dict[str, list[Agg]] = {}
    for a in aggs:
        out.setdefault(a.teacher, []).append(a)
    return dict(sorted(out.items()))


def budget_rankings(aggs: Sequence[Agg], alpha: float = ALPHA,
                    cumulative: bool = False) -> list[tuple[str, int, Ranking]]:
    """(teacher, NFE, ranking) for every budget: the cases at exactly that NFE, or at most it
    (``cumulative``), always with the teacher's baselines as comparators."""
    out = []
    for teacher, items in _by_teacher(aggs).items():
        flags = sanity_flags(items, alpha)
        base = [a for a in items if a.is_baseline]
        runs = [a for a in items if not a.is_baseline]
        for k in sorted({a.nfe_target for a in runs}):
            cands = [a for a in runs if (a.nfe_target <= k if cumulative else a.nfe_target == k)]
            out.append((teacher, k, rank([*cands, *base], flags, alpha)))
    return out


def _entry(prefix: str, a: Agg | None) -> dict[str, Any]:
    if a is None:
        return {prefix: None, f"{prefix}_mean": None, f"{prefix}_lo": None, f"{prefix}_hi": None}
    return {prefix: a.method, f"{prefix}_mean": a.summary.mean,
            f"{prefix}_lo": a.summary.lo, f"{prefix}_hi": a.summary.hi}


def _board_row(teacher: str, nfe: int, r: Ranking) -> dict[str, Any]:
    spec = metric_registry.get(r.metric)
    runs = [a for a in r.ranked if not a.is_baseline]
    peers = [a for a in runs if a.is_peer]
    best = r.best
    runner = next((a for a in r.eligible[1:]), None)
    return {"teacher": teacher, "nfe_target": nfe, "metric": r.metric,
            "lower_is_better": not spec.higher_is_better, **_entry("best", best),
            "best_impl": best.impl if best else None, "best_n": best.summary.n if best else 0,
            "best_nfe": best.nfe if best else None,
            "best_time_per_sample_s": best.time_per_sample.mean if best else None,
            "tied": [a.method for a in r.tie_group[1:]],
            "flagged": {a.method: r.flags[a.label] for a in runs if a.label in r.flags},
            **_entry("runner_up", runner), **_entry("peer", peers[0] if peers else None),
            "n_methods": len(runs)}


def leaderboard(rows: Iterable[Row], metric: str = "ode_rmse",
                alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Best eligible method per (teacher, NFE budget), its tie group, flagged methods, the
    runner-up and the best peer. ``best`` is None when no method is eligible (e.g. none is
    better than a trivial baseline). Raises ValueError for an unregistered metric."""
    return [_board_row(t, k, r) for t, k, r in budget_rankings(aggregate(rows, metric), alpha)]


@dataclass(frozen=True)
class Decision:
    """"At NFE <= budget on this teacher, use ``ranking.best``" plus the teacher's front."""

    teacher: str
    budget: int
    ranking: Ranking
    front: list[Agg]  # the teacher's eligible quality-vs-time Pareto front (fastest first)


def decide(rows: Iterable[Row], metric: str, alpha: float = ALPHA) -> list[Decision]:
    """The decision table: per teacher and NFE budget k, the best eligible case with NFE <= k
    and its tie group, and the teacher's quality-vs-wall-clock Pareto front."""
    aggs = aggregate(rows, metric)
    fronts = {t: time_front(items, sanity_flags(items, alpha))
              for t, items in _by_teacher(aggs).items()}
    return [Decision(t, k, r, fronts[t])
            for t, k, r in budget_rankings(aggs, alpha, cumulative=True)]


def time_front(aggs: Sequence[Agg], flags: dict[tuple[str, int], str]) -> list[Agg]:
    """Eligible cases on the time-per-sample vs metric Pareto front, fastest first."""
    ok = [a for a in aggs if (a.method, a.nfe_target) not in flags and not a.is_baseline]
    pts = [(a.time_per_sample.mean, metric_registry.get(a.metric).sign * a.summary.mean)
           for a in ok]
    return [ok[i] for i in pareto_front(pts)]


def disagreements(rows: Sequence[Row], metrics: Sequence[str],
                  alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Budgets where two metrics crown different methods and at least one winner is outside
    the other metric's tie group: teacher, nfe, metric_a, best_a, metric_b, best_b."""
    boards = {m: {(t, k): r for t, k, r in budget_rankings(aggregate(rows, m), alpha)}
              for m in metrics}
    out = []
    for i, ma in enumerate(metrics):
        for mb in metrics[i + 1:]:
            for key in sorted(set(boards[ma]) & set(boards[mb])):
                ra, rb = boards[ma][key], boards[mb][key]
                if ra.best is None or rb.best is None or ra.best.method == rb.best.method:
                    continue
                a_in_b = ra.best.method in {a.method for a in rb.tie_group}
                b_in_a = rb.best.method in {a.method for a in ra.tie_group}
                if not (a_in_b and b_in_a):
                    out.append({"teacher": key[0], "nfe": key[1], "metric_a": ma,
                                "best_a": ra.best.method, "metric_b": mb,
                                "best_b": rb.best.method})
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of non-dominated points (minimising both coordinates), sorted by x then y.

    A point is dominated when another is no worse in both coordinates and strictly better in
    one; exact duplicates do not dominate each other. Points with a NaN coordinate are ignored.
    """
    ok = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]

    def dominated(i: int) -> bool:
        xi, yi = points[i]
        return any(points[j][0] <= xi and points[j][1] <= yi and points[j] != points[i]
                   for j in ok)

    return sorted((i for i in ok if not dominated(i)), key=lambda i: (*points[i], i))
