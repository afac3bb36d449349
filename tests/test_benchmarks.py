"""The distillation suite: its protocol (choices on validation, paired log-scale intervals,
targets counted only above the data floor) and a smoke run that resumes."""

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_suite.py"
_spec = importlib.util.spec_from_file_location("distill_suite", SCRIPT)
ds = importlib.util.module_from_spec(_spec)
sys.modules["distill_suite"] = ds  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(ds)

T975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


class NoPeek(Mapping):
    """A test-score record that fails the test if anything reads it."""

    def __getitem__(self, key: object) -> object:
        raise AssertionError(f"read test scores ({key!r}) while choosing")

    def __iter__(self) -> Iterator:
        raise AssertionError("iterated over test scores while choosing")

    def __len__(self) -> int:
        raise AssertionError("sized test scores while choosing")


def test_select_on_validation_never_reads_test():
    records = {"a": [{"val": 0.10, "test": NoPeek()}, {"val": 0.12, "test": NoPeek()}],
               "b": [{"val": 0.20, "test": NoPeek()}, {"val": 0.30, "test": NoPeek()}],
               "c": [{"val": math.nan, "test": NoPeek()}, {"val": 0.01, "test": NoPeek()}]}
    assert ds.select_on_validation(records) == "a"  # c's NaN seed ranks it last
    assert ds.select_on_validation({}) is None


def test_choose_scores_only_the_validation_noise():
    seen = []

    def sampler(value):
        def f(z, seed):
            seen.append(seed)
            return torch.full_like(z, value)
        return f

    z = torch.zeros(3, 2)
    best, scores = ds.choose(lambda x: float(x[0, 0]), z,
                             {"hi": sampler(2.0), "lo": sampler(1.0), "nan": sampler(math.nan)})
    assert best == "lo" and scores["hi"] == 2.0 and math.isnan(scores["nan"])
    assert set(seen) == {ds.VAL_NOISE_SEED}


def test_positive_interval_is_the_log_t_interval_and_stays_positive():
    iv = ds.positive_interval([1.0, math.e, math.e**2])  # logs 0, 1, 2: mean 1, sd 1
    half = T975_DF2 / math.sqrt(3)
    assert iv.mean == pytest.approx(math.e)
    assert (iv.lo, iv.hi) == (pytest.approx(math.exp(1 - half)), pytest.approx(math.exp(1 + half)))
    wide = ds.positive_interval([0.01, 1.0, 0.02])  # an arithmetic t-interval goes below 0
    assert 0 < wide.lo < wide.mean < wide.hi
    assert ds.positive_interval([0.1, math.nan, 0.2]) is None
    assert ds.positive_interval([0.1, 0.0]) is None


def test_fraction_interval_is_clipped_to_unit_range():
    iv = ds.fraction_interval([0.99, 0.5, 0.98])
    assert 0.0 <= iv.lo < iv.mean < iv.hi == 1.0


def test_ratio_interval_is_paired_by_training_seed():
    # Each seed's student is exactly twice its teacher: the paired ratio has no spread, where
    # dividing the two figures' interval endpoints would give a wide one.
    students = [{"test": [{"sw": v}, {"sw": v}]} for v in (0.2, 0.4, 0.8)]
    teachers = [{"test": [{"sw": v}]} for v in (0.1, 0.2, 0.4)]
    iv = ds.ratio_interval(students, teachers, "sw")
    assert (iv.mean, iv.lo, iv.hi) == (pytest.approx(2.0),) * 3


def test_per_seed_averages_sampling_seeds_within_a_training_seed():
    recs = [{"test": [{"sw": 1.0, "rmse": 5.0}, {"sw": 3.0}]}]
    assert ds.per_seed(recs, "sw") == [2.0] and ds.per_seed(recs, "rmse") == [5.0]


def _iv(mean, lo, hi, n=3):
    return ds.Interval(mean, lo, hi, n)


