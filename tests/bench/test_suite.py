import pytest

from fewstep.bench.suite import load_suite


def test_builtin_quick_suite_meets_the_brief():
    s = load_suite("quick")
    fewstep_methods = [m for m in s.methods if ":" not in m]
    peers = [m for m in s.methods if m.startswith("diffusers:")]
    assert len(s.teachers) >= 4 and len(fewstep_methods) >= 10 and len(peers) >= 4
    assert min(s.nfe) == 1 and max(s.nfe) == 20 and len(s.seeds) >= 3
    cases = s.cases()
    assert len({c.key for c in cases}) == len(cases)
    assert any("diffusers:heun at NFE 2" in why for why in s.skipped)


def _write(tmp_path, body):
    p = tmp_path / "s.toml"
    p.write_text(body)
    return p


@pytest.mark.parametrize("body,match", [
    ('name="x"\nteachers=["nope"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\n',
     "unknown teacher 'nope'"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["dpm_solver_9"]\nnfe=[2]\nseeds=[0]\n',
     "unknown solver 'dpm_solver_9'"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["diffusers:magic"]\nnfe=[2]\nseeds=[0]\n',
     "unknown peer 'diffusers:magic'"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\ncolour="red"\n',
     "unknown suite keys \\['colour'\\]"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[0, -1]\nseeds=[0]\n',
     r"nfe must be positive integers; got \[0, -1\] \(bad: 0, -1\)"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[4, 2.5]\nseeds=[0]\n',
     r"nfe must be positive integers; got \[4, 2.5\] \(bad: 2.5\)"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[]\nseeds=[0]\n',
     r"nfe must be a non-empty list of positive integers; got \[\]"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[-3]\n',
     r"seeds must be non-negative integers; got \[-3\] \(bad: -3\)"),
    ('name="x"\nteachers=[]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\n',
     r"teachers must be a non-empty list"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\nn_samples=0\n',
     r"n_samples must be an integer >= 2; got 0"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\n'
     'reference_rtol=-1\n', r"reference_rtol must be a number in \(0, 1\); got -1"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\nschedule="nope"\n',
     r"unknown schedule 'nope'"),
    ('name="x"\nteachers=["gmm2"]\nmethods=["ddim"]\nnfe=[2]\nseeds=[0]\ntiming_repeats=0\n',
     r"timing_repeats must be an integer >= 1; got 0"),
])
def test_bad_suites_name_the_problem(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        load_suite(_write(tmp_path, body))


def test_unknown_builtin_and_missing_file():
    with pytest.raises(ValueError, match="unknown suite 'nope'; built-in suites"):
        load_suite("nope")
    with pytest.raises(FileNotFoundError):
        load_suite("/nonexistent/suite.toml")


def test_budget_below_minimum_is_skipped_not_changed(tmp_path):
    s = load_suite(_write(tmp_path, 'name="x"\nteachers=["gmm2"]\nmethods=["dpm_solver_3"]\n'
                                    'nfe=[2, 4]\nseeds=[0, 1]\n'))
    assert [(c.nfe, c.seed) for c in s.cases()] == [(4, 0), (4, 1)]
    assert s.skipped == ["dpm_solver_3 at NFE 2: below its minimum of 4"]


def test_by_teacher_nfe_runs_on_its_teacher_only(tmp_path):
    s = load_suite(_write(tmp_path, 'name="x"\nteachers=["gmm2", "moons"]\nmethods=["ddim"]\n'
                          'nfe=[2, 5]\nseeds=[0]\n[by_teacher.gmm2]\nnfe=[50, 2, 5, 20]\n'))
    budgets = {(c.teacher, c.nfe) for c in s.cases()}
    assert budgets == {("gmm2", 2), ("gmm2", 5), ("gmm2", 20), ("gmm2", 50), ("moons", 2),
                       ("moons", 5)}
    assert s.nfe_of("moons") == [2, 5] and s.nfe_of("gmm2") == [2, 5, 20, 50]


def test_by_teacher_takes_a_teacher_name_with_a_dot(tmp_path):
    """A guided zoo teacher's name has a dot (@w=1.5); its by_teacher table is found (the
    check once split the key on dots: KeyError 'zoo:digits-cond-edm@w=1')."""
    s = load_suite(_write(tmp_path, 'name="x"\nteachers=["zoo:digits-cond-edm@w=1.5"]\n'
                          'methods=["ddim"]\nnfe=[2]\nseeds=[0]\nn_samples=20\n'
                          '[by_teacher."zoo:digits-cond-edm@w=1.5"]\nnfe=[1, 4]\n'))
    assert s.nfe_of("zoo:digits-cond-edm@w=1.5") == [1, 4]
    with pytest.raises(ValueError, match=r"by_teacher.zoo:digits-cond-edm@w=1.5.nfe must be"):
        load_suite(_write(tmp_path, 'name="x"\nteachers=["zoo:digits-cond-edm@w=1.5"]\n'
                          'methods=["ddim"]\nnfe=[2]\nseeds=[0]\nn_samples=20\n'
                          '[by_teacher."zoo:digits-cond-edm@w=1.5"]\nnfe=[0]\n'))


def test_every_builtin_suite_reaches_nfe_50_on_a_teacher():
    """Convergence as NFE grows needs NFE 50 on at least one teacher of every suite."""
    for name in ("smoke", "quick", "full"):
        s = load_suite(name)
        assert max(max(s.nfe_of(t)) for t in s.teachers) == 50, name


def test_a_parallel_sampler_row_is_absent_with_its_reason():
    """ParaDiGMS spends more NFE than its sequential grid for fewer rounds, so the suite skips
    it on an NFE grid with that reason (not the generic adaptive one); ddim still runs."""
    from fewstep.bench.suite import Suite

    s = Suite("t", ["gmm2"], ["ddim", "paradigms", "rk45"], [4], [0], n_samples=4)
    s.validate()
    assert [c.method for c in s.cases()] == ["ddim"]
    assert any(w.startswith("paradigms: parallel sampler") and "rounds" in w for w in s.skipped)
    assert any(w.startswith("rk45: adaptive (NFE follows tolerances)") for w in s.skipped)
