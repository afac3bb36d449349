"""Trained students run in the bench as methods ``student:PATH``."""

import pytest

from fewstep import nets
from fewstep.bench import teachers
from fewstep.bench.report import peer_comparison
from fewstep.bench.runner import run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.distill import get_method
from fewstep.train import TrainConfig, train


@pytest.fixture(scope="module")
def students_dir(tmp_path_factory):
    """(Barely) trained CD, KD, PD, UFOGen, ADD and DFNO students of the gmm2 teacher."""
    root = tmp_path_factory.mktemp("students")
    teacher = teachers.get("gmm2").denoiser
    data = teachers.get("gmm2").reference_samples(512, 0)
    cfg = dict(steps=3, batch_size=64, progress=False)
    cd = get_method("cd")()
    train(cd, cd.init_student(None, nets.ConsistencyPrecond(nets.MLPDenoiserNet(2, hidden=32))),
          data, TrainConfig(out_dir=str(root / "cd"), **cfg), teacher=teacher)
    kd = get_method("kd")(num_pairs=64, nfe=4)
    train(kd, nets.EDMPrecond(nets.MLPDenoiserNet(2, hidden=32)), data,
          TrainConfig(out_dir=str(root / "kd"), **cfg), teacher=teacher)
    dfno = get_method("dfno")(num_pairs=64, nfe=4, slots=2,
                              sigma_max=teachers.get("gmm2").sigma_max)
    train(dfno, nets.TrajectoryOperator([2], sigma_max=dfno.sigma_max, width=16), data,
          TrainConfig(out_dir=str(root / "dfno"), **cfg), teacher=teacher)
    pd = get_method("pd")(teacher_steps=4, steps_per_round=2,
                          sigma_max=teachers.get("gmm2").sigma_max)
    train(pd, nets.EDMPrecond(nets.MLPDenoiserNet(2, hidden=32)), data,
          TrainConfig(out_dir=str(root / "pd"), checkpoint_every=2, keep_checkpoints=2,
                      **{**cfg, "steps": pd.total_steps}), teacher=teacher)
    smax = teachers.get("gmm2").sigma_max
    for name, params in (("ufogen", {"sigma_max": smax}),
                         ("add", {"sigma_max": smax, "features": "random",
                                  "num_student_steps": 2})):
        train(get_method(name)(**params), nets.EDMPrecond(nets.MLPDenoiserNet(2, hidden=32)),
              data, TrainConfig(out_dir=str(root / name), **cfg), teacher=teacher)
    return root


def test_gan_students_run_at_their_native_budgets(students_dir, tmp_path):
    """UFOGen samples in one step; ADD re-noises over its own levels, up to their count."""
    ufo, add = (f"student:{students_dir / n}" for n in ("ufogen", "add"))
    suite = Suite(name="gan", teachers=["gmm2"], methods=[ufo, add], nfe=[1, 2, 3], seeds=[0],
                  n_samples=32, reference_rtol=1e-4)
    suite.cases()
    assert sum("one-step (UFOGEN) student" in why for why in suite.skipped) == 2
    assert sum("ADD student samples in 1..2 steps" in why for why in suite.skipped) == 1
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0 and summary.total == 3
    rows = Store(tmp_path / "results.sqlite").rows()
    assert sorted((r["method"] == add, r["nfe"]) for r in rows) == [(False, 1), (True, 1),
                                                                   (True, 2)]
    assert all(r["train_seconds"] > 0 for r in rows)


def test_students_are_bench_methods(students_dir, tmp_path):
    cd, kd = f"student:{students_dir / 'cd'}", f"student:{students_dir / 'kd'}"
    dfno = f"student:{students_dir / 'dfno'}"
    suite = Suite(name="st", teachers=["gmm2"], methods=[cd, kd, dfno, "ddim"], nfe=[1, 2],
                  seeds=[0], n_samples=32, reference_rtol=1e-4)
    suite.cases()
    assert any("one-step (KD) student" in why for why in suite.skipped)
    assert any("one-step (DFNO) student" in why for why in suite.skipped)
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0 and summary.total == 6  # kd and dfno only at NFE 1
    rows = Store(tmp_path / "results.sqlite").rows()
    for r in rows:
        assert r["nfe"] == r["nfe_target"] and r["network_s"] > 0
    assert {r["impl"] for r in rows} == {"student", "fewstep"}
    assert peer_comparison(rows) == []  # students are not peers


def test_pd_students_run_on_their_own_grid(students_dir, tmp_path):
    one = f"student:{students_dir / 'pd'}"  # the final (1-step) student
    two = f"student:{students_dir / 'pd' / 'checkpoints' / 'step_00000002'}"  # end of round 1
    suite = Suite(name="pd", teachers=["gmm2"], methods=[one, two], nfe=[1, 2, 4], seeds=[0],
                  n_samples=32, reference_rtol=1e-4)
    suite.cases()
    assert sum("PD student (its own grid)" in why for why in suite.skipped) == 4
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0 and summary.total == 2
    rows = {r["method"]: r for r in Store(tmp_path / "results.sqlite").rows()}
    assert rows[one]["nfe"] == 1 and rows[two]["nfe"] == 2


def test_bad_student_entries_are_named(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        Suite(name="x", teachers=["gmm2"], methods=[f"student:{tmp_path}/none"], nfe=[1],
              seeds=[0]).validate()
