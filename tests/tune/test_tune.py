"""fewstep.tune: schedule search against analytic and brute-force optima, the learned solver's
DPM-Solver++(2M) start, artefacts (round trip, exact NFE, teacher check, loading by path in
plan/sample/CLI/bench) and disjoint calibration sets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from fewstep import GaussianMixture, cli, solvers, tune
from fewstep.bench.runner import start_noise
from fewstep.bench.suite import Suite
from fewstep.bench.teachers import get as get_teacher
from fewstep.tune import api as tune_api
from fewstep.tune.calibration import CountingDenoiser, seeds
from fewstep.tune.learned import fit
from fewstep.tune.schedule import ays, base_plan, cheapest_path, endpoint_loss, gits
from fewstep.tune.solver import dpmpp_2m_weights, monotone_logits, monotone_sigmas, rollout

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
MU, S = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.5  # one Gaussian N(MU, S^2 I)


def gaussian() -> GaussianMixture:
    return GaussianMixture(MU, S**2)


def exact_endpoint(x: torch.Tensor) -> torch.Tensor:
    """The PF-ODE flow of N(MU, S^2 I) from sigma_max to 0: a contraction about MU."""
    return MU + (x - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)


def noise(n: int = 16, seed: int = 0) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.float64)


def test_ays_recovers_the_analytic_ddim_optimum_on_a_gaussian():
    # DDIM with 2 NFE on N(MU, S^2): y = x - MU shrinks by f(s1) = (sigma_max s1 + S^2) /
    # (S^2 + sigma_max^2) * S^2 / (S^2 + s1^2) against the exact g = S / sqrt(S^2 + sigma_max^2),
    # so the best s1 minimises |f(s1) - g| whatever the noise: found here on a dense grid.
    s1 = torch.logspace(math.log10(SIGMA_MIN), math.log10(SIGMA_MAX), 200_001,
                        dtype=torch.float64)[1:-1]
    f = (SIGMA_MAX * s1 + S**2) / (S**2 + SIGMA_MAX**2) * S**2 / (S**2 + s1**2)
    best = s1[torch.argmin((f - S / math.sqrt(S**2 + SIGMA_MAX**2)).abs())]
    x = noise()
    D, ref = gaussian(), exact_endpoint(x)
    optimum = endpoint_loss(D, x, ref, "ddim", [SIGMA_MAX, float(best), 0.0])
    found, _ = ays(D, x, ref, "ddim", base_plan("ddim", 2, SIGMA_MIN, SIGMA_MAX), SIGMA_MIN)
    assert endpoint_loss(D, x, ref, "ddim", found) <= optimum + 1e-9
    assert endpoint_loss(D, x, ref, "ddim", base_plan("ddim", 2, SIGMA_MIN, SIGMA_MAX)) > \
        1.5 * optimum  # and the Karras start was far from it


def test_ays_at_least_as_good_as_brute_force_over_a_grid():
    x = noise(8)
    D, ref = gaussian(), exact_endpoint(x)
    grid = torch.logspace(math.log10(SIGMA_MAX), math.log10(SIGMA_MIN), 30).tolist()[1:]
    brute = min(endpoint_loss(D, x, ref, "dpmpp_2m", [SIGMA_MAX, a, b, 0.0])
                for a, b in itertools.combinations(grid, 2))
    found, info = ays(D, x, ref, "dpmpp_2m", base_plan("dpmpp_2m", 3, SIGMA_MIN, SIGMA_MAX),
                      SIGMA_MIN, sweeps=4)
    assert endpoint_loss(D, x, ref, "dpmpp_2m", found) <= brute * 1.001
    assert info["calibration_loss"] == sorted(info["calibration_loss"], reverse=True)
    assert (found[:-1].diff() < 0).all() and found[-1] == 0


def test_gits_dynamic_programme_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    M, jumps = 9, 4
    cost = torch.rand(M, M + 1, generator=g, dtype=torch.float64)
    cost[:, :M] = torch.where(torch.ones(M, M).triu(1).bool(), cost[:, :M], math.inf)
    path, total = cheapest_path(cost, jumps)
    brute = min((sum(float(cost[a, b]) for a, b in itertools.pairwise((0, *mid)))
                 + float(cost[mid[-1] if mid else 0, M]), (0, *mid))
                for mid in itertools.combinations(range(1, M), jumps - 1))
    assert total == pytest.approx(brute[0], abs=1e-12) and tuple(path) == brute[1]


def test_gits_on_a_gaussian_beats_karras_and_is_deterministic():
    x = noise(8)
    D, ref = gaussian(), exact_endpoint(x)
    a, _ = gits(D, x, ref, 3, SIGMA_MIN, SIGMA_MAX, grid_size=40, substeps=2)
    b, _ = gits(D, x, ref, 3, SIGMA_MIN, SIGMA_MAX, grid_size=40, substeps=2)
    assert torch.equal(a, b) and len(a) == 4 and a[0] == SIGMA_MAX and a[-1] == 0
    karras = base_plan("ddim", 3, SIGMA_MIN, SIGMA_MAX)
    assert endpoint_loss(D, x, ref, "ddim", a) < endpoint_loss(D, x, ref, "ddim", karras)


def test_untrained_learned_solver_is_dpmpp_2m():
    gm = GaussianMixture.random(2, 4, seed=1)
    x = noise(12, seed=1)
    sigmas = base_plan("dpmpp_2m", 6, SIGMA_MIN, SIGMA_MAX)
    expected = solvers.get("dpmpp_2m")(gm, x, sigmas)
    direct = solvers.SolverFunction(tune.solver.lms_steps, "lms")(
        gm, x, sigmas, weights=dpmpp_2m_weights(sigmas, 3))
    torch.testing.assert_close(direct, expected, rtol=1e-13, atol=1e-13)
    p, _ = fit(gm, x, expected, sigmas, SIGMA_MIN, learn=())  # nothing learned
    torch.testing.assert_close(rollout(gm, x, p.sigmas, p.eval_sigmas, p.weights), expected,
                               rtol=1e-12, atol=1e-12)


def test_learning_lowers_the_calibration_loss_deterministically():
    gm = GaussianMixture.random(2, 4, seed=1)
    x = noise(16, seed=2)
    ref = solvers.reference_solution(gm, x, SIGMA_MAX, rtol=1e-7, atol=1e-7)
    init = base_plan("dpmpp_2m", 4, SIGMA_MIN, SIGMA_MAX)
    runs = [fit(gm, x, ref, init, SIGMA_MIN, learn=("sigmas", "eval", "weights", "x"),
                iters=15, lr=0.05) for _ in range(2)]
    (p, log), (q, _) = runs
    assert all(torch.equal(getattr(p, f), getattr(q, f))
               for f in ("sigmas", "eval_sigmas", "weights", "x_weights"))
    assert log["best_calibration_mse"] < 0.5 * log["calibration_mse"][0]
    with pytest.raises(ValueError, match="unknown parameter group"):
        fit(gm, x, ref, init, SIGMA_MIN, learn=("sigma",))


def test_monotone_parametrisation():
    theta = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = monotone_sigmas(theta, SIGMA_MAX, SIGMA_MIN)
    assert s[0] == SIGMA_MAX and s[-1] == 0 and (s[:-1].diff() < 0).all() and s[-2] > SIGMA_MIN
    torch.testing.assert_close(monotone_sigmas(monotone_logits(s, SIGMA_MIN), SIGMA_MAX,
                                               SIGMA_MIN), s)


def _artefact(teacher: str = "gmm2", learned: bool = True, nfe: int = 4) -> tune.TunedSolver:
    g = torch.Generator().manual_seed(5)
    sigmas = base_plan("dpmpp_2m", nfe, SIGMA_MIN, SIGMA_MAX)
    sigmas[1:-1] *= 1 + 0.1 * torch.rand(nfe - 1, generator=g, dtype=torch.float64)
    extra = dict(eval_sigmas=sigmas[:-1] * 1.01, weights=dpmpp_2m_weights(sigmas, 3)
                 + 1e-3 * torch.randn(nfe, 3, generator=g, dtype=torch.float64),
                 x_weights=1e-3 * torch.randn(nfe, generator=g, dtype=torch.float64)) \
        if learned else {}
    return tune.TunedSolver(
        method="s4s" if learned else "gits", base="lms" if learned else "dpmpp_2m", nfe=nfe,
        sigmas=sigmas, teacher=teacher,
        teacher_fingerprint=tune.fingerprint(get_teacher(teacher).denoiser), n_cal=8, n_val=8,
        val_loss=0.1 + 1 / 3, base_val_loss=0.3, tuning_seconds=1.25, teacher_rows=123,
        info={"seeds": [1, 2]}, **extra)


@pytest.mark.parametrize("learned", [True, False])
def test_artefact_round_trips_bit_exactly(tmp_path, learned):
    t = _artefact(learned=learned)
    t.save(tmp_path / "t")
    t.save(tmp_path / "t")  # replacing an existing artefact
    u = tune.load(tmp_path / "t")
    for f in ("sigmas", "eval_sigmas", "weights", "x_weights"):
        a, b = getattr(t, f), getattr(u, f)
        assert (a is None and b is None) or (torch.equal(a, b) and b.dtype == torch.float64)
    assert {k: v for k, v in vars(u).items() if not isinstance(v, torch.Tensor)} == \
        {k: v for k, v in vars(t).items() if not isinstance(v, torch.Tensor)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary left behind


@pytest.mark.parametrize("learned", [True, False])
def test_tuned_solver_spends_exactly_its_nfe(tmp_path, learned):
    path = _artefact(learned=learned, nfe=5).save(tmp_path / "t")
    teacher = get_teacher("gmm2")
    D = CountingDenoiser(teacher.denoiser)
    x = start_noise(teacher, 0, 6).float()
    for name in (str(path), f"tuned:{path}"):  # as the bench runs it: plan, then the spec
        D.counter.rows = 0
        out = solvers.get(name)(D, x, solvers.plan(name, 5).sigmas)
        assert D.counter.rows == 5 * 6 and torch.isfinite(out).all()
        torch.testing.assert_close(solvers.sample(teacher.denoiser, x, name, 5), out)
    assert solvers.plan(str(path), 5).sigmas.tolist() == tune.load(path).sigmas.tolist()
    with pytest.raises(ValueError, match="spends exactly NFE 5; got nfe=4"):
        solvers.plan(str(path), 4)


def test_bad_path_and_mismatched_teacher_are_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=f"tuned solver '{tmp_path / 'missing'}' does not exist"):
        solvers.get(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"'{tmp_path / 'empty'}' is not a tuned solver"):
        solvers.get(str(tmp_path / "empty"))
    path = _artefact("gmm2").save(tmp_path / "t")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tuned.json").write_text("{")
    (tmp_path / "broken" / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read tuned solver"):
        tune.load(tmp_path / "broken")
    x = start_noise(get_teacher("gmm16"), 0, 4).float()
    with pytest.raises(ValueError, match="was tuned on teacher 'gmm2'"):
        solvers.sample(get_teacher("gmm16").denoiser, x, str(path), 4)


def test_cli_sample_with_a_tuned_solver(tmp_path, capsys):
    path = _artefact("gmm2", nfe=3).save(tmp_path / "t")
    assert cli.main(["sample", "--teacher", "gmm2", "--solver", str(path), "--n", "4",
                     "--out", str(tmp_path / "out")]) == 0
    for argv in (["--teacher", "gmm16", "--solver", str(path)],
                 ["--teacher", "gmm2", "--solver", str(tmp_path / "nope")],
                 ["--teacher", "gmm2", "--solver", str(path), "--nfe", "4"]):
        capsys.readouterr()
        assert cli.main(["sample", *argv, "--n", "4", "--out", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # checked by argparse against tune.METHODS
        cli.main(["tune", "--teacher", "gmm2", "--method", "nope", "--nfe", "4",
                  "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "unknown tuning method 'nope'" in capsys.readouterr().err
    tune_args = ["tune", "--teacher", "gmm2", "--method", "gits", "--nfe", "3", "--n-cal", "4",
                 "--n-val", "4", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "g")]
    assert cli.main([*tune_args, "--param", "grid_size"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert cli.main([*tune_args, "--param", "grid_sise=20"]) == 2
    err = capsys.readouterr().err
    assert "tuning method 'gits' has no option 'grid_sise'; it accepts grid_size, substeps" \
        in err and "_gits" not in err  # the option's name and the method's, not a function's
    assert cli.main([*tune_args, "--param", "grid_size=abc"]) == 2
    err = capsys.readouterr().err.strip()  # a number option given text: one line, no TypeError
    assert err.endswith("tuning method 'gits': option grid_size='abc' must be a number "
                        "(default 200)") or "option grid_size='abc' must be a number" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert cli.main([*tune_args, "--param", "grid_size=20", "--param", "substeps=2"]) == 0
    assert "gits on dpmpp_2m, NFE 3, teacher gmm2" in capsys.readouterr().out
    assert tune.load(tmp_path / "g").info["grid_size"] == 20


def test_calibration_and_validation_never_overlap(tmp_path):
    c = tune.calibrate("gmm2", 6, 5, cache=tmp_path)
    assert c.x_cal.shape == (6, 2) and c.ref_cal.shape == (6, 2) and c.x_val.shape == (5, 2)
    bench = torch.cat([start_noise(get_teacher("gmm2"), s, 64) for s in range(100)])
    for a, b in ((c.x_cal, c.x_val), (c.x_cal, bench), (c.x_val, bench)):
        assert torch.cdist(a, b).min() > 0
    assert set(seeds(0)).isdisjoint(seeds(1)) and min(seeds(0)) >= 1_000_000
    assert c.teacher_rows > 0 and tune.calibrate("gmm2", 6, 5, cache=tmp_path).teacher_rows == 0


def test_tune_end_to_end_and_bench_runs_the_artefact(tmp_path):
    a = tune.tune("gmm2", "gits", 3, n_cal=6, n_val=6, cache=tmp_path / "c", grid_size=20,
                  substeps=2)
    b = tune.tune("gmm2", "gits", 3, n_cal=6, n_val=6, cache=tmp_path / "c", grid_size=20,
                  substeps=2)
    assert torch.equal(a.sigmas, b.sigmas) and a.val_loss == b.val_loss
    assert a.teacher_rows > b.teacher_rows > 0  # the second run found its references cached
    path = a.save(tmp_path / "gits3")
    suite = Suite("t", ["gmm2"], [f"tuned:{path}"], [3, 4], [0], n_samples=8, timing_repeats=1)
    suite.validate()
    cases = suite.cases()
    assert [c.nfe for c in cases] == [3] and any("tuned for NFE 3 only" in s
                                                 for s in suite.skipped)
    from fewstep.bench.runner import _Context, run_case

    row = run_case(cases[0], _Context(tmp_path / "bench", "cpu"))
    assert row["status"] == "ok" and row["nfe"] == 3
    assert row["config"]["one_off_s"] == a.tuning_seconds
    json.dumps(row["config"])


@pytest.mark.parametrize("learn", [("sigmas", "weights"), ("sigmas", "eval", "weights", "x")])
def test_the_iterate_is_chosen_on_validation_not_calibration(learn):
    """A fit that lowers the calibration loss but not the validation loss keeps its start:
    here the validation references are the untuned solver's own endpoints, so the start is
    exact on validation and every learned iterate is worse there."""
    gm = GaussianMixture.random(2, 4, seed=1)
    x, x_val = noise(16, seed=2), noise(16, seed=3)
    ref = solvers.reference_solution(gm, x, SIGMA_MAX, rtol=1e-7, atol=1e-7)
    init = base_plan("dpmpp_2m", 4, SIGMA_MIN, SIGMA_MAX)
    ref_val = solvers.get("dpmpp_2m")(gm, x_val.double(), init)
    p, log = fit(gm, x, ref, init, SIGMA_MIN, learn=learn, iters=20,
                 lr=0.05, x_val=x_val, ref_val=ref_val, val_every=5)
    assert log["calibration_mse"][-1] < log["calibration_mse"][0]  # calibration improved
    assert len(log["validation_mse"]) == 5 and log["best_validation_mse"] < 1e-20
    assert min(log["validation_mse"][1:]) > 0  # every later iterate is worse on validation
    torch.testing.assert_close(p.sigmas, init.double(), rtol=0, atol=1e-12)
    # the whole start comes back, x_weights too (they once aliased the trained parameter)
    assert not p.x_weights.any()
    torch.testing.assert_close(p.eval_sigmas, init.double()[:-1], rtol=1e-12, atol=0)
    out = rollout(gm, x_val.double(), p.sigmas, p.eval_sigmas, p.weights, p.x_weights)
    torch.testing.assert_close(out, ref_val, rtol=0, atol=1e-10)


def test_scheduler_refuses_a_tuned_solver_instead_of_ignoring_its_schedule(tmp_path):
    """FewstepScheduler plans its own schedule over the model's sigma range; a tuned solver's
    sigmas belong to the teacher it was tuned on, so it is refused by name, not run on
    other sigmas."""
    from fewstep.interop import FewstepScheduler

    path = _artefact("gmm2", nfe=4).save(tmp_path / "t")
    with pytest.raises(ValueError, match="is a tuned solver"):
        FewstepScheduler(solver=str(path))


def test_cli_student_with_a_tuned_solver_is_checked_against_its_teacher(tmp_path, capsys):
    """The teacher's fingerprint is checked and named, not the student's weights'."""
    from fewstep import zoo

    if not zoo.built("checkerboard-cd"):
        pytest.skip("zoo entry checkerboard-cd is not built")
    teacher = "zoo:checkerboard-edm"
    argv = ["sample", "--teacher", teacher, "--student", "zoo:checkerboard-cd", "--n", "4",
            "--out", str(tmp_path / "o")]
    other = _artefact("gmm2", nfe=3).save(tmp_path / "gmm2")
    assert cli.main([*argv, "--solver", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"this teacher {teacher!r} has fingerprint " \
           f"{tune.fingerprint(get_teacher(teacher).denoiser)}" in err, err
    own = dataclasses.replace(_artefact("gmm2", nfe=3), teacher=teacher,
                              teacher_fingerprint=tune.fingerprint(get_teacher(teacher).denoiser))
    assert cli.main([*argv, "--solver", str(own.save(tmp_path / "own"))]) == 0


def test_fingerprint_is_hashed_once_per_teacher_object_until_its_weights_change(monkeypatch):
    """The bench checks a tuned solver's teacher at every case's set-up: the module is
    hashed once, and again only after a tensor is changed in place or replaced."""
    from fewstep.tune import artefact

    calls = []
    real = artefact._hash
    monkeypatch.setattr(artefact, "_hash", lambda *a: calls.append(1) or real(*a))
    net = torch.nn.Linear(3, 3)
    tuned = dataclasses.replace(_artefact("gmm2"), teacher_fingerprint=tune.fingerprint(net))
    for _ in range(3):
        tuned.check_teacher(net)
    assert len(calls) == 1
    copy = torch.nn.Linear(3, 3).requires_grad_(False)
    copy.load_state_dict(net.state_dict())
    assert tune.fingerprint(copy) == tuned.teacher_fingerprint and len(calls) == 2
    with torch.no_grad():
        copy.weight.add_(1.0)  # in place: the cached fingerprint is stale
    with pytest.raises(ValueError, match="was tuned on teacher"):
        tuned.check_teacher(copy)
    net.bias = torch.nn.Parameter(torch.zeros(3))  # replaced
    assert tune.fingerprint(net) != tuned.teacher_fingerprint and len(calls) == 4


def test_pas_tunes_from_its_own_default_base_and_a_worse_tuning_warns(tmp_path, monkeypatch):
    """`fewstep tune --method pas` without --base starts from ddim (PAS corrects ddim or
    ipndm; the general default dpmpp_2m was refused); a tuned solver worse on validation than
    its base is flagged."""
    args = ["tune", "--teacher", "gmm2", "--method", "pas", "--nfe", "4", "--n-cal", "8",
            "--n-val", "8", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "p")]
    assert cli.main(args) == 0
    assert tune.load(tmp_path / "p").info["from"] == "ddim"
    # the tuned solver's loss (called with its schedule, weights and knobs) above the base's
    monkeypatch.setattr(tune_api, "validation_loss", lambda *a, **k: 2.0 if len(a) >= 8 else 1.0)
    with pytest.warns(UserWarning, match=r"worse on validation than its untuned base 'ddim' "
                                         r"\(2 vs 1\)"):
        tune_api.tune("gmm2", "pas", 4, base="ddim", n_cal=8, n_val=8, cache=tmp_path / "c")