@pytest.mark.parametrize(("ratio", "teacher", "expected"), [
    (_iv(1.2, 1.1, 1.4), _iv(0.05, 0.045, 0.055), "met"),
    (_iv(1.2, 0.9, 1.6), _iv(0.05, 0.045, 0.055), "missed"),  # point inside, bound outside
    (_iv(1.2, 1.1, 1.4), _iv(0.05, 0.039, 0.055), "not counted (teacher at floor)"),
    (_iv(1.2, 1.1, 1.4, n=1), _iv(0.05, math.nan, math.nan, n=1), "not counted (one seed)"),
    (None, _iv(0.05, 0.045, 0.055), "missed (diverged)"),
])
def test_target_status(ratio, teacher, expected):
    assert ds.target_status(ratio, teacher, floor_hi=0.04) == expected


def test_student_below_teacher_is_flagged_not_a_win():
    status = ds.target_status(_iv(0.8, 0.7, 0.9), _iv(0.05, 0.045, 0.055), floor_hi=0.04)
    assert status.startswith("met") and "not a win" in status
    at_floor = ds.target_status(_iv(0.8, 0.7, 0.9), _iv(0.05, 0.03, 0.055), floor_hi=0.04)
    assert at_floor.startswith("not counted (teacher at floor)") and "not a win" in at_floor


def _record(val, test):
    return {"val": val, "test": [{"sw": test, "precision": 0.9, "recall": 0.9, "rmse": 0.1}]}


def _fake_run(seed, students):
    """A scores.json whose 2-step students (name -> (val, test)) disagree between splits."""
    teacher = {str(k): {"solver": "heun", **_record(0.05, 0.05 + 0.001 * seed)}
               for k in ds.TEACHER_NFES}
    run = {"setup": {"primary": "sw", "seed": seed, "sample_seeds": 1, "batch": 8, "n_eval": 4,
                     "n_test": 4, "n_val": 4, "n_ref": 1, "ref_tol": 1e-3},
           "teacher_cost": {"params": 10, "steps": 1, "seconds": 1.0}, "teacher": teacher}
    for name, (val, test) in students.items():
        run[name] = {"scores": {"1": _record(val, test), "2": _record(val, test)},
                     "cost": {"seconds": 1.0, "teacher_nfe": 1.0}, "note": "n"}
    return run


def test_report_picks_the_best_student_on_validation_not_on_test():
    # cd is best on validation, direct_cm on test: the report must crown cd.
    runs = [_fake_run(s, {"cd": (0.01, 0.09), "direct_cm": (0.02, 0.051)}) for s in range(3)]
    floor = {"n": 4, "subsets": [{"sw": 0.01 + 0.0001 * i, "precision": 1.0, "recall": 1.0,
                                  "coverage": 1.0} for i in range(20)]}
    text, summary, rows = ds.report_dataset("moons", runs, floor)
    assert summary[7] == "cd" and "Best 2-step student on validation: cd" in text
    assert {r[1] for r in rows} == {"cd", "direct_cm"}  # every method shown, not only the best
    assert summary[-1] == "missed" and "not a win" not in summary[-1]  # cd ratio ~1.8


def test_cli_rejects_bad_seed_list():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", "x", "--train-seeds", "0,a"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bad training seed 'a'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _run(out: Path, *extra: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--data", "moons", "--quick",
           "--scale", "0.005", "--sample-seeds", "2", *extra]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout


def test_distill_suite_smoke_and_resume(tmp_path):
    first = _run(tmp_path, "--methods", "pd,cd", "--train-seeds", "0,1")
    floor = json.loads((tmp_path / "moons" / "floor.json").read_text())
    assert len(floor["subsets"]) == ds.FLOOR_SUBSETS >= 10
    assert {"sw", "precision", "recall", "coverage"} <= set(floor["subsets"][0])
    scores = json.loads((tmp_path / "moons" / "seed1" / "scores.json").read_text())
    assert {"setup", "teacher", "pd", "cd"} <= set(scores)
    assert set(scores["teacher"]) == {str(k) for k in ds.TEACHER_NFES}
    cd2 = scores["cd"]["scores"]["2"]
    assert cd2["tau"] in ds.TAUS and cd2["val"] == min(cd2["val_by_tau"].values())
    assert len(cd2["test"]) == 2 and "rmse" in cd2["test"][0] and "rmse" not in cd2["test"][1]
    assert {"sw", "precision", "recall"} <= set(cd2["test"][1])
    assert "## Summary" in first and "## Every 2-step student" in first
    assert "Best 2-step student on validation:" in first
    second = _run(tmp_path, "--methods", "pd,cd,kd", "--train-seeds", "1")  # pd, cd read back
    again = json.loads((tmp_path / "moons" / "seed1" / "scores.json").read_text())
    assert again["cd"] == scores["cd"] and again["pd"] == scores["pd"] and "kd" in again
    assert "[moons seed 1] cd" in second and "| kd " in second
    report = _run(tmp_path, "--report")
    assert report.split("total wall-clock")[0] == (tmp_path / "report.md").read_text() + "\n"


