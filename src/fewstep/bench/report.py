"""Benchmark report: per-case aggregation over seeds, leaderboards, plots and an HTML page.

Rows come from :class:`fewstep.bench.store.Store` (one per teacher × method × NFE × seed).
Everything here is read-only on the store; files are written atomically (temp file in the
same directory, then ``os.replace``), so a crashed report never leaves a half-written file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from fewstep._io import atomic_write
from fewstep.bench.store import Store
from fewstep.metrics import Summary, mean_ci

__all__ = [
    "Agg",
    "aggregate",
    "format_leaderboard",
    "format_seconds",
    "leaderboard",
    "lower_is_better",
    "metrics_present",
    "pareto_front",
    "plot_pareto",
    "plot_quality_vs_nfe",
    "plot_quality_vs_time",
    "write_report",
]

Row = dict[str, Any]
GroupKey = tuple[str, str, int]

HIGHER_IS_BETTER = frozenset({"mode_coverage", "precision", "recall", "density", "coverage"})
METRIC_DOCS: dict[str, str] = {
    "ode_rmse": "RMSE between the sampler's output and a tight-tolerance reference PF-ODE "
                "endpoint started from the same initial noise (solver error, not sample quality).",
    "sw": "sliced Wasserstein-2 distance between generated samples and held-out / exact "
          "samples of the teacher distribution.",
    "mmd": "maximum mean discrepancy (kernel two-sample distance) between generated samples "
           "and held-out / exact samples.",
    "nll": "exact negative log-likelihood of the generated samples under the teacher's known "
           "density (lower = samples sit in high-density regions).",
    "mode_coverage": "fraction of the teacher's modes that receive samples (higher is better).",
    "fd": "Fréchet distance between Gaussian fits of generated and reference features, in the "
          "feature space stated below.",
    "kid": "kernel inception distance (unbiased polynomial-kernel MMD) in the stated feature "
           "space.",
}
_NO_DATA = "-"
_DPI = 110


@dataclass(frozen=True)
class Agg:
    """One (teacher, method, NFE budget) case aggregated over seeds for one metric."""

    teacher: str
    method: str
    impl: str
    nfe_target: int
    nfe: float
    metric: str
    summary: Summary
    time_per_sample: Summary
    overhead_per_step: float

    @property
    def is_peer(self) -> bool:
        """True for a peer library's implementation (not fewstep's own)."""
        return _is_peer(self.impl, self.method)

    @property
    def label(self) -> str:
        """``method@nfe`` label used on plots."""
        return f"{self.method}@{self.nfe_target}"


# ---------------------------------------------------------------- helpers on values and rows


def _finite(x: Any) -> float | None:
    """``x`` as a float if it is a finite number, else None."""
    if x is None or isinstance(x, bool | str):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _finite_values(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values``."""
    return [v for v in map(_finite, values) if v is not None]


def _nan_summary() -> Summary:
    """A Summary with no data."""
    return Summary(mean=math.nan, lo=math.nan, hi=math.nan, n=0, std=math.nan)


def _summary(values: Iterable[Any]) -> Summary:
    """mean_ci over the finite values, or an all-NaN Summary when there are none."""
    xs = _finite_values(values)
    return mean_ci(xs) if xs else _nan_summary()


