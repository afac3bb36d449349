"""Report figures: metric vs NFE, metric vs time, and the Pareto front, one panel per teacher.

Per panel only the frontier (best eligible case at each cost, black) and the best method of
each family (in the family's colour, with its range-respecting 95% band) stand out; every
other method is a thin light-grey line. Flagged cases (no better than a trivial baseline,
or a peer shown beside its twin) have hollow markers; baselines are horizontal lines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullFormatter

from fewstep import solvers
from fewstep._io import atomic_write
from fewstep.metrics import registry as metric_registry

from .aggregate import Agg
from .cost import CostPoint, amortised_fronts
from .ranking import pareto_front, sanity_flags

__all__ = ["family", "plot_amortised", "plot_pareto", "plot_quality_vs_nfe"]

_DPI = 110
_GREY = "#c4c4c4"
_FAMILY_MODULES = {"euler": "Euler / DDIM / Heun", "dpm": "DPM-Solver", "multistep":
                   "iPNDM / DEIS", "unipc": "UniPC", "consistency": "consistency"}
_FAMILIES = [*_FAMILY_MODULES.values(), "diffusers", "students", "other"]
_COLOURS = dict(zip(_FAMILIES, ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#8c564b",
                                "#9467bd", "#e377c2", "#17becf"), strict=True))


def family(a: Agg) -> str:
    """The method family of a case: the solver's module, "diffusers", "students" or
    "other"."""
    if a.is_peer:
        return "diffusers" if a.method.startswith("diffusers:") else "other"
    if a.method.startswith("student:"):
        return "students"
    try:
        module = solvers.get(a.method).fn.__module__.rsplit(".", 1)[-1]
    except ValueError:
        return "other"
    return _FAMILY_MODULES.get(module, "other")


def _x(a: Agg, xattr: str) -> float:
    if xattr == "nfe":
        return a.nfe if math.isfinite(a.nfe) else float(a.nfe_target)
    return a.time_per_sample.mean


def _by_method(aggs: Sequence[Agg]) -> dict[str, list[Agg]]:
    out: dict[str, list[Agg]] = {}
    for a in aggs:
        out.setdefault(a.method, []).append(a)
    return out


def _family_best(runs: Sequence[Agg]) -> dict[str, str]:
    """family -> the member with the best mean rank within the family over the budgets."""
    ranks: dict[str, list[int]] = {}
    budgets: dict[tuple[str, int], list[Agg]] = {}
    for a in runs:
        budgets.setdefault((family(a), a.nfe_target), []).append(a)
    for items in budgets.values():
        items.sort(key=lambda a: metric_registry.get(a.metric).sign * a.summary.mean)
        for i, a in enumerate(items):
            ranks.setdefault(a.method, []).append(i)
    best: dict[str, tuple[float, str]] = {}
    for a in runs:
        score = (sum(ranks[a.method]) / len(ranks[a.method]), a.method)
        f = family(a)
        if f not in best or score < best[f]:
            best[f] = score
    return {f: m for f, (_, m) in sorted(best.items(), key=lambda kv: _FAMILIES.index(kv[0]))}


def _set_scales(ax: Any, ys: Sequence[float], positive: bool) -> bool:
    """Log x; log y for a [0, inf) metric whose values are all positive (returns whether y
    is log). Bounded metrics (fractions) stay linear."""
    log = positive and bool(ys) and min(ys) > 0
    ax.set_xscale("log")
    ax.set_yscale("log" if log else "linear")
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":  # plain labels: mathtext tick labels are slow to lay out
            axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            axis.set_minor_formatter(NullFormatter())
    return log


def _label_minor_ticks(ax: Any) -> None:
    """Label minor ticks (2, 5 x 10^k) on log axes spanning less than a decade only: tick
    labels dominate drawing time."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() == "log" and lo > 0 and hi / lo < 10:
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False,
                                                  minor_thresholds=(1, 0.4)))