def test_every_student_row_puts_training_cost_beside_sampling_cost():
    """Training seconds per seed (student, + its teacher's), teacher evaluations and the
    sampling NFE sit in each 2-step student's row; means over training seeds."""
    runs = [_fake_run(s, {"cd": (0.01, 0.09)}) for s in range(3)]
    for s, run in enumerate(runs):
        run["cd"]["cost"] = {"seconds": 10.0 * (s + 1), "teacher_nfe": 300.0}
        run["teacher_cost"]["seconds"] = 4.0
    floor = {"n": 4, "subsets": [{"sw": 0.01 + 0.0001 * i, "precision": 1.0, "recall": 1.0,
                                  "coverage": 1.0} for i in range(20)]}
    _, _, rows = ds.report_dataset("moons", runs, floor)
    assert rows[0][1:3] == ["cd", "3"] and rows[0][-3:] == ["20 (+ 4)", "300", "2 (teacher 50)"]


def test_scorer_sw_equals_sliced_wasserstein_with_the_reference_prepared_once():
    from fewstep.metrics import sliced_wasserstein

    g = torch.Generator().manual_seed(3)
    ref, x = torch.randn(300, 2, generator=g), 1.5 * torch.randn(200, 2, generator=g)
    scorer = ds.Scorer(ref, None, "sw")
    direct = sliced_wasserstein(x.double(), ref.double(), n_projections=256,
                                generator=torch.Generator().manual_seed(0))
    assert scorer.distance(x) == direct and scorer.distance(x) == scorer.distance(x)


def test_zoo_hybrids_table_gives_paired_verdicts_at_equal_nfe():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_hybrids.py"
    spec = importlib.util.spec_from_file_location("zoo_hybrids", path)
    zh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zh)

    def row(name, nfe, seed, sw):
        return {"suite": "s", "teacher": "zoo:checkerboard-edm", "impl": "student",
                "method": f"student:zoo:checkerboard-{name}", "nfe_target": nfe,
                "nfe": float(nfe), "seed": seed, "n_samples": 256, "status": "ok",
                "time_per_sample_s": 1e-3, "setup_time_s": 0.0, "metrics": {"sw": sw},
                "train_seconds": 100.0, "train_teacher_nfe": 0.0}

    noise = (1.0, 1.1, 0.95)  # the same seed effect on every method: pairs separate them
    rows = [row(m, 4, s, base * noise[s] * wobble)
            for m, base in (("ddgan", 0.2), ("cd", 0.1), ("ct", 0.4), ("ect", 0.2))
            for s, wobble in enumerate((1.0, 1.02, 0.99) if m == "ect" else (1.0,) * 3)]
    rows += [row("ufogen", 1, s, 0.3) for s in range(3)]  # no consistency student at NFE 1
    line = next(ln for ln in zh.table(rows, "sw").splitlines() if "zoo/ddgan" in ln)
    assert "| 4 |" in line and "| 100 | 0 |" in line
    cd, ct, ect, dcm = line.split("|")[6:10]
    assert "2.00x, worse" in cd and "0.50x, better" in ct and "tie" in ect and dcm.strip() == "-"
    ufo = next(ln for ln in zh.table(rows, "sw").splitlines() if "zoo/ufogen" in ln)
    assert ufo.count("| - ") == 4
