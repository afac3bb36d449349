"""The report's amortised-cost and convergence sections, in the HTML page and as text."""

import re

import pytest

from fewstep.bench.report import (
    amortised,
    amortised_fronts,
    convergence,
    format_amortised,
    format_convergence,
    write_report,
)

SEEDS = (0, 1, 2)
GRID = (2, 4, 10, 20, 50)


def _row(method: str, nfe: int, seed: int, err: float, **extra) -> dict:
    return {"key": f"{method}-{nfe}-{seed}", "suite": "s", "teacher": "moons", "method": method,
            "impl": "student" if method.startswith("student:") else "fewstep",
            "nfe_target": nfe, "nfe": float(nfe), "seed": seed, "n_samples": 100,
            "time_per_sample_s": 1e-4 * max(nfe, 1), "setup_time_s": 0.0, "status": "ok",
            "metrics": {"ode_rmse": err * (1 + 0.05 * seed)}, **extra}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    out = []
    for s in SEEDS:
        out += [_row("heun", n, s, 4.0 * n**-2.0) for n in GRID]
        out += [_row("ddim", n, s, max(2.0 / n, 0.1)) for n in GRID]  # floor from NFE 20
        out.append(_row("student:runs/moons-cd", 1, s, 0.02, train_seconds=500.0,
                        train_teacher_nfe=3e5))
        out.append(_row("student:python:m:f", 1, s, 0.01))  # an external student: cost unknown
        out.append(_row("baseline:noise", 0, s, 5.0))
    return out


def test_convergence_text(rows):
    text = format_convergence(convergence(rows))
    heun = next(line for line in text.splitlines() if line.split()[1:2] == ["heun"])
    assert "2 [2, 2]" in heun and "10-50" in heun and "> 50" in heun  # order 2, nominal 2
    ddim = next(line for line in text.splitlines() if line.split()[1:2] == ["ddim"])
    # 2/N meets its floor 0.1 at N = 20: plateau NFE 20, one asymptotic budget: no order
    assert re.fullmatch(r"moons\s+ddim\s+-\s+1\s+-\s+20\s+0\.1\d*", ddim), ddim


def test_amortised_text(rows):
    text = format_amortised(amortised_fronts(amortised(rows, "ode_rmse")))
    small, large = (line for line in text.splitlines() if line.startswith("  M ="))
    assert "moons-cd@1" not in small  # 0.5 s per sample over 10^3: not on it
    assert "moons-cd@1 (600 µs" in large  # 500 s / 1e6 + 0.1 ms, by its short name
    assert "student:" not in text
    assert "python" not in text  # unknown cost: never on a front


def test_report_sections(rows, tmp_path):
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    assert "Quality vs amortised cost" in text and "Convergence as NFE grows" in text
    assert text.index("Quality vs amortised cost") < text.index("Convergence as NFE grows") \
        < text.index("Failed cases")
    assert "not known" in text  # the external student's one-off cost
    assert ">500 s<" in text and ">3e+05<" in text  # the trained student's own cost
    assert (tmp_path / "amortised_ode_rmse.png").read_bytes()[:4] == b"\x89PNG"
