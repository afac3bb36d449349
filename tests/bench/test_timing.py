"""Fair timing: set-up apart from the per-step figure, adapters as network time, medians of
warm repeats, and the environment read once per run."""

import time

import pytest
import torch

from fewstep import solvers
from fewstep.bench import peers, runner
from fewstep.bench.suite import Case, Suite
from fewstep.bench.teachers import get as get_teacher

diffusers = pytest.importorskip("diffusers")
DELAY = 0.2  # s: far above what a 3-step solve on 16 points costs, even on a busy machine


def _case(method, nfe=3):
    return Case("timing", "gmm2", method, nfe, 0, 16, "karras", "float32", 1e-4)


def _row(tmp_path, method, nfe=3):
    row = runner.run_case(_case(method, nfe), runner._Context(tmp_path, "cpu"))
    assert row["status"] == "ok", row.get("error")
    return row


class SlowScheduler(diffusers.EulerDiscreteScheduler):
    """A peer whose construction costs DELAY seconds, as a heavy scheduler's would."""

    def __init__(self, *args, **kwargs):
        time.sleep(DELAY)
        super().__init__(*args, **kwargs)


def test_peer_construction_is_set_up_not_step_overhead(tmp_path, monkeypatch, request):
    monkeypatch.setattr(diffusers, "SlowScheduler", SlowScheduler, raising=False)
    peers.PEERS.add("slow", peers.PeerSpec("SlowScheduler", {"use_karras_sigmas": True},
                                           sigma_space=True))
    request.addfinalizer(lambda: peers.PEERS.remove("slow"))
    row = _row(tmp_path, "diffusers:slow")
    assert row["setup_time_s"] >= DELAY
    assert row["wall_s"] < DELAY and row["overhead_per_step_s"] * 3 < DELAY
    assert row["nfe"] == 3


def test_fewstep_plan_is_set_up_not_step_overhead(tmp_path, monkeypatch):
    plan = solvers.plan

    def slow_plan(*args, **kwargs):
        time.sleep(DELAY)
        return plan(*args, **kwargs)

    monkeypatch.setattr(solvers, "plan", slow_plan)
    row = _row(tmp_path, "heun")
    assert row["setup_time_s"] >= DELAY
    assert row["wall_s"] < DELAY and row["overhead_per_step_s"] * 3 < DELAY


def test_peer_eps_adapter_is_network_time(tmp_path, monkeypatch):
    """The sigma -> eps adapter diffusers needs is booked as network time, not overhead."""
    adapter = peers._eps_model

    def slow_adapter(D, proc):
        eps = adapter(D, proc)

        def slow(x, t):
            time.sleep(DELAY / 4)
            return eps(x, t)

        return slow

    monkeypatch.setattr(peers, "_eps_model", slow_adapter)
    row = _row(tmp_path, "diffusers:dpmpp_2m")
    assert row["network_s"] >= 3 * DELAY / 4
    assert row["overhead_per_step_s"] < DELAY / 4


@pytest.mark.parametrize("method,nfe", [("heun", 9), ("ddim", 9), ("dpmpp_2m", 9)])
def test_overhead_is_per_solver_step_on_both_sides(method, nfe):
    """diffusers' Heun makes 2N-1 scheduler calls for N steps; its overhead is divided by the
    same N solver steps as fewstep's Heun, not by its scheduler calls."""
    teacher = get_teacher("gmm2")
    x = runner.start_noise(teacher, 0, 4).float()
    steps = {m: runner._run_method(_case(m, nfe), teacher.denoiser, x, teacher)[1]
             for m in (method, f"diffusers:{method}")}
    plan = solvers.plan(method, nfe, "karras", sigma_min=0.002, sigma_max=80.0)
    assert steps == {method: plan.steps, f"diffusers:{method}": plan.steps}


def test_timing_is_the_median_of_warm_repeats():
    """One slow run of three (a scheduler hiccup) does not move the recorded figures."""
    teacher, calls = get_teacher("gmm2"), []

    def D(x, sigma):
        calls.append(len(calls))
        if len(calls) <= 3:  # every call of the first run (3 steps of DDIM) is slow
            time.sleep(DELAY / 3)
        return teacher.denoiser(x, sigma)

    x = runner.start_noise(teacher, 0, 16).float()
    out, timing = runner._timed_runs(_case("ddim"), teacher, D, x, "cpu")
    assert len(calls) == 9 and timing.rows == 3 * 16
    assert timing.wall < DELAY / 3 and timing.network < DELAY / 3
    expected, _ = runner._run_method(_case("ddim"), teacher.denoiser, x, teacher)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the first run's samples


def test_environment_is_read_once_per_run(tmp_path, monkeypatch):
    calls = []
    environment = runner.environment

    def counted(*args):
        calls.append(args)
        return environment(*args)

    monkeypatch.setattr(runner, "environment", counted)
    suite = Suite("env", ["gmm2"], ["ddim", "heun"], [3, 5], [0], n_samples=16,
                  reference_rtol=1e-4)
    summary = runner.run_suite(suite, tmp_path, progress=False)
    assert summary.ran == 4 and summary.failed == 0
    assert len(calls) == 1
