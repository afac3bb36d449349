"""The HTML report: decision table first, then leaderboard, disagreements, quality vs
amortised cost, convergence as NFE grows, failures, plots, peers, full results, notes,
methodology and environment, in one self-contained page.

Everything here is read-only on the store; files are written atomically, so a crashed
report never leaves a half-written file.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from fewstep._io import atomic_write
from fewstep.bench import baselines
from fewstep.bench.store import Store
from fewstep.metrics import registry as metric_registry

from .aggregate import (
    GroupKey,
    Row,
    aggregate,
    failure_summary,
    finite,
    finite_values,
    group,
    impl_of,
    load,
    mean_of,
    metric_summary,
    metric_value,
    metrics_present,
    skipped_summary,
)
from .convergence import MIN_NFE, PLATEAU_TOL, convergence, nominal_order
from .cost import AMORTISE_OVER, amortised, amortised_fronts, one_off_cost
from .peers import peer_comparison
from .plots import plot_amortised, plot_pareto, plot_quality_vs_nfe
from .ranking import ALPHA, Decision, decide, disagreements, leaderboard
from .text import (
    NO_DATA,
    NONE_ELIGIBLE,
    few_seeds,
    format_seconds,
    num,
    plateau_text,
    short_labels,
    tie_text,
    with_ci,
)

__all__ = ["write_report"]

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
    v = finite(value)
    if v is None and value is None:
        return f"<td>{_E(text)}</td>"
    return f'<td class="n" data-v="{v if v is not None else ""}">{_E(text)}</td>'


def _table(headers: Sequence[str], rows: Sequence[str], sortable: bool = True) -> str:
    """An HTML table from header names and pre-rendered ``<tr>`` rows."""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{_E(h)}</th>" for h in headers)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# method -> its short label in this report (set by write_report; see text.short_labels)
_LABELS: ContextVar[Mapping[str, str] | None] = ContextVar("_LABELS", default=None)


def _name(label: str) -> str:
    """A case or method label (``method`` or ``method@nfe``) as HTML: its short name, with
    the full method string in a ``title`` tooltip when they differ."""
    method, at, nfe = label.rpartition("@") if "@" in label else (label, "", "")
    short = (_LABELS.get() or {}).get(method, method)
    if short == method:
        return _E(label)
    return f'<span title="{_E(method)}">{_E(short + at + nfe)}</span>'


def _names(labels: Iterable[str], sep: str = ", ") -> str:
    return sep.join(_name(x) for x in labels)


def _td_html(inner: str) -> str:
    """A text cell of pre-rendered (escaped) HTML."""
    return f"<td>{inner}</td>"


def _tr(cells: Iterable[str]) -> str:
    return f"<tr>{''.join(cells)}</tr>"


def _ci_cell(mean: float | None, lo: float | None, hi: float | None) -> str:
    """A numeric cell ``mean [lo, hi]`` sortable by the mean."""
    return _td(with_ci(mean, lo, hi), mean if mean is not None else math.nan)


def _direction(metric: str) -> str:
    spec = metric_registry.get(metric)
    return f"{metric}, {spec.direction} is better"


# ---------------------------------------------------------------- decision and rankings


def _decision_tr(d: Decision) -> str:
    best = d.ranking.best
    flagged = sorted({f"{_name(a.label)}: {_E(why)}" for a in d.ranking.ranked
                      if a.nfe_target == d.budget and (why := d.ranking.flags.get(a.label))
                      and why != "baseline"})
    if best is None:
        return _tr([_td(d.teacher), _td(str(d.budget), d.budget), _td(NONE_ELIGIBLE), _td(""),
                    _td(""), _td(""), _td_html("; ".join(flagged))])
    return _tr([_td(d.teacher), _td(str(d.budget), d.budget), _td_html(_name(best.label)),
                _ci_cell(best.summary.mean, best.summary.lo, best.summary.hi),
                _td(format_seconds(best.time_per_sample.mean), best.time_per_sample.mean),
                _td_html(_names(a.label for a in d.ranking.tie_group[1:]) or NO_DATA),
                _td_html("; ".join(flagged))])


def _front_tr(teacher: str, d: Decision) -> str:
    return _tr([_td(teacher), _td_html(", ".join(
        f"{_name(a.label)} ({format_seconds(a.time_per_sample.mean)}, {num(a.summary.mean)})"
        for a in d.front) or NO_DATA)])


def _decision_section(rows: Sequence[Row], metric: str) -> str:
    decisions = decide(rows, metric)
    if not decisions:
        return f"<h2>Decision ({_E(metric)})</h2><p>No data.</p>"
    fronts = {d.teacher: d for d in decisions}
    head = ["teacher", "NFE ≤", "use", f"{metric} [95% CI]", "time/sample",
            "tied with (not significantly worse)", "flagged at this NFE (cannot be best)"]
    return (f"<h2>Decision ({_E(_direction(metric))})</h2>"
            "<p>At NFE ≤ k per sample, use the method named: the best eligible case among all "
            f"budgets up to k. <i>Tied with</i> lists every case not significantly worse (paired "
            f"t-test over seeds on the same start noise, Holm-corrected, α = {ALPHA}); pick any "
            "of them. Baselines, methods not significantly better than a trivial baseline and "
            "peers shown beside their fewstep twin are never named.</p>"
            + (f"<p><b>{_E(w)}</b></p>" if (w := few_seeds(decisions)) else "")
            + _table(head, [_decision_tr(d) for d in decisions], sortable=False)
            + "<h3>Quality vs wall-clock: Pareto front (eligible cases, fastest first)</h3>"
            "<p>Under a time budget t per sample, use the last front entry with time ≤ t.</p>"
            + _table(["teacher", "front: case (time/sample, metric)"],
                     [_front_tr(t, d) for t, d in fronts.items()], sortable=False))


def _board_tr(e: dict[str, Any]) -> str:
    flagged = "; ".join(f"{_name(m)}: {_E(why)}" for m, why in sorted(e["flagged"].items()))
    return _tr([_td(str(e["teacher"])), _td(str(e["nfe_target"]), e["nfe_target"]),
                _td_html(f"{_name(e['best'])} ({_E(e['best_impl'])})" if e["best"]
                         else NONE_ELIGIBLE),
                _ci_cell(e["best_mean"], e["best_lo"], e["best_hi"]),
                _td(format_seconds(e["best_time_per_sample_s"]),
                    e["best_time_per_sample_s"] if e["best_time_per_sample_s"] is not None
                    else math.nan),
                _td_html(tie_text([_name(t) for t in e["tied"]], 6)),
                _td_html(_name(e["runner_up"]) if e["runner_up"] else NO_DATA),
                _ci_cell(e["runner_up_mean"], e["runner_up_lo"], e["runner_up_hi"]),
                _td_html(_name(e["peer"]) if e["peer"] else NO_DATA),
                _ci_cell(e["peer_mean"], e["peer_lo"], e["peer_hi"]),
                _td_html(flagged or NO_DATA)])


def _board_section(rows: Sequence[Row], metric: str) -> str:
    board = leaderboard(rows, metric)
    if not board:
        return f"<h2>Leaderboard ({_E(metric)})</h2><p>No data.</p>"
    headers = ["teacher", "NFE", "best method", f"{metric} [95% CI]", "time/sample",
               "tied with best", "runner-up", "runner-up metric", "best peer", "peer metric",
               "flagged (cannot be best)"]
    return (f"<h2>Leaderboard ({_E(_direction(metric))})</h2>"
            "<p>Best eligible method at exactly each NFE budget (click a header to sort).</p>"
            + _table(headers, [_board_tr(e) for e in board]))


def _disagreement_section(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    found = disagreements(rows, metrics)
    intro = ("<h2>Where metrics disagree</h2><p>Budgets where two metrics name different "
             "best methods and at least one is outside the other metric's tie group.</p>")
    if not found:
        return intro + "<p>None: every metric's best is tied under the others.</p>"
    trs = [_tr([_td(d["teacher"]), _td(str(d["nfe"]), d["nfe"]),
                _td_html(f"{_E(d['metric_a'])}: {_name(d['best_a'])}"),
                _td_html(f"{_E(d['metric_b'])}: {_name(d['best_b'])}")])
           for d in found]
    return intro + _table(["teacher", "NFE", "one metric's best", "another's best"], trs)


def _cost_text(v: float, unit: str = "") -> str:
    return "not known" if not math.isfinite(v) else f"{num(v)}{unit}"


def _amortised_section(rows: Sequence[Row], metric: str, out_dir: Path) -> str:
    """Each case's one-off cost beside its sampling cost, the cost per sample amortised over
    10^3 and 10^6 samples, and the Pareto front of the metric against it (table and plot)."""
    points = amortised(rows, metric)
    if not points:
        return "<h2>Quality vs amortised cost</h2><p>No data.</p>"
    fronts = amortised_fronts(points)
    front_trs = [_tr([_td(t), _td(f"{m:.0e}", m), _td_html(", ".join(
        f"{_name(p.agg.label)} ({format_seconds(p.seconds(m))}, {num(p.agg.summary.mean)})"
        for p in front) or NO_DATA)]) for m, by_t in fronts.items() for t, front in by_t.items()]
    runs = [p for p in points if not p.agg.is_baseline]
    cost_trs = [_tr([_td(p.agg.teacher), _td_html(_name(p.agg.label)),
                     _td(_cost_text(p.one_off_s, " s"), p.one_off_s),
                     _td(_cost_text(p.one_off_nfe), p.one_off_nfe),
                     _td(format_seconds(p.per_sample_s), p.per_sample_s),
                     *(_td(format_seconds(p.seconds(m)) if math.isfinite(p.seconds(m))
                           else "not known", p.seconds(m)) for m in AMORTISE_OVER),
                     _ci_cell(p.agg.summary.mean, p.agg.summary.lo, p.agg.summary.hi)])
                for p in runs]
    plot = plot_amortised(points, out_dir / f"amortised_{_slug(metric)}.png")
    return ("<h2>Quality vs amortised cost</h2><p>A method's cost per sample is its sampling "
            "time plus set-up per sample plus its one-off cost (training a student, tuning a "
            "solver: seconds and teacher evaluations, as recorded in its rows) spread over the M "
            "samples drawn with it. Training-free methods cost nothing once; a student whose "
            "training cost was not recorded is shown as <i>not known</i> and left off the front. "
            "Front: eligible cases (as in the decision table) not beaten on both cost and "
            f"{_E(metric)}, cheapest first.</p>"
            + _table(["teacher", "M samples", "front: case (seconds/sample, metric)"],
                     front_trs, sortable=False)
            + _img(plot)
            + _table(["teacher", "case", "one-off seconds", "one-off teacher NFE",
                      "sampling s/sample", *(f"s/sample over {m:.0e}" for m in AMORTISE_OVER),
                      f"{metric} [95% CI]"], cost_trs))


def _convergence_section(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """The convergence table for ode_rmse and for the primary metric when it is another
    lower-is-better error."""
    errors = [m for m in dict.fromkeys(["ode_rmse", *metrics[:1]]) if m in metrics
              and not metric_registry.get(m).higher_is_better and metric_registry.get(m).positive]
    parts = []
    for m in errors:
        conv = convergence(rows, m)
        if not conv:
            continue
        trs = [_tr([_td(c.teacher), _td_html(_name(c.method)),
                    _ci_cell(c.order.mean, c.order.lo, c.order.hi),
                    _td(str(nominal_order(c.method) or NO_DATA)),
                    _td(", ".join(map(str, c.fit_nfe)) or "too few asymptotic budgets"),
                    _td(plateau_text(c), c.plateau_nfe), _td(num(c.plateau), c.plateau)])
               for c in conv]
        parts.append(f"<h3>{_E(_direction(m))}</h3>" + _table(
            ["teacher", "method", "empirical order [95% CI over seeds]", "nominal order",
             "NFE fitted", f"plateau NFE (within {PLATEAU_TOL:.0%})", "plateau"], trs))
    intro = ("<h2>Convergence as NFE grows</h2><p>Empirical order: −slope of log error on log "
             f"NFE, fitted per seed over the asymptotic budgets (NFE ≥ {MIN_NFE}, and below the "
             "plateau NFE when the plateau is reached), mean and 95% Student-t interval over "
             "seeds. Plateau: the error at the largest NFE run; plateau NFE: the smallest NFE "
             f"whose error is within {PLATEAU_TOL:.0%} of it (“&gt; N”: the error still falls at "
             "the largest NFE N). On ode_rmse the floor is the reference solution's own "
             "accuracy and float rounding.</p>")
    return intro + ("".join(parts) or f"<p>No method ran at NFE ≥ {MIN_NFE}.</p>")


def _failed_section(failed: Sequence[Row], n_ok: int) -> str:
    summary = failure_summary(failed)
    if not summary:
        return "<h2>Failed cases</h2><p>None.</p>"
    trs = [_tr([_td(msg), _td(str(n), n), _td(str(r.get("key"))),
                _td(f"{r.get('teacher')} {r.get('method')} nfe={r.get('nfe_target')} "
                    f"seed={r.get('seed')}")]) for msg, n, r in summary]
    lead = (f"<p><b>All {len(failed)} cases failed</b>; nothing below is a result.</p>"
            if n_ok == 0 else f"<p>{len(failed)} of {len(failed) + n_ok} cases failed.</p>")
    return ("<h2>Failed cases</h2>" + lead
            + _table(["error", "cases", "one case key", "that case"], trs))


def _skipped_section(skipped: Sequence[str]) -> str:
    if not skipped:
        return ""
    trs = [_tr([_td(_name(method)), _td(what)]) for method, what in skipped_summary(skipped)]
    return ("<h2>Not run</h2><p>Budgets the suite names that a method cannot spend exactly "
            "(never silently changed to another budget), and methods not run on this grid, "
            f"with the reason ({len(skipped)} in all).</p>"
            + _table(["method", "not run: NFE and reason"], trs))


# ---------------------------------------------------------------- plots, peers, full results


def _img(path: Path) -> str:
    """An embedded base64 PNG figure with its file name as caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_E(path.stem)}">'
            f"<figcaption>{_E(path.name)}</figcaption></figure>")


