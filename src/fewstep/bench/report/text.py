"""Plain-text forms for the terminal: numbers, durations, the decision table, the
leaderboard, the peer comparison, the convergence table and the amortised-cost front. The
HTML report renders the same numbers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fewstep.metrics import registry as metric_registry

from .aggregate import Agg, finite
from .convergence import PLATEAU_TOL, Convergence, nominal_order
from .cost import CostPoint
from .ranking import ALPHA, Decision

__all__ = ["few_seeds", "format_amortised", "format_convergence", "format_decision",
           "format_leaderboard", "format_peer_comparison", "format_seconds", "num",
           "plateau_text", "short_labels", "tie_text", "with_ci"]

NO_DATA = "-"
NONE_ELIGIBLE = "(none beats baselines)"


def format_seconds(s: float | None) -> str:
    """Human-readable duration with 3 significant digits (s, ms, µs or ns)."""
    v = finite(s)
    if v is None:
        return NO_DATA
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(v) >= scale * 0.9995:
            return f"{v / scale:.3g} {unit}"
    return f"{v / 1e-9:.3g} ns"


def num(x: float | None) -> str:
    """A metric value with 3 significant digits."""
    v = finite(x)
    return NO_DATA if v is None else f"{v:.3g}"


def with_ci(mean: float | None, lo: float | None, hi: float | None) -> str:
    """``mean [lo, hi]``, or just the mean when the interval is undefined (n = 1)."""
    if finite(lo) is None or finite(hi) is None:
        return num(mean)
    return f"{num(mean)} [{num(lo)}, {num(hi)}]"


def clip(text: str, width: int) -> str:
    """Truncate ``text`` to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def short_label(label: str) -> str:
    """A method label (``method`` or ``method@nfe``) as tables print it: students by a name
    that tells them apart (:func:`fewstep.bench.students.label`), not a clipped path."""
    from ..students import label as student_label

    method, at, nfe = label.rpartition("@") if "@" in label else (label, "", "")
    return f"{student_label(method)}{at}{nfe}"


def short_labels(methods: Iterable[str | None]) -> dict[str, str]:
    """Each distinct method string -> the short name tables show (:func:`short_label`);
    methods whose short names would collide keep their full string, so no two methods share
    a name."""
    from ..students import label as student_label

    distinct = list(dict.fromkeys(m for m in methods if m))
    short = {m: student_label(m) for m in distinct}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    return {m: (s if counts[s] == 1 else m) for m, s in short.items()}


def direction_note(metric: str) -> str:
    """"<metric> (<direction> is better; <unit>)" from the metric registry."""
    spec = metric_registry.get(metric)
    return f"{metric} ({spec.direction} is better; {spec.unit})"


def tie_text(tied: Sequence[str], shown: int = 3) -> str:
    """At most ``shown`` names of a tie group, then "+N more"."""
    if not tied:
        return NO_DATA
    more = f" +{len(tied) - shown} more" if len(tied) > shown else ""
    return ", ".join(tied[:shown]) + more


def _table(cols: Sequence[tuple[str, int, str]], cells: Sequence[Sequence[str]]) -> list[str]:
    """Header, rule and rows of a fixed-width table; widths shrink to content, capped."""
    widths = [min(cap, max(len(h), *(len(c[i]) for c in cells)))
              for i, (h, cap, _) in enumerate(cols)]

    def line(parts: Sequence[str]) -> str:
        return " ".join(f"{clip(p, w):{a}{w}}" for p, w, (_, _, a) in
                        zip(parts, widths, cols, strict=True)).rstrip()

    header = line([h for h, _, _ in cols])
    return [header, "-" * len(header), *(line(c) for c in cells)]


_BOARD = (("teacher", 16, "<"), ("NFE", 3, ">"), ("best method", 18, "<"),
          ("metric [95% CI]", 26, "<"), ("time/smp", 8, ">"), ("tied", 4, ">"),
          ("best peer", 18, "<"), ("peer", 6, ">"))


def format_leaderboard(board: Sequence[dict[str, Any]]) -> str:
    """Fixed-width table of a leaderboard (fits 100 columns): per (teacher, NFE) the best
    eligible method, its interval, how many others are tied with it, and the best peer."""
    if not board:
        return "(empty leaderboard)"
    cells = [[str(e["teacher"]), str(e["nfe_target"]),
              short_label(e["best"]) if e["best"] else NONE_ELIGIBLE,
              with_ci(e["best_mean"], e["best_lo"], e["best_hi"]),
              format_seconds(e["best_time_per_sample_s"]),
              f"+{len(e['tied'])}" if e["tied"] else NO_DATA, e["peer"] or NO_DATA,
              num(e["peer_mean"])] for e in board]
    title = (f"{direction_note(board[0]['metric'])}: mean over seeds (geometric for "
             f"nonnegative metrics), 95% interval; tied = not significantly worse")
    return "\n".join([clip(title, 100), *_table(_BOARD, cells)])


_DECISION = (("teacher", 16, "<"), ("NFE<=", 5, ">"), ("use", 22, "<"),
             ("metric [95% CI]", 26, "<"), ("time/smp", 8, ">"), ("tied with", 26, "<"))


def _decision_cells(d: Decision) -> list[str]:
    best = d.ranking.best
    if best is None:
        return [d.teacher, str(d.budget), NONE_ELIGIBLE, "", "", ""]
    return [d.teacher, str(d.budget), short_label(best.label),
            with_ci(best.summary.mean, best.summary.lo, best.summary.hi),
            format_seconds(best.time_per_sample.mean),
            tie_text([short_label(a.label) for a in d.ranking.tie_group[1:]])]


