"""Concurrent runs on one results directory, progress output in logs, and failure summaries."""

import threading

import pytest

from fewstep.bench import runner
from fewstep.bench.runner import RunSummary, case_label, run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite


def tiny():
    return Suite(name="tiny", teachers=["gmm2"], methods=["ddim", "heun"], nfe=[3, 5],
                 seeds=[0, 1, 2], n_samples=16, reference_rtol=1e-5)


@pytest.fixture
def computed(monkeypatch):
    """run_case replaced by a slow fake that records every case it computes."""
    log, lock = [], threading.Lock()
    barrier = threading.Barrier(2, timeout=30)

    def fake(case, ctx):
        with lock:
            log.append(case.key)
        threading.Event().wait(0.02)
        return {"key": case.key, "suite": case.suite, "status": "ok", "metrics": {"x": 1.0}}

    original_claim = Store.claim

    def claim_after_both_started(self, key, *a, **kw):  # both runs see every case as todo
        if not getattr(self, "_synced", False):
            self._synced = True
            barrier.wait()
        return original_claim(self, key, *a, **kw)

    monkeypatch.setattr(runner, "run_case", fake)
    monkeypatch.setattr(Store, "claim", claim_after_both_started)
    return log


def test_two_runs_on_one_out_share_the_cases(tmp_path, computed):
    summaries = []

    def run():
        summaries.append(run_suite(tiny(), tmp_path, progress=False))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = len(tiny().cases())
    assert sorted(computed) == sorted(set(computed)), "a case was computed twice"
    assert len(computed) == total == len(Store(tmp_path / "results.sqlite").done())
    assert sum(s.ran for s in summaries) == total
    assert sum(s.elsewhere for s in summaries) == total
    assert Store(tmp_path / "results.sqlite").claims() == []


def _fake_ok(case, ctx):
    return {"key": case.key, "suite": case.suite, "status": "ok", "metrics": {"x": 1.0}}


@pytest.mark.parametrize("interval,lines", [(0.0, 12 + 1), (1e9, 1)])
def test_progress_in_a_log_is_plain_lines_at_an_interval(tmp_path, monkeypatch, capsys,
                                                         interval, lines):
    monkeypatch.setattr(runner, "run_case", _fake_ok)
    monkeypatch.setattr(runner, "PLAIN_PROGRESS_S", interval)
    run_suite(tiny(), tmp_path, progress=True)  # capsys: stderr is not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "gmm2/" not in err  # no bar redraws, no per-case postfix
    assert len(err.splitlines()) == lines
    assert err.splitlines()[-1].startswith("bench tiny: 12/12 cases (0 failed)")


def test_failures_are_summarised_once_per_distinct_error(tmp_path, monkeypatch):
    def broken(case, ctx):
        error = "ValueError: cannot read image /x/bad.png" if case.method == "ddim" else \
            "RuntimeError: boom"
        return {"key": case.key, "suite": case.suite, "status": "error", "error": error,
                "metrics": {}}

    monkeypatch.setattr(runner, "run_case", broken)
    summary = run_suite(tiny(), tmp_path, progress=False)
    first = case_label(tiny().cases()[0])
    assert summary.failed == 12 and summary.failure_lines() == [
        f"6 x ValueError: cannot read image /x/bad.png (e.g. {first})",
        "6 x RuntimeError: boom (e.g. gmm2/heun/nfe=3/seed=0)"]


def test_failure_lines_order_by_count():
    s = RunSummary(3, 0, 3, 3, [], 1.0, failures=[("a", "E1"), ("b", "E2"), ("c", "E2")])
    assert s.failure_lines() == ["2 x E2 (e.g. b)", "1 x E1 (e.g. a)"]


def test_skipped_budgets_are_stored_and_reported(tmp_path, monkeypatch):
    """heun cannot spend NFE 1 or 2: the run records why, and the report's 'Not run' section
    lists it (merged per method and reason), so what was not measured is visible."""
    from fewstep.bench.report import write_report
    from fewstep.bench.store import merge

    monkeypatch.setattr(runner, "run_case", lambda case, ctx: {
        "key": case.key, "suite": case.suite, "teacher": case.teacher, "method": case.method,
        "nfe_target": case.nfe, "seed": case.seed, "status": "ok",
        "metrics": {"ode_rmse": 0.1 + 0.01 * case.seed}})
    suite = Suite(name="tiny", teachers=["gmm2"], methods=["ddim", "heun"], nfe=[1, 2, 3],
                  seeds=[0, 1], n_samples=16, reference_rtol=1e-5)
    summary = run_suite(suite, tmp_path / "a", progress=False)
    reasons = ["heun at NFE 1: below its minimum of 3", "heun at NFE 2: below its minimum of 3"]
    assert summary.skipped == reasons
    assert Store(tmp_path / "a" / "results.sqlite").skipped() == [("tiny", r) for r in reasons]
    run_suite(suite, tmp_path / "a", progress=False)  # a resumed run records nothing twice
    merge(tmp_path / "m.sqlite", [tmp_path / "a" / "results.sqlite"])
    for db in (tmp_path / "a" / "results.sqlite", tmp_path / "m.sqlite"):
        assert Store(db).skipped("tiny") == [("tiny", r) for r in reasons]
        assert Store(db).skipped("other") == []
        text = write_report(db, tmp_path / "out", suite="tiny").read_text(encoding="utf-8")
        assert "<h2>Not run</h2>" in text and "NFE 1, 2: below its minimum of 3" in text


def test_skipped_summary_merges_nfes_per_method_and_reason():
    from fewstep.bench.report import skipped_summary

    assert skipped_summary([
        "heun at NFE 1: below its minimum of 3",
        "diffusers:heun at NFE 4: diffusers Heun spends 2N-1 evaluations; nfe=4 is even",
        "heun at NFE 2: below its minimum of 3",
        "diffusers:heun at NFE 2: diffusers Heun spends 2N-1 evaluations; nfe=2 is even",
        "paradigms: parallel sampler, not run on an NFE grid",
    ]) == [("heun", "NFE 1, 2: below its minimum of 3"),
           ("diffusers:heun",
            "NFE 2, 4: diffusers Heun spends 2N-1 evaluations; this NFE is even"),
           ("paradigms", "parallel sampler, not run on an NFE grid")]