def _plots_section(rows: Sequence[Row], metric: str, out_dir: Path) -> str:
    """The two plots for one metric, saved next to the report and embedded: quality vs NFE,
    and quality vs time per sample with the Pareto front (a plain quality-vs-time plot would
    repeat the second's axes)."""
    aggs = aggregate(rows, metric)
    if not aggs:
        return f"<h3>{_E(metric)}</h3><p>No data for this metric.</p>"
    s = _slug(metric)
    paths = [plot_quality_vs_nfe(aggs, out_dir / f"quality_vs_nfe_{s}.png"),
             plot_pareto(aggs, out_dir / f"pareto_{s}.png")]
    return f"<h3>{_E(metric)}</h3>" + "".join(_img(p) for p in paths)


def _peer_section(rows: Sequence[Row], metric: str) -> str:
    comp = peer_comparison(rows, metric)
    if not comp:
        return ""
    trs = [_tr(_td(str(v)) for v in (
        c["method"], c["peer"], c["cases"],
        *(num(c[k]) if c[k] is not None else "n/a"
          for k in ("time_ratio", "overhead_ratio", "metric_ratio")))) for c in comp]
    return ("<h2>fewstep beside diffusers</h2><p>Each diffusers row runs the same algorithm as "
            "the fewstep row beside it, so it is compared here rather than ranked as a rival. "
            "Median of fewstep / peer over cases matched by teacher, NFE and seed (same "
            f"denoiser, same start noise). Below 1: fewstep is faster or has the lower "
            f"{_E(metric)}.</p>"
            + _table(["fewstep", "peer", "matched cases", "time / sample ratio",
                      "overhead / step ratio", f"{metric} ratio"], trs, sortable=False))


