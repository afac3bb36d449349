"""Benchmark report: aggregation over seeds, paired rankings with tie groups and sanity
flags, the decision table, plots and an HTML page.

One job per module: :mod:`.aggregate` (rows -> per-case summaries), :mod:`.ranking` (paired
tests, tie groups, flags, leaderboard, decisions), :mod:`.convergence` (empirical order and
plateau NFE), :mod:`.cost` (one-off cost amortised, its Pareto front), :mod:`.text` (terminal
tables), :mod:`.plots` (figures), :mod:`.peers` (fewstep beside diffusers), :mod:`.html` (the
page).
"""

from .aggregate import Agg, aggregate, failure_summary, load, metrics_present, skipped_summary
from .convergence import Convergence, convergence
from .cost import AMORTISE_OVER, CostPoint, amortised, amortised_fronts, one_off_cost
from .html import write_report
from .peers import peer_comparison
from .plots import plot_amortised, plot_pareto, plot_quality_vs_nfe
from .ranking import (
    ALPHA,
    PEER_TWINS,
    Decision,
    Ranking,
    decide,
    disagreements,
    leaderboard,
    pareto_front,
    rank,
    sanity_flags,
)
from .text import (
    format_amortised,
    format_convergence,
    format_decision,
    format_leaderboard,
    format_peer_comparison,
    format_seconds,
)

__all__ = [
    "ALPHA",
    "AMORTISE_OVER",
    "PEER_TWINS",
    "Agg",
    "Convergence",
    "CostPoint",
    "Decision",
    "Ranking",
    "aggregate",
    "amortised",
    "amortised_fronts",
    "convergence",
    "decide",
    "disagreements",
    "failure_summary",
    "format_amortised",
    "format_convergence",
    "format_decision",
    "format_leaderboard",
    "format_peer_comparison",
    "format_seconds",
    "leaderboard",
    "load",
    "metrics_present",
    "one_off_cost",
    "pareto_front",
    "peer_comparison",
    "plot_amortised",
    "plot_pareto",
    "plot_quality_vs_nfe",
    "rank",
    "sanity_flags",
    "skipped_summary",
    "write_report",
]