def _line(ax: Any, pts: list[Agg], xattr: str, flags: dict[tuple[str, int], str],
          colour: str | None, label: str | None) -> None:
    """One method along x: coloured with its 95% band (bounds <= 0 dropped on a log axis),
    or thin grey without; flagged cases get hollow markers. Against time the points are not
    joined (timing noise reorders them): coloured ones get vertical interval bars."""
    pts = sorted((p for p in pts if math.isfinite(_x(p, xattr))), key=lambda p: _x(p, xattr))
    if not pts:
        return
    xs, ys = [_x(p, xattr) for p in pts], [p.summary.mean for p in pts]
    joined = xattr == "nfe"
    style = ("--" if pts[0].is_peer else "-") if joined else "none"
    if colour is None:
        ax.plot(xs, ys, ls=style, marker="" if joined else ".", ms=3, color=_GREY, lw=0.7,
                zorder=1)
        return
    ax.plot(xs, ys, ls=style, color=colour, lw=1.4, zorder=3, label=label,
            marker="" if joined else "o", ms=3.5)
    for p, x, y in zip(pts, xs, ys, strict=True):
        if (p.method, p.nfe_target) in flags:
            ax.plot([x], [y], "o", ms=3.5, color=colour, mfc="white", zorder=4)
        elif joined:
            ax.plot([x], [y], "o", ms=3.5, color=colour, zorder=4)
    log = ax.get_yscale() == "log"
    lo = [p.summary.lo if not (log and p.summary.lo <= 0) else math.nan for p in pts]
    hi = [p.summary.hi for p in pts]
    if joined:
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0, zorder=2)
    else:
        ax.vlines(xs, lo, hi, color=colour, alpha=0.5, lw=1.0, zorder=2)


def _baselines(ax: Any, base: Sequence[Agg]) -> None:
    """Horizontal lines labelled at the right edge; values off the axis are only named."""
    lo, hi = ax.get_ylim()
    off: list[str] = []
    at: dict[str, tuple[float, list[str]]] = {}
    for b in sorted(base, key=lambda b: b.method):
        y = b.summary.mean
        if not (math.isfinite(y) and lo <= y <= hi):
            off.append(f"{b.method.removeprefix('baseline:')} = {y:.2g}")
            continue
        ref = b.method == "baseline:reference"
        ax.axhline(y, ls="-." if ref else ":", color="black" if ref else "#666666", lw=1.0,
                   zorder=1)
        at.setdefault(f"{y:.3g}", (y, []))[1].append(b.method.removeprefix("baseline:"))
    for y, names in at.values():  # one label per distinct level
        ax.annotate("baseline: " + " = ".join(names), (1.0, y),
                    xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom",
                    color="#444444")
    if off:
        ax.text(0.01, 0.01, "off axis: " + ", ".join(off), transform=ax.transAxes, fontsize=6,
                color="#444444")
    ax.set_ylim(lo, hi)


def _frontier(runs: Sequence[Agg], flags: dict[tuple[str, int], str], xattr: str) -> list[Agg]:
    ok = [a for a in runs if (a.method, a.nfe_target) not in flags]
    pts = [(_x(a, xattr), metric_registry.get(a.metric).sign * a.summary.mean) for a in ok]
    return [ok[i] for i in pareto_front(pts)]