def _energy(rows: Sequence[Row]) -> tuple[str, float]:
    """Mean measured energy with its meter, or 'not measured'."""
    vals = finite_values(r.get("energy_j") for r in rows)
    if not vals:
        return "not measured", math.nan
    how = ", ".join(_distinct(r.get("energy_method") for r in rows if finite(r.get("energy_j"))))
    mean = sum(vals) / len(vals)
    return f"{mean:.3g} J ({how or 'meter'})", mean


def _result_tr(key: GroupKey, rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """One full-results HTML row for a (teacher, method, NFE) group."""
    teacher, method, nfe_target = key
    nfe = mean_of(r.get("nfe") for r in rows)
    cells = [_td(teacher), _td_html(_name(method)), _td(impl_of(rows)),
             _td(str(nfe_target), nfe_target),
             _td(num(nfe), nfe)]
    for m in metrics:
        s = metric_summary((metric_value(r, m) for r in rows), m)
        cells.append(_ci_cell(s.mean, s.lo, s.hi))
    t = mean_of(r.get("time_per_sample_s") for r in rows)
    ov, mem = mean_of(r.get("overhead_per_step_s") for r in rows), mean_of(
        r.get("peak_mem_mb") for r in rows)
    energy, e_val = _energy(rows)
    costs = [one_off_cost(r) for r in rows]
    once_s, once_nfe = (sum(c[k] for c in costs) / len(costs) for k in (0, 1))
    cells += [_td(format_seconds(t), t), _td(format_seconds(ov), ov),
              _td(num(mem) + (" MB" if finite(mem) else ""), mem),
              _td(energy, e_val), _td(_cost_text(once_s, " s"), once_s),
              _td(_cost_text(once_nfe), once_nfe), _td(str(len(rows)), len(rows))]
    return _tr(cells)


def _results_section(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """Full results table: every case with all metric intervals, time, memory, energy."""
    headers = ["teacher", "method", "impl", "NFE", "NFE (measured)",
               *(f"{m} [95% CI]" for m in metrics), "time/sample", "overhead/step",
               "peak mem", "energy", "one-off seconds", "one-off teacher NFE", "seeds"]
    trs = [_result_tr(k, g, metrics) for k, g in group(rows).items()]
    return "<h2>Full results</h2>" + _table(headers, trs)


# ---------------------------------------------------------------- notes, methodology, env


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


def _as_text(v: Any) -> str | None:
    """A config value as display text (dicts as key=value pairs)."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return None if v is None else str(v)


def _notes(rows: Sequence[Row]) -> list[str]:
    """Distinct ``config["notes"]`` strings (a note may be a string or a list of strings)."""
    out: list[Any] = []
    for r in rows:
        n = (r.get("config") or {}).get("notes")
        out.extend(n if isinstance(n, list | tuple) else [n])
    return _distinct(out)


def _notes_section(rows: Sequence[Row], unregistered: Sequence[str]) -> str:
    notes = _notes(rows)
    if unregistered:
        notes.append(f"metrics not in fewstep.metrics.registry, so not ranked or plotted: "
                     f"{', '.join(unregistered)}")
    body = "".join(f"<li>{_E(n)}</li>" for n in notes) if notes else "<li>None.</li>"
    return f"<h2>Notes</h2><ul>{body}</ul>"


def _methodology(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """Metric definitions from the registry, the statistics, and the measurement policy."""
    items = []
    for m in [*metrics, *(m for m in metric_registry.available() if m not in metrics)]:
        s = metric_registry.get(m)
        floor = "" if s.floor is None else f", best possible {s.floor:g}"
        items.append(f"<li><b>{_E(m)}</b>: {_E(s.doc)}. {s.direction.capitalize()} is better; "
                     f"range [{s.lo:g}, {s.hi:g}]{floor}; {_E(s.unit)}; {_E(s.feature_space)}"
                     f"{'' if m in metrics else ' — not in this report'}.</li>")
    spaces = _distinct(_as_text((r.get("config") or {}).get("feature_space")) for r in rows)
    fs = f"<p>Feature space(s) for fd/kid: {_E('; '.join(spaces))}.</p>" if spaces else ""
    base = "".join(f"<li><b>{_E(b.name)}</b>: {_E(b.doc)}"
                   f"{' (trivial)' if b.trivial else ''}.</li>"
                   for b in baselines.BASELINES.values())
    return (
        "<h2>Methodology</h2><p>Each case (teacher × method × NFE budget) runs with several "
        "seeds; every method of a teacher starts from the same noise for a given seed. "
        "Intervals are 95% and stay inside each metric's range: for metrics in [0, ∞) the "
        "centre is the geometric mean over seeds with a Student-t interval on the log scale; "
        "otherwise the arithmetic mean with a Student-t interval clipped to the range (no "
        "interval with one seed). Two cases are compared by a one-sided paired t-test on their "
        "per-seed differences (log ratios for [0, ∞) metrics). A tie group is the best eligible "
        f"case and every eligible case not significantly worse at α = {ALPHA}, Holm-corrected "
        "over the comparisons with the best. A case is flagged, and never named best, when it "
        "is not significantly better (paired, one-sided, α = 0.05, uncorrected) than a trivial "
        "baseline of its teacher, or when it is a peer whose fewstep twin ran. NFE is the "
        f"number of denoiser evaluations actually counted per sample.</p><p>Baselines:</p>"
        f"<ul>{base}</ul><ul>{''.join(items)}"
        "<li><b>time</b>: warm (after warm-up runs), wall-clock time per sample.</li>"
        "<li><b>overhead</b>: solver time not spent inside the network, per step "
        "((wall − network) / steps).</li>"
        "<li><b>memory</b>: peak memory of the timed run, in MB.</li>"
        "<li><b>energy</b>: reported only when a meter measured it; otherwise "
        "“not measured” — never an estimate.</li></ul>" + fs
    )


def _env_section(rows: Sequence[Row], failed: Sequence[Row]) -> str:
    """Table of every env key with its distinct values across rows."""
    flat = [_flatten(r.get("env") or {}) for r in rows]
    keys = sorted({k for f in flat for k in f})
    trs = [f"<tr><td>{_E(k)}</td><td>{_E(', '.join(_distinct(f.get(k) for f in flat)))}</td></tr>"
           for k in keys]
    meta = [("suites", _distinct(r.get("suite") for r in rows)),
            ("teachers", _distinct(r.get("teacher") for r in rows)),
            ("methods", _distinct(r.get("method") for r in rows))]
    lines = "".join(f"<li>{_E(k)}: {_E(', '.join(v) or NO_DATA)}</li>" for k, v in meta)
    legend = [(short, m) for m, short in (_LABELS.get() or {}).items() if short != m]
    if legend:
        lines += ("<li>short names in the tables (hover one for its full string): "
                  + "; ".join(f"{_E(short)} = <code>{_E(m)}</code>" for short, m in legend)
                  + "</li>")
    table = _table(["key", "distinct values"], trs, sortable=False) if trs else \
        "<p>No environment recorded.</p>"
    return (f"<h2>Run environment</h2><ul><li>finished cases: {len(rows)}; failed cases: "
            f"{len(failed)}</li>{lines}</ul>{table}")


def _page(title: str, body: str) -> str:
    """A complete self-contained HTML document."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_E(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_E(title)}</h1>{body}<script>{_JS}</script></body></html>\n")


def write_report(store_or_rows: Store | str | os.PathLike[str] | Iterable[Row],
                 out_dir: str | Path, suite: str | None = None,
                 metric: str = "ode_rmse") -> Path:
    """Write ``out_dir/report.html`` (plots embedded and saved alongside); returns its path.

    ``store_or_rows``: a Store, its path, or rows (failed rows, status "error", are listed
    in the failed-cases section; a Store also gives the budgets the run skipped, in the "Not
    run" section). Raises ValueError for an unregistered ``metric``.
    """
    metric_registry.get(metric)
    if isinstance(store_or_rows, str | os.PathLike):
        store_or_rows = Store(os.fspath(store_or_rows))
    rows, failed = load(store_or_rows, suite)
    skipped = [r for _, r in store_or_rows.skipped(suite)] if isinstance(store_or_rows, Store) \
        else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    present = metrics_present(rows)
    known = set(metric_registry.available())
    metrics = [metric, *(m for m in present if m != metric and m in known)]
    title = f"fewstep benchmark report{f' — suite {suite}' if suite else ''}"
    token = _LABELS.set(short_labels(r.get("method") for r in [*rows, *failed]))
    try:
        body = _body(rows, failed, skipped, metric, metrics, out)
    finally:
        _LABELS.reset(token)
    path = out / "report.html"
    data = _page(title, body).encode("utf-8")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _body(rows: Sequence[Row], failed: Sequence[Row], skipped: Sequence[str], metric: str,
          metrics: Sequence[str], out: Path) -> str:
    alarm = (f"<p><b>All {len(failed)} cases failed</b>: see Failed cases.</p>"
             if failed and not rows else "")
    return "".join([
        alarm, _decision_section(rows, metric), _board_section(rows, metric),
        _disagreement_section(rows, metrics), _amortised_section(rows, metric, out),
        _convergence_section(rows, metrics), _failed_section(failed, len(rows)),
        _skipped_section(skipped),
        f"<h2>Plots</h2><p>Primary metric: {_E(metric)}. Per panel: the frontier (thick grey "
        "line: best eligible case at each cost), the best method of each family in colour "
        "with its 95% band, every other method in light grey; hollow markers: flagged cases; "
        "dashed: peers; horizontal lines: baselines.</p>",
        *(_plots_section(rows, m, out) for m in metrics),
        _peer_section(rows, metric), _results_section(rows, metrics),
        _notes_section(rows, [m for m in metrics_present(rows)
                              if m not in metric_registry.available()]),
        _methodology(rows, metrics), _env_section(rows, failed),
    ])