def _mean(values: Iterable[Any]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = _finite_values(values)
    return sum(xs) / len(xs) if xs else math.nan


def _metric(row: Row, metric: str) -> float | None:
    """The row's value of ``metric`` if present and finite."""
    return _finite((row.get("metrics") or {}).get(metric))


def _is_peer(impl: str | None, method: str) -> bool:
    """Whether a case is a peer library's implementation (fewstep's students are not)."""
    if method.startswith("student:") or impl == "student":
        return False
    return (impl not in (None, "", "fewstep")) or ":" in method


def _key(row: Row) -> GroupKey:
    """Grouping key (teacher, method, nfe_target)."""
    return (str(row.get("teacher")), str(row.get("method")), int(row.get("nfe_target") or 0))


def _group(rows: Iterable[Row]) -> dict[GroupKey, list[Row]]:
    """Rows grouped by (teacher, method, nfe_target), keys sorted."""
    groups: dict[GroupKey, list[Row]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    return dict(sorted(groups.items()))


def _impl(rows: Sequence[Row]) -> str:
    """The implementation name of a group (first non-empty)."""
    return next((str(r["impl"]) for r in rows if r.get("impl")), "fewstep")


def lower_is_better(metric: str) -> bool:
    """Direction of a metric: False for coverage-like scores, True for distances/errors."""
    return metric not in HIGHER_IS_BETTER


def metrics_present(rows: Iterable[Row]) -> list[str]:
    """Sorted names of metrics that have at least one finite value."""
    names = {k for r in rows for k, v in (r.get("metrics") or {}).items() if _finite(v) is not None}
    return sorted(names)


# ---------------------------------------------------------------- aggregation and ranking


def _agg(key: GroupKey, rows: Sequence[Row], metric: str) -> Agg | None:
    """Aggregate one group's rows that carry ``metric`` (None if none do)."""
    have = [r for r in rows if _metric(r, metric) is not None]
    if not have:
        return None
    teacher, method, nfe_target = key
    return Agg(teacher=teacher, method=method, impl=_impl(have), nfe_target=nfe_target,
               nfe=_mean(r.get("nfe") for r in have), metric=metric,
               summary=mean_ci([_metric(r, metric) for r in have]),
               time_per_sample=_summary(r.get("time_per_sample_s") for r in have),
               overhead_per_step=_mean(r.get("overhead_per_step_s") for r in have))


def aggregate(rows: Iterable[Row], metric: str) -> list[Agg]:
    """Per (teacher, method, nfe_target) seed aggregates of ``metric``; rows lacking it skipped."""
    out = (_agg(k, g, metric) for k, g in _group(rows).items())
    return [a for a in out if a is not None]


def _ranked(aggs: Iterable[Agg], lower: bool) -> list[Agg]:
    """Aggregates best first (ties broken by method name)."""
    sign = 1.0 if lower else -1.0
    return sorted(aggs, key=lambda a: (sign * a.summary.mean, a.method))


def _entry(prefix: str, a: Agg | None) -> dict[str, Any]:
    """Leaderboard fields for one aggregate under ``prefix`` (None values if absent)."""
    if a is None:
        return {prefix: None, f"{prefix}_mean": None, f"{prefix}_lo": None, f"{prefix}_hi": None}
    return {prefix: a.method, f"{prefix}_mean": a.summary.mean,
            f"{prefix}_lo": a.summary.lo, f"{prefix}_hi": a.summary.hi}


def _board_row(budget: list[Agg], lower: bool) -> dict[str, Any]:
    """One leaderboard line from the aggregates of one (teacher, NFE budget)."""
    ranked = _ranked(budget, lower)
    best = ranked[0]
    peers = [a for a in ranked if a.is_peer]
    return {"teacher": best.teacher, "nfe_target": best.nfe_target, "metric": best.metric,
            "lower_is_better": lower, **_entry("best", best), "best_impl": best.impl,
            "best_n": best.summary.n, "best_nfe": best.nfe,
            "best_time_per_sample_s": best.time_per_sample.mean,
            **_entry("runner_up", ranked[1] if len(ranked) > 1 else None),
            **_entry("peer", peers[0] if peers else None), "n_methods": len(ranked)}


def leaderboard(rows: Iterable[Row], metric: str = "ode_rmse",
                lower_is_better: bool = True) -> list[dict[str, Any]]:
    """Best method per (teacher, NFE budget) by mean metric, with runner-up and best peer."""
    budgets: dict[tuple[str, int], list[Agg]] = {}
    for a in aggregate(rows, metric):
        budgets.setdefault((a.teacher, a.nfe_target), []).append(a)
    return [_board_row(b, lower_is_better) for _, b in sorted(budgets.items())]


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


# ---------------------------------------------------------------- terminal formatting


def format_seconds(s: float | None) -> str:
    """Human-readable duration with 3 significant digits (s, ms, µs or ns)."""
    v = _finite(s)
    if v is None:
        return _NO_DATA
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(v) >= scale * 0.9995:
            return f"{v / scale:.3g} {unit}"
    return f"{v / 1e-9:.3g} ns"


def _num(x: float | None) -> str:
    """A metric value with 3 significant digits."""
    v = _finite(x)
    return _NO_DATA if v is None else f"{v:.3g}"


def _with_ci(mean: float | None, lo: float | None, hi: float | None) -> str:
    """``mean [lo, hi]``, or just the mean when the interval is undefined (n = 1)."""
    if _finite(lo) is None or _finite(hi) is None:
        return _num(mean)
    return f"{_num(mean)} [{_num(lo)}, {_num(hi)}]"


def _clip(text: str, width: int) -> str:
    """Truncate ``text`` to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


_COLS = (("teacher", 14, "<"), ("NFE", 4, ">"), ("best method", 20, "<"),
         ("metric [95% CI]", 34, "<"), ("time/smp", 8, ">"), ("best peer", 20, "<"),
         ("peer", 9, ">"))


def _board_cells(e: dict[str, Any]) -> list[str]:
    """Terminal cells of one leaderboard entry."""
    return [str(e["teacher"]), str(e["nfe_target"]), str(e["best"]),
            _with_ci(e["best_mean"], e["best_lo"], e["best_hi"]),
            format_seconds(e["best_time_per_sample_s"]), e["peer"] or _NO_DATA,
            _num(e["peer_mean"])]


def format_leaderboard(board: Sequence[dict[str, Any]]) -> str:
    """Fixed-width plain-text table of a leaderboard (fits 100 columns for typical names)."""
    if not board:
        return "(empty leaderboard)"
    cells = [_board_cells(e) for e in board]
    widths = [min(cap, max(len(h), *(len(c[i]) for c in cells)))
              for i, (h, cap, _) in enumerate(_COLS)]

    def line(parts: Sequence[str]) -> str:
        return " ".join(f"{_clip(p, w):{a}{w}}" for p, w, (_, _, a) in zip(parts, widths, _COLS,
                                                                            strict=True)).rstrip()

    first = board[0]
    title = (f"{first['metric']} ({'lower' if first['lower_is_better'] else 'higher'} is better;"
             " mean over seeds, 95% t-interval)")
    header = line([h for h, _, _ in _COLS])
    return "\n".join([title, header, "-" * len(header), *(line(c) for c in cells)])


# ---------------------------------------------------------------- plots


def _by(aggs: Iterable[Agg], attr: str) -> dict[str, list[Agg]]:
    """Aggregates grouped by an attribute, keys sorted."""
    out: dict[str, list[Agg]] = {}
    for a in aggs:
        out.setdefault(getattr(a, attr), []).append(a)
    return dict(sorted(out.items()))


def _colors(aggs: Sequence[Agg]) -> dict[str, Any]:
    """A stable colour per method across all panels."""
    cmap = plt.get_cmap("tab10" if len({a.method for a in aggs}) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted({a.method for a in aggs}))}


def _panels(n: int) -> tuple[Figure, list[Any]]:
    """A figure with ``n`` subplots (at most 3 per row)."""
    ncols = max(1, min(3, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _x(a: Agg, xattr: str) -> float:
    """The x coordinate of an aggregate: measured NFE (target as fallback) or time/sample."""
    if xattr == "nfe":
        return a.nfe if math.isfinite(a.nfe) else float(a.nfe_target)
    return a.time_per_sample.mean


def _set_scales(ax: Any, ys: Sequence[float]) -> None:
    """Log-log axes when all values are positive; linear y otherwise (plain-text ticks)."""
    ax.set_xscale("log")
    ax.set_yscale("log" if ys and min(ys) > 0 else "linear")
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":  # plain labels: mathtext tick labels are slow to lay out
            axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _band(a: Agg, log: bool, floor: float) -> tuple[float, float]:
    """CI bounds for plotting (NaN when undefined; lower bound floored on a log axis)."""
    lo, hi = a.summary.lo, a.summary.hi
    if log and math.isfinite(lo) and lo <= 0:
        lo = floor
    return lo, hi


def _draw_method(ax: Any, items: list[Agg], xattr: str, color: Any) -> None:
    """One method's line with a shaded CI band, sorted along x."""
    pts = sorted((p for p in items if math.isfinite(_x(p, xattr))), key=lambda p: _x(p, xattr))
    if not pts:
        return
    xs = [_x(p, xattr) for p in pts]
    ys = [p.summary.mean for p in pts]
    log = ax.get_yscale() == "log"
    floor = min(y for y in ys) / 10 if log else 0.0
    bands = [_band(p, log, floor) for p in pts]
    style = "--" if pts[0].is_peer else "-"
    ax.plot(xs, ys, style, marker="o", ms=3, lw=1.2, color=color, label=pts[0].method)
    ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.18,
                    lw=0)


def _legend(fig: Figure, aggs: Sequence[Agg], colors: dict[str, Any]) -> None:
    """One small figure legend outside the panels (peers dashed)."""
    peer = {a.method: a.is_peer for a in aggs}
    handles = [plt.Line2D([], [], color=c, ls="--" if peer[m] else "-", marker="o", ms=3, label=m)
               for m, c in colors.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               frameon=False)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` as PNG, write it atomically, close it; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    _atomic_write(path, buf.getvalue())
    return path


def _empty(path: str | Path, title: str) -> Path:
    """A placeholder figure saying there is no data."""
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, f"{title}: no data", ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, path)


def _metric_label(aggs: Sequence[Agg]) -> str:
    """y-axis label: the metric name and its direction."""
    m = aggs[0].metric
    return f"{m} ({'lower' if lower_is_better(m) else 'higher'} is better)"


def _curves(aggs: Sequence[Agg], path: str | Path, xattr: str, xlabel: str) -> Path:
    """Metric against ``xattr`` per teacher panel, one line per method."""
    if not aggs:
        return _empty(path, xlabel)
    colors, teachers = _colors(aggs), _by(aggs, "teacher")
    fig, axes = _panels(len(teachers))
    for ax, (teacher, items) in zip(axes, teachers.items(), strict=True):
        _set_scales(ax, [a.summary.mean for a in items])
        for method_items in _by(items, "method").values():
            _draw_method(ax, method_items, xattr, colors[method_items[0].method])
        ax.set(title=teacher, xlabel=xlabel, ylabel=_metric_label(aggs))
        ax.grid(True, which="both", alpha=0.25, lw=0.5)
    _legend(fig, aggs, colors)
    fig.tight_layout()
    return _save(fig, path)


def plot_quality_vs_nfe(aggs: Sequence[Agg], path: str | Path) -> Path:
    """Metric vs measured NFE, log-log, per teacher, shaded 95% CI; peers dashed."""
    return _curves(aggs, path, "nfe", "NFE (measured, per sample)")


def plot_quality_vs_time(aggs: Sequence[Agg], path: str | Path) -> Path:
    """Metric vs wall-clock time per sample, log-log, per teacher, shaded 95% CI."""
    return _curves(aggs, path, "time", "time per sample [s]")


def _pareto_panel(ax: Any, items: list[Agg], colors: dict[str, Any]) -> None:
    """Scatter of one teacher's cases with its Pareto front connected and labelled."""
    pts = [a for a in items if math.isfinite(a.time_per_sample.mean)]
    sign = 1.0 if lower_is_better(items[0].metric) else -1.0
    _set_scales(ax, [a.summary.mean for a in pts])
    for a in pts:
        ax.scatter(a.time_per_sample.mean, a.summary.mean, s=14, color=colors[a.method],
                   marker="s" if a.is_peer else "o", alpha=0.6, lw=0)
    front = [pts[i] for i in pareto_front([(a.time_per_sample.mean, sign * a.summary.mean)
                                           for a in pts])]
    if not front:
        return
    ax.plot([a.time_per_sample.mean for a in front], [a.summary.mean for a in front], "-",
            color="black", lw=1.0, zorder=3)
    ax.scatter([a.time_per_sample.mean for a in front], [a.summary.mean for a in front], s=36,
               facecolors="none", edgecolors="black", lw=1.0, zorder=4)
    for a in front:
        ax.annotate(a.label, (a.time_per_sample.mean, a.summary.mean), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")


def plot_pareto(aggs: Sequence[Agg], path: str | Path) -> Path:
    """Metric vs time per sample with the non-dominated cases connected and labelled."""
    if not aggs:
        return _empty(path, "Pareto")
    colors, teachers = _colors(aggs), _by(aggs, "teacher")
    fig, axes = _panels(len(teachers))
    for ax, (teacher, items) in zip(axes, teachers.items(), strict=True):
        _pareto_panel(ax, items, colors)
        ax.set(title=f"{teacher}: Pareto front", xlabel="time per sample [s]",
               ylabel=_metric_label(aggs))
        ax.grid(True, which="both", alpha=0.25, lw=0.5)
    _legend(fig, aggs, colors)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- HTML report

_E = html.escape
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}table.sortable th{cursor:pointer}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
figure{margin:1em 0}figcaption{font-size:12px;color:#666}
.peer{color:#555;font-style:italic}
"""
_JS = """
document.querySelectorAll("table.sortable th").forEach(function(th){
 th.addEventListener("click",function(){
  var t=th.closest("table"),b=t.tBodies[0];
  var i=Array.prototype.indexOf.call(th.parentNode.children,th);
  var asc=th.dataset.dir!=="asc";th.dataset.dir=asc?"asc":"desc";
  var rs=Array.prototype.slice.call(b.rows);
  function v(r){var c=r.cells[i],s=c.getAttribute("data-v");if(s==="")return null;
   if(s===null)s=c.textContent;var f=parseFloat(s);return isNaN(f)?s.toLowerCase():f;}
  rs.sort(function(a,c){var x=v(a),y=v(c);if(x===null||y===null)return (x===null)-(y===null);
   if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rs.forEach(function(r){b.appendChild(r);});});});
"""


def _slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _td(text: str, value: float | None = None) -> str:
    """A table cell; numeric cells carry a raw sort value and align right."""
    v = _finite(value)
    if v is None and value is None:
        return f"<td>{_E(text)}</td>"
    return f'<td class="n" data-v="{v if v is not None else ""}">{_E(text)}</td>'


def _table(headers: Sequence[str], rows: Sequence[str], sortable: bool = True) -> str:
    """An HTML table from header names and pre-rendered ``<tr>`` rows."""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{_E(h)}</th>" for h in headers)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict flattened to dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _distinct(values: Iterable[Any]) -> list[str]:
    """Distinct non-empty string forms of ``values``, sorted."""
    return sorted({str(v) for v in values if v not in (None, "")})


def _env_section(rows: Sequence[Row]) -> str:
    """Table of every env key with its distinct values across rows."""
    flat = [_flatten(r.get("env") or {}) for r in rows]
    keys = sorted({k for f in flat for k in f})
    trs = [f"<tr><td>{_E(k)}</td><td>{_E(', '.join(_distinct(f.get(k) for f in flat)))}</td></tr>"
           for k in keys]
    meta = [("suites", _distinct(r.get("suite") for r in rows)),
            ("teachers", _distinct(r.get("teacher") for r in rows)),
            ("methods", _distinct(r.get("method") for r in rows))]
    lines = "".join(f"<li>{_E(k)}: {_E(', '.join(v) or _NO_DATA)}</li>" for k, v in meta)
    table = _table(["key", "distinct values"], trs, sortable=False) if trs else \
        "<p>No environment recorded.</p>"
    return f"<h2>Run environment</h2><ul><li>rows: {len(rows)}</li>{lines}</ul>{table}"


def _feature_spaces(rows: Sequence[Row]) -> list[str]:
    """Distinct ``config["feature_space"]`` descriptions."""
    return _distinct(_as_text((r.get("config") or {}).get("feature_space")) for r in rows)


def _as_text(v: Any) -> str | None:
    """A config value as display text (dicts as key=value pairs)."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return None if v is None else str(v)


def _methodology(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """Methodology paragraph: metric definitions, timing, memory and energy policy."""
    names = [*metrics, *(m for m in METRIC_DOCS if m not in metrics)]
    items = [f"<li><b>{_E(m)}</b>: {_E(METRIC_DOCS.get(m, 'see the metric documentation.'))}"
             f" ({'lower' if lower_is_better(m) else 'higher'} is better)"
             f"{'' if m in metrics else ' — not in this report'}</li>" for m in names]
    spaces = _feature_spaces(rows)
    fs = (f"<p>Feature space(s) for fd/kid: {_E('; '.join(spaces))}.</p>" if spaces else "")
    return (
        "<h2>Methodology</h2><p>Each case (teacher × method × NFE budget) is run with several "
        "seeds; tables show the mean over seeds with a two-sided 95% Student-t interval "
        "[lo, hi] (no interval when only one seed ran). NFE is the number of denoiser "
        "evaluations actually counted per sample.</p>"
        f"<ul>{''.join(items)}"
        "<li><b>time</b>: warm (after warm-up runs), wall-clock time per sample.</li>"
        "<li><b>overhead</b>: solver time not spent inside the network, per step "
        "((wall − network) / steps).</li>"
        "<li><b>memory</b>: peak memory of the timed run, in MB.</li>"
        "<li><b>energy</b>: reported only when a meter measured it; otherwise "
        "“not measured” — never an estimate.</li></ul>" + fs
    )


def _img(path: Path) -> str:
    """An embedded base64 PNG figure with its file name as caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_E(path.stem)}">'
            f"<figcaption>{_E(path.name)}</figcaption></figure>")


def _plots_section(rows: Sequence[Row], metric: str, out_dir: Path) -> str:
    """The three plots for one metric, saved next to the report and embedded."""
    aggs = aggregate(rows, metric)
    if not aggs:
        return f"<h3>{_E(metric)}</h3><p>No data for this metric.</p>"
    s = _slug(metric)
    paths = [plot_quality_vs_nfe(aggs, out_dir / f"quality_vs_nfe_{s}.png"),
             plot_quality_vs_time(aggs, out_dir / f"quality_vs_time_{s}.png"),
             plot_pareto(aggs, out_dir / f"pareto_{s}.png")]
    return f"<h3>{_E(metric)}</h3>" + "".join(_img(p) for p in paths)


def _ci_cell(mean: float | None, lo: float | None, hi: float | None) -> str:
    """A numeric cell ``mean [lo, hi]`` sortable by the mean."""
    return _td(_with_ci(mean, lo, hi), mean if mean is not None else math.nan)


def _board_tr(e: dict[str, Any]) -> str:
    """One leaderboard HTML row."""
    cells = [_td(str(e["teacher"])), _td(str(e["nfe_target"]), e["nfe_target"]),
             _td(f"{e['best']} ({e['best_impl']})"),
             _ci_cell(e["best_mean"], e["best_lo"], e["best_hi"]),
             _td(format_seconds(e["best_time_per_sample_s"]), e["best_time_per_sample_s"]
                 if e["best_time_per_sample_s"] is not None else math.nan),
             _td(e["runner_up"] or _NO_DATA),
             _ci_cell(e["runner_up_mean"], e["runner_up_lo"], e["runner_up_hi"]),
             _td(e["peer"] or _NO_DATA), _ci_cell(e["peer_mean"], e["peer_lo"], e["peer_hi"])]
    return f"<tr>{''.join(cells)}</tr>"


def _board_section(rows: Sequence[Row], metric: str) -> str:
    """Sortable leaderboard for the primary metric plus its terminal form."""
    lower = lower_is_better(metric)
    board = leaderboard(rows, metric, lower_is_better=lower)
    if not board:
        return f"<h2>Leaderboard ({_E(metric)})</h2><p>No data.</p>"
    headers = ["teacher", "NFE", "best method", f"{metric} [95% CI]", "time/sample",
               "runner-up", "runner-up metric", "best peer", "peer metric"]
    direction = "lower" if lower else "higher"
    return (f"<h2>Leaderboard ({_E(metric)}, {direction} is better)</h2>"
            "<p>Best method per teacher and NFE budget (click a header to sort).</p>"
            + _table(headers, [_board_tr(e) for e in board]))


def _energy(rows: Sequence[Row]) -> tuple[str, float]:
    """Mean measured energy with its meter, or 'not measured'."""
    vals = _finite_values(r.get("energy_j") for r in rows)
    if not vals:
        return "not measured", math.nan
    how = ", ".join(_distinct(r.get("energy_method") for r in rows if _finite(r.get("energy_j"))))
    mean = sum(vals) / len(vals)
    return f"{mean:.3g} J ({how or 'meter'})", mean


def _result_tr(key: GroupKey, rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """One full-results HTML row for a (teacher, method, NFE) group."""
    teacher, method, nfe_target = key
    cells = [_td(teacher), _td(method), _td(_impl(rows)), _td(str(nfe_target), nfe_target)]
    nfe = _mean(r.get("nfe") for r in rows)
    cells.append(_td(_num(nfe), nfe))
    for m in metrics:
        s = _summary(_metric(r, m) for r in rows)
        cells.append(_ci_cell(s.mean, s.lo, s.hi))
    t = _summary(r.get("time_per_sample_s") for r in rows)
    ov, mem = _mean(r.get("overhead_per_step_s") for r in rows), _mean(
        r.get("peak_mem_mb") for r in rows)
    energy, e_val = _energy(rows)
    cells += [_td(format_seconds(t.mean), t.mean),
              _td(format_seconds(ov), ov), _td(_num(mem) + (" MB" if _finite(mem) else ""), mem),
              _td(energy, e_val), _td(str(len(rows)), len(rows))]
    return f"<tr>{''.join(cells)}</tr>"


def _results_section(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """Full results table: every case with all metric means and CIs, time, memory, energy."""
    headers = ["teacher", "method", "impl", "NFE", "NFE (measured)",
               *(f"{m} [95% CI]" for m in metrics), "time/sample", "overhead/step",
               "peak mem", "energy", "seeds"]
    trs = [_result_tr(k, g, metrics) for k, g in _group(rows).items()]
    return "<h2>Full results</h2>" + _table(headers, trs)


def _notes(rows: Sequence[Row]) -> list[str]:
    """Distinct ``config["notes"]`` strings (a note may be a string or a list of strings)."""
    out: list[Any] = []
    for r in rows:
        n = (r.get("config") or {}).get("notes")
        out.extend(n if isinstance(n, list | tuple) else [n])
    return _distinct(out)


def _notes_section(rows: Sequence[Row]) -> str:
    """The Notes section (peer defects, caveats)."""
    notes = _notes(rows)
    body = "".join(f"<li>{_E(n)}</li>" for n in notes) if notes else "<li>None.</li>"
    return f"<h2>Notes</h2><ul>{body}</ul>"


def _load(store_or_rows: Store | str | os.PathLike[str] | Iterable[Row],
          suite: str | None) -> list[Row]:
    """Rows from a Store, a database path or an iterable of row dicts (status ok only)."""
    if isinstance(store_or_rows, str | os.PathLike):
        store_or_rows = Store(store_or_rows)
    if isinstance(store_or_rows, Store):
        return store_or_rows.rows(suite=suite)
    return [r for r in store_or_rows if r.get("status", "ok") == "ok"
            and (suite is None or r.get("suite") == suite)]


def _page(title: str, body: str) -> str:
    """A complete self-contained HTML document."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_E(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_E(title)}</h1>{body}<script>{_JS}</script></body></html>\n")


# fewstep method -> the diffusers scheduler that implements the same algorithm
PEER_PAIRS: dict[str, str] = {
    "ddim": "diffusers:ddim", "dpmpp_2m": "diffusers:dpmpp_2m",
    "dpmpp_3m": "diffusers:dpmpp_3m", "unipc_bh2": "diffusers:unipc",
    "deis_logrho": "diffusers:deis", "heun": "diffusers:heun",
}


def peer_comparison(rows: Iterable[Row], metric: str = "ode_rmse") -> list[dict[str, Any]]:
    """Median ratios fewstep / peer over cases matched by (teacher, NFE, seed): time per
    sample, solver overhead per step, and the metric."""
    by = {(r["method"], r["teacher"], r["nfe_target"], r["seed"]): r for r in rows}
    out = []
    for ours, peer in PEER_PAIRS.items():
        pairs = [(r, by[(peer, *k[1:])]) for k, r in by.items()
                 if k[0] == ours and (peer, *k[1:]) in by]
        if not pairs:
            continue
        ratio = {name: _median_ratio(pairs, fn) for name, fn in (
            ("time", lambda r: r.get("time_per_sample_s")),
            ("overhead", lambda r: r.get("overhead_per_step_s")),
            ("metric", lambda r: _metric(r, metric)))}
        out.append({"method": ours, "peer": peer, "cases": len(pairs), "metric": metric,
                    "time_ratio": ratio["time"], "overhead_ratio": ratio["overhead"],
                    "metric_ratio": ratio["metric"]})
    return out


def _median_ratio(pairs: Sequence[tuple[Row, Row]], fn: Any) -> float | None:
    vals = sorted(a / b for a, b in ((_finite(fn(x)), _finite(fn(y))) for x, y in pairs)
                  if a is not None and b)
    return vals[len(vals) // 2] if vals else None


def format_peer_comparison(comp: Sequence[dict[str, Any]]) -> str:
    """Terminal table of :func:`peer_comparison` (ratios < 1: fewstep is faster / better)."""
    if not comp:
        return "no fewstep/peer pairs in these results"
    head = f"{'fewstep':12s} {'peer':20s} {'cases':>5s} {'time':>7s} {'overhead':>9s} " \
           f"{comp[0]['metric']:>9s}"
    lines = ["fewstep / peer, median ratio over matched cases (< 1: fewstep lower)", head,
             "-" * len(head)]
    for c in comp:
        cells = [_num(c[k]) if c[k] is not None else "n/a"
                 for k in ("time_ratio", "overhead_ratio", "metric_ratio")]
        lines.append(f"{c['method']:12s} {c['peer']:20s} {c['cases']:5d} {cells[0]:>7s} "
                     f"{cells[1]:>9s} {cells[2]:>9s}")
    return "\n".join(lines)


def _peer_section(rows: Sequence[Row], metric: str) -> str:
    comp = peer_comparison(rows, metric)
    if not comp:
        return ""
    head = "".join(f"<th>{_E(h)}</th>" for h in ("fewstep", "peer", "matched cases",
                                                  "time / sample ratio", "overhead / step ratio",
                                                  f"{metric} ratio"))
    body = "".join("<tr>" + "".join(f"<td>{_E(str(v))}</td>" for v in (
        c["method"], c["peer"], c["cases"],
        *(_num(c[k]) if c[k] is not None else "n/a"
          for k in ("time_ratio", "overhead_ratio", "metric_ratio")))) + "</tr>" for c in comp)
    return ("<h2>fewstep beside diffusers</h2><p>Median of fewstep / peer over cases matched "
            "by teacher, NFE and seed (same denoiser, same start noise). Below 1: fewstep is "
            f"faster or has the lower {_E(metric)}.</p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def write_report(store_or_rows: Store | str | os.PathLike[str] | Iterable[Row],
                 out_dir: str | Path, suite: str | None = None,
                 metric: str = "ode_rmse") -> Path:
    """Write ``out_dir/report.html`` (plots embedded and saved alongside); returns its path."""
    rows = _load(store_or_rows, suite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = [metric, *(m for m in metrics_present(rows) if m != metric)]
    title = f"fewstep benchmark report{f' — suite {suite}' if suite else ''}"
    body = "".join([
        _env_section(rows), _methodology(rows, metrics), _board_section(rows, metric),
        f"<h2>Plots</h2><p>Primary metric: {_E(metric)}. Shaded bands: 95% CI over seeds; "
        "dashed lines / square markers: peer implementations.</p>",
        *(_plots_section(rows, m, out) for m in metrics),
        _peer_section(rows, metric), _results_section(rows, metrics), _notes_section(rows),
    ])
    path = out / "report.html"
    _atomic_write(path, _page(title, body).encode("utf-8"))
    return path