def _front_line(teacher: str, front: Sequence[Agg]) -> str:
    pts = ", ".join(f"{short_label(a.label)} ({format_seconds(a.time_per_sample.mean)}, "
                    f"{num(a.summary.mean)})" for a in front)
    return f"  {teacher}: {pts or NO_DATA}"


def format_decision(decisions: Sequence[Decision]) -> str:
    """The decision table ("at NFE <= k use X", with its tie group) and each teacher's
    quality-vs-time Pareto front, as plain text."""
    if not decisions:
        return "(no decision: no finished cases with this metric)"
    metric = decisions[0].ranking.metric
    head = [f"Decision on {direction_note(metric)}: at NFE <= k use X.",
            f"Tied = not significantly worse than X (paired t over seeds, Holm, alpha {ALPHA}).",
            "Never chosen: baselines, methods not significantly better than a trivial "
            "baseline, peers with a fewstep twin."]
    warning = few_seeds(decisions)
    head += [warning] if warning else []
    lines = [*head, *_table(_DECISION, [_decision_cells(d) for d in decisions]),
             "Pareto front, time per sample vs metric (eligible cases, fastest first):"]
    seen: dict[str, list[Agg]] = {d.teacher: d.front for d in decisions}
    lines += [_front_line(t, f) for t, f in seen.items()]
    return "\n".join(lines)


def few_seeds(decisions: Sequence[Decision]) -> str | None:
    """A warning when the fewest seeds behind any case is below 5 (None otherwise): a paired
    t-test over 2 seeds needs t > 6.3, so almost nothing separates."""
    n = min((a.summary.n for d in decisions for a in d.ranking.ranked), default=0)
    if n >= 5:
        return None
    return (f"Only {n} seed(s) behind some cases: too few to separate most methods (5 or more "
            "recommended); ties and flags here mostly mean 'not shown', not 'equal'.")


def format_peer_comparison(comp: Sequence[dict[str, Any]]) -> str:
    """Terminal table of :func:`peer_comparison` (ratios < 1: fewstep is faster / better)."""
    if not comp:
        return "no fewstep/peer pairs in these results"
    head = f"{'fewstep':12s} {'peer':20s} {'cases':>5s} {'time':>7s} {'overhead':>9s} " \
           f"{comp[0]['metric']:>9s}"
    lines = ["fewstep / peer, median ratio over matched cases (< 1: fewstep lower)", head,
             "-" * len(head)]
    for c in comp:
        cells = [num(c[k]) if c[k] is not None else "n/a"
                 for k in ("time_ratio", "overhead_ratio", "metric_ratio")]
        lines.append(f"{c['method']:12s} {c['peer']:20s} {c['cases']:5d} {cells[0]:>7s} "
                     f"{cells[1]:>9s} {cells[2]:>9s}")
    return "\n".join(lines)


_CONVERGENCE = (("teacher", 12, "<"), ("method", 20, "<"), ("order [95% CI]", 22, "<"),
                ("nominal", 7, ">"), ("fit NFE", 10, "<"), ("plateau NFE", 11, ">"),
                ("plateau", 8, ">"))


def plateau_text(c: Convergence) -> str:
    """The plateau NFE, or "> max" when the error still falls at the largest budget."""
    return str(c.plateau_nfe) if c.reached else f"> {c.max_nfe}"


def format_convergence(conv: Sequence[Convergence]) -> str:
    """Terminal table of :func:`~.convergence.convergence`: empirical order with its interval
    over seeds beside the nominal order, and the NFE where the error reaches its plateau."""
    if not conv:
        return "(no convergence table: no method ran at NFE >= 10)"
    cells = [[c.teacher, c.method, with_ci(c.order.mean, c.order.lo, c.order.hi),
              str(nominal_order(c.method) or NO_DATA),
              f"{c.fit_nfe[0]}-{c.fit_nfe[-1]}" if c.fit_nfe else NO_DATA,
              plateau_text(c), num(c.plateau)] for c in conv]
    title = (f"Convergence on {direction_note(conv[0].metric)}: order = -slope of log error vs "
             f"log NFE per seed (mean, 95% interval); plateau NFE = first within "
             f"{PLATEAU_TOL:.0%} of the error at the largest NFE")
    return "\n".join([clip(title, 100), *_table(_CONVERGENCE, cells)])


def format_amortised(fronts: dict[int, dict[str, list[CostPoint]]]) -> str:
    """Per number of samples and teacher, the amortised-cost Pareto front as plain text:
    ``method@NFE (seconds per sample, metric)``, cheapest first, students by their short
    names (``zoo/cd@2``, as the decision table)."""
    lines = ["Pareto front, metric vs cost per sample with one-off training/tuning cost spread "
             "over M samples (eligible cases, cheapest first):"]
    names = short_labels(p.agg.method for by_teacher in fronts.values()
                         for front in by_teacher.values() for p in front)
    for samples, by_teacher in fronts.items():
        for teacher, front in by_teacher.items():
            pts = ", ".join(f"{names[p.agg.method]}@{p.agg.nfe_target} "
                            f"({format_seconds(p.seconds(samples))}, "
                            f"{num(p.agg.summary.mean)})" for p in front)
            lines.append(f"  M = {samples:.0e} {teacher}: {pts or NO_DATA}")
    return "\n".join(lines)
