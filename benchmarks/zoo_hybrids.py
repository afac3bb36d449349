"""The issue-15 zoo students (DDGAN, SIDDM, UFOGen, ADD, DFNO) against the consistency
students of the same teacher at equal NFE, read from a `fewstep bench` results directory.

    PYTHONPATH=src nice -n 10 .venv/bin/python -m fewstep.cli bench \\
        --suite benchmarks/zoo_hybrids.toml --out runs/zoo_hybrids --metric sw
    PYTHONPATH=src .venv/bin/python benchmarks/zoo_hybrids.py runs/zoo_hybrids [--metric sw]

Prints markdown: each student's quality at its native NFE (mean [95% interval] over seeds, the
report's summary), its training cost, and for every consistency student at the same NFE the
ratio of their means and the paired one-sided test the report's decision table uses
(``p_worse``, alpha 0.05 without correction): "better" / "worse" when significant, else "tie".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fewstep.bench.report import aggregate, one_off_cost
from fewstep.bench.report.ranking import ALPHA, p_worse
from fewstep.bench.store import Store
from fewstep.bench.students import label

HYBRIDS = ("ddgan", "siddm", "ufogen", "add", "dfno")
CONSISTENCY = ("cd", "ct", "ect", "direct_cm")


def student(name: str) -> str:
    return f"student:zoo:checkerboard-{name}"


def table(rows: list[dict[str, Any]], metric: str) -> str:
    """The markdown table of the bench result rows ``rows`` on ``metric``."""
    aggs = {(a.method, a.nfe_target): a for a in aggregate(rows, metric)}
    cost = {r["method"]: one_off_cost(r) for r in rows if r.get("status") == "ok"}
    lines = [f"| student | NFE | {metric} [95%] | train s | teacher NFE / row | "
             "vs cd | vs ct | vs ect | vs direct_cm |", "|---|---:|---:|---:|---:|---|---|---|---|"]
    for h in HYBRIDS:
        for (method, nfe), a in sorted(aggs.items(), key=lambda kv: kv[0][1]):
            if method != student(h):
                continue
            cells = []
            for c in CONSISTENCY:
                b = aggs.get((student(c), nfe))
                if b is None:
                    cells.append("-")
                    continue
                verdict = ("better" if p_worse(b, a) < ALPHA else
                           "worse" if p_worse(a, b) < ALPHA else "tie")
                cells.append(f"{a.summary.mean / b.summary.mean:.2f}x, {verdict}")
            s, n = cost[method]
            lines.append(f"| {label(method)} | {nfe} | {a.summary.mean:.3g} "
                         f"[{a.summary.lo:.3g}, {a.summary.hi:.3g}] | {s:.0f} | {n:.0f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a fewstep bench results directory")
    ap.add_argument("--metric", default="sw")
    args = ap.parse_args(argv)
    print(table(Store(Path(args.out) / "results.sqlite").rows(), args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
