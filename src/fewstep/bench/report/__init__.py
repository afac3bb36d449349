"""Benchmark report: aggregation over seeds, paired rankings with tie groups and sanity
flags, the decision table, plots and an HTML page.

One job per module: :mod:`.aggregate` (rows -> per-case summaries), :mod:`.ranking` (paired
tests, tie groups, flags, leaderboard, decisions), :mod:`.text` (terminal tables),
:mod:`.plots` (figures), :mod:`.peers` (fewstep beside diffusers), :mod:`.html` (the page).
"""

from .aggregate import Agg, aggregate, failure_summary, load, metrics_present
from .html import write_report
from .peers import peer_comparison
from .plots import plot_pareto, plot_quality_vs_nfe, plot_quality_vs_time
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
from .text import format_decision, format_leaderboard, format_peer_comparison, format_seconds

__all__ = [
    "ALPHA",
    "PEER_TWINS",
    "Agg",
    "Decision",
    "Ranking",
    "aggregate",
    "decide",
    "disagreements",
    "failure_summary",
    "format_decision",
    "format_leaderboard",
    "format_peer_comparison",
    "format_seconds",
    "leaderboard",
    "load",
    "metrics_present",
    "pareto_front",
    "peer_comparison",
    "plot_pareto",
    "plot_quality_vs_nfe",
    "plot_quality_vs_time",
    "rank",
    "sanity_flags",
    "write_report",
]
