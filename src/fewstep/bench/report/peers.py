"""fewstep beside its peers: median ratios over cases matched by teacher, NFE and seed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .aggregate import Row, finite, metric_value
from .ranking import PEER_TWINS

__all__ = ["peer_comparison"]


def peer_comparison(rows: Iterable[Row], metric: str = "ode_rmse") -> list[dict[str, Any]]:
    """Median ratios fewstep / peer over cases matched by (teacher, NFE, seed): time per
    sample, solver overhead per step, and the metric; one entry per (fewstep, peer) twin."""
    by = {(r["method"], r["teacher"], r["nfe_target"], r["seed"]): r for r in rows}
    out = []
    for peer, ours in PEER_TWINS.items():
        pairs = [(r, by[(peer, *k[1:])]) for k, r in by.items()
                 if k[0] == ours and (peer, *k[1:]) in by]
        if not pairs:
            continue
        ratio = {name: _median_ratio(pairs, fn) for name, fn in (
            ("time", lambda r: r.get("time_per_sample_s")),
            ("overhead", lambda r: r.get("overhead_per_step_s")),
            ("metric", lambda r: metric_value(r, metric)))}
        out.append({"method": ours, "peer": peer, "cases": len(pairs), "metric": metric,
                    "time_ratio": ratio["time"], "overhead_ratio": ratio["overhead"],
                    "metric_ratio": ratio["metric"]})
    return out


def _median_ratio(pairs: Sequence[tuple[Row, Row]], fn: Callable[[Row], Any]) -> float | None:
    vals = sorted(a / b for a, b in ((finite(fn(x)), finite(fn(y))) for x, y in pairs)
                  if a is not None and b)
    return vals[len(vals) // 2] if vals else None