def _panel(ax: Any, items: list[Agg], xattr: str, annotate: bool) -> None:
    """One teacher: grey lines, family-best lines in colour, frontier, baselines."""
    flags = sanity_flags(items)
    runs = [a for a in items if not a.is_baseline and math.isfinite(_x(a, xattr))]
    base = [a for a in items if a.is_baseline]
    _set_scales(ax, [a.summary.mean for a in runs],
                metric_registry.get(items[0].metric).positive)
    best = _family_best(runs)
    chosen = {m: f for f, m in best.items()}
    for method, pts in _by_method(runs).items():
        f = chosen.get(method)
        _line(ax, pts, xattr, flags, _COLOURS[f] if f else None, method if f else None)
    front = _frontier(runs, flags, xattr)
    if front:
        ax.plot([_x(a, xattr) for a in front], [a.summary.mean for a in front], "-",
                color="black", lw=3.0, alpha=0.3, zorder=2, label="frontier")
        if annotate:
            for a in front:
                ax.annotate(a.label, (_x(a, xattr), a.summary.mean), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    ax.legend(fontsize=6, loc="best", frameon=False)
    _baselines(ax, base)
    _label_minor_ticks(ax)


_PANEL_IN = (5.6, 4.0)  # one panel's width and height, inches
_MARGIN_IN = {"left": 0.85, "right": 0.15, "bottom": 0.55, "top": 0.35, "wspace": 0.9,
              "hspace": 0.85}  # fixed margins: tight_layout measured every tick label twice


def _panels(n: int) -> tuple[Figure, list[Any]]:
    """A grid of ``n`` panels (two per row) with fixed margins in inches: no tight layout
    pass, which on log axes cost about a third of the quick report's time (measured)."""
    ncols = max(1, min(2, n))
    nrows = max(1, math.ceil(n / ncols))
    (w, h), m = _PANEL_IN, _MARGIN_IN
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    fig.subplots_adjust(left=m["left"] / (w * ncols), right=1 - m["right"] / (w * ncols),
                        bottom=m["bottom"] / (h * nrows), top=1 - m["top"] / (h * nrows),
                        wspace=m["wspace"] / (w - m["wspace"]),
                        hspace=m["hspace"] / (h - m["hspace"]))
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` as PNG, write it atomically, close it; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    path = Path(path)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _empty(path: str | Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, f"{title}: no data", ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, path)


def _figure(aggs: Sequence[Agg], path: str | Path, xattr: str, xlabel: str,
            title: str) -> Path:
    if not aggs:
        return _empty(path, title)
    teachers: dict[str, list[Agg]] = {}
    for a in aggs:
        teachers.setdefault(a.teacher, []).append(a)
    fig, axes = _panels(len(teachers))
    spec = metric_registry.get(aggs[0].metric)
    for ax, (teacher, items) in zip(axes, sorted(teachers.items()), strict=True):
        _panel(ax, items, xattr, annotate=title == "Pareto")
        ax.set(title=f"{teacher}: {title}" if title == "Pareto" else teacher, xlabel=xlabel,
               ylabel=f"{spec.name} ({spec.direction} is better)")
        ax.grid(True, which="major", alpha=0.3, lw=0.5)
    return _save(fig, path)


def plot_quality_vs_nfe(aggs: Sequence[Agg], path: str | Path) -> Path:
    """Metric vs measured NFE per teacher: frontier and family bests in colour with bands."""
    return _figure(aggs, path, "nfe", "NFE (measured, per sample)", "quality vs NFE")


def plot_pareto(aggs: Sequence[Agg], path: str | Path) -> Path:
    """Metric vs time per sample with the eligible Pareto front drawn and labelled."""
    return _figure(aggs, path, "time", "time per sample [s]", "Pareto")


_AMORTISED_COLOURS = ("#d62728", "#1f77b4", "#2ca02c")


def plot_amortised(points: Sequence[CostPoint], path: str | Path,
                   over: Sequence[int] | None = None) -> Path:
    """Metric vs cost per sample with the one-off cost spread over M samples, one panel per
    teacher: every case with a known cost as a small dot per M, each M's Pareto front as a
    labelled line (trained students move left as M grows)."""
    if not points:
        return _empty(path, "amortised cost")
    fronts = amortised_fronts(points) if over is None else amortised_fronts(points, over)
    teachers = sorted({p.agg.teacher for p in points})
    fig, axes = _panels(len(teachers))
    spec = metric_registry.get(points[0].agg.metric)
    for ax, teacher in zip(axes, teachers, strict=True):
        items = [p for p in points if p.agg.teacher == teacher and not p.agg.is_baseline]
        _set_scales(ax, [p.agg.summary.mean for p in items], spec.positive)
        labelled: set[tuple[float, float]] = set()  # a front point shared by every M: once
        for i, (colour, (m, by_teacher)) in enumerate(
                zip(_AMORTISED_COLOURS, fronts.items(), strict=False)):
            xy = [(p.seconds(m), p.agg.summary.mean) for p in items
                  if math.isfinite(p.seconds(m)) and math.isfinite(p.agg.summary.mean)]
            ax.plot([x for x, _ in xy], [y for _, y in xy], ".", ms=3, color=colour, alpha=0.3)
            front = by_teacher.get(teacher, [])
            ax.plot([p.seconds(m) for p in front], [p.agg.summary.mean for p in front], "o-",
                    ms=3.5, lw=max(3.0 - 1.6 * i, 1.0), alpha=0.8, color=colour,
                    label=f"front, one-off cost over {m:.0e} samples")
            for p in front:
                at = (p.seconds(m), p.agg.summary.mean)
                if at not in labelled:
                    labelled.add(at)
                    ax.annotate(p.agg.label, at, fontsize=6, xytext=(3, 3),
                                textcoords="offset points", color=colour)
        ax.set(title=f"{teacher}: quality vs amortised cost", xlabel="seconds per sample "
               "(sampling + set-up + one-off / M)",
               ylabel=f"{spec.name} ({spec.direction} is better)")
        ax.legend(fontsize=6, loc="best", frameon=False)
        ax.grid(True, which="major", alpha=0.3, lw=0.5)
    return _save(fig, path)
