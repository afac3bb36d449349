"""benchmarks/parallel_sampling.py: ParaDiGMS beside the sequential DDIM it parallelises."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parallel_sampling.py"
_spec = importlib.util.spec_from_file_location("parallel_sampling", SCRIPT)
ps = importlib.util.module_from_spec(_spec)
sys.modules["parallel_sampling"] = ps
_spec.loader.exec_module(ps)


def test_rows_count_nfe_and_rounds_and_tol_zero_is_the_sequential_sample():
    rows = ps.rows_for("gmm2", steps=[8], windows=[4], tols=[0.0, 0.5], n=16, repeats=1)
    by = {(r[2], r[4]): r for r in rows}
    ddim, exact, loose = by[("ddim", "-")], by[("paradigms", "0")], by[("paradigms", "0.5")]
    assert ddim[5:7] == ["8", "8"] and float(ddim[8]) == 0.0
    # tol 0: every window point must stop moving, so the answer is DDIM's, in fewer rounds
    # than NFE (a window of 4 evaluates 4 points per round)
    assert float(exact[8]) < 1e-5 and int(exact[5]) >= 8 and int(exact[6]) <= int(exact[5])
    assert int(loose[6]) <= int(exact[6]) and float(exact[9]) == float(ddim[9])
