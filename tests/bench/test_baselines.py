"""Sanity baselines: what they return, how suites expand them, and an end-to-end run where
diffusers' DEIS at NFE 1 (the start noise, rescaled) is flagged instead of crowned."""

import pytest
import torch

from fewstep.bench import baselines
from fewstep.bench.report import decide, leaderboard
from fewstep.bench.runner import run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite


def test_baselines_from_reference_moments():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) \
        + torch.tensor([3.0, -1.0, 0.0])
    x = 80.0 * torch.randn(400, 3, generator=g)
    noise = baselines.run_baseline("baseline:noise", x, ref, 80.0)
    assert noise.dtype == x.dtype and noise.shape == x.shape
    expect = ref.mean(0) + ref.std(0) * x.double() / 80.0
    assert torch.allclose(noise.double(), expect, atol=1e-5)
    mean = baselines.run_baseline("baseline:mean", x, ref, 80.0)
    assert torch.allclose(mean.double(), ref.mean(0).expand(400, 3), atol=1e-6)
    assert torch.equal(baselines.run_baseline("baseline:reference", x, ref, 80.0),
                       ref[:400].float())
    with pytest.raises(ValueError, match="unknown baseline 'baseline:zero'; available"):
        baselines.run_baseline("baseline:zero", x, ref, 80.0)


def test_suite_runs_baselines_once_per_teacher_and_seed():
    s = Suite("b", ["gmm2"], ["ddim", "baseline:noise", "baseline:mean"], [2, 4, 8], [0, 1])
    cases = s.cases()
    base = [c for c in cases if c.method.startswith("baseline:")]
    assert len(base) == 4 and {c.nfe for c in base} == {0} and base[0].impl == "baseline"
    assert len(cases) == 4 + 6 and not s.skipped
    with pytest.raises(ValueError, match="unknown baseline"):
        Suite("b", ["gmm2"], ["baseline:nope"], [2], [0]).validate()


@pytest.fixture(scope="module")
def deis_rows(tmp_path_factory):
    suite = Suite("art", ["gmm2"], ["diffusers:deis", "dpmpp_2m", *baselines.available()],
                  [1, 6], [0, 1, 2, 3, 4], n_samples=128, reference_rtol=1e-5)
    out = tmp_path_factory.mktemp("art")
    summary = run_suite(suite, out, progress=False)
    assert summary.failed == 0
    return Store(out / "results.sqlite").rows()


def test_runner_scores_baselines_without_evaluations(deis_rows):
    base = [r for r in deis_rows if r["impl"] == "baseline"]
    assert len(base) == 15 and all(r["nfe"] == 0 for r in base)
    ref = [r for r in base if r["method"] == "baseline:reference"]
    assert all(r["metrics"]["ode_rmse"] < 1e-6 for r in ref)  # the reference itself


def test_noise_artefact_is_flagged_end_to_end(deis_rows):
    """diffusers:deis at NFE 1 returns the start noise rescaled (its one step has zero
    length); it must be flagged on the distribution metric and never named best."""
    board = {e["nfe_target"]: e for e in leaderboard(deis_rows, "sw")}
    assert board[1]["best"] != "diffusers:deis"
    assert board[1]["flagged"]["diffusers:deis"].startswith("no better than baseline:")
    assert board[6]["best"] is not None
    at1 = next(d for d in decide(deis_rows, "sw") if d.budget == 1)
    assert "diffusers:deis" not in {a.method for a in at1.ranking.tie_group}
