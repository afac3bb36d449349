"""Early-stopped DDPM as a bench method: ``early_stop:SOLVER:PRIOR@sigma_s=S``."""

import math

import pytest
import torch

from fewstep import nets, zoo
from fewstep.bench import early_stopped, students, teachers
from fewstep.bench.report import amortised, peer_comparison
from fewstep.bench.runner import run_suite, start_noise
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.cli import main
from fewstep.distill import get_method
from fewstep.early_stop import OneStepPrior, sample_early_stopped
from fewstep.train import TrainConfig, train


@pytest.fixture(scope="module")
def kd_prior(tmp_path_factory):
    """A (barely) trained one-step KD student of gmm2: a one-step prior (``student:PATH``)."""
    root = tmp_path_factory.mktemp("es")
    teacher = teachers.get("gmm2")
    kd = get_method("kd")(num_pairs=64, nfe=4)
    train(kd, nets.EDMPrecond(nets.MLPDenoiserNet(2, hidden=32)),
          teacher.reference_samples(512, 0),
          TrainConfig(out_dir=str(root / "kd"), steps=3, batch_size=64, progress=False),
          teacher=teacher.denoiser)
    return f"student:{root / 'kd'}"


def test_grammar_parses_solver_prior_and_sigma_s():
    assert early_stopped.parse("early_stop:dpmpp_2m:zoo:digits-vae@sigma_s=1.5") == \
        ("dpmpp_2m", "zoo:digits-vae", 1.5)
    assert early_stopped.parse("early_stop:heun:student:zoo:checkerboard-kd@sigma_s=2") == \
        ("heun", "student:zoo:checkerboard-kd", 2.0)
    assert early_stopped.label("early_stop:heun:student:zoo:checkerboard-kd@sigma_s=2") == \
        "es/heun/zoo/kd@sigma_s=2"
    assert students.label("early_stop:ddim:gaussian@sigma_s=0.5") == "es/ddim/gaussian@sigma_s=0.5"


@pytest.mark.parametrize("method,match", [
    ("early_stop:ddim:gaussian", "reads early_stop:SOLVER:PRIOR@sigma_s=S"),
    ("early_stop:gaussian@sigma_s=1", "reads early_stop:SOLVER:PRIOR@sigma_s=S"),
    ("early_stop:ddim:gaussian@sigma_s=abc", "sigma_s must be a number; got 'abc'"),
    ("early_stop:ddim:gaussian@sigma_s=0", r"finite number > 0 .*; got 0"),
    ("early_stop:ddim:gaussian@sigma_s=-1", "got -1"),
    ("early_stop:ddim:gaussian@sigma_s=inf", "got inf"),
    ("early_stop:ddim:gaussian@sigma_s=nan", "got nan"),
    ("early_stop:nosuch:gaussian@sigma_s=1", r"'early_stop:nosuch:gaussian@sigma_s=1': unknown "
     "solver 'nosuch'"),
    ("early_stop:rk45:gaussian@sigma_s=1", "fixed-grid solver, not an adaptive one"),
    ("early_stop:paradigms:gaussian@sigma_s=1", "fixed-grid solver, not a parallel one"),
    ("early_stop:ddim:uniform@sigma_s=1", "unknown prior 'uniform'"),
    ("early_stop:ddim:zoo:digits-edm@sigma_s=1", "zoo:digits-edm is not a zoo autoencoder"),
    ("early_stop:ddim:student:zoo:checkerboard-cd@sigma_s=1", "is a cd student; a prior is a "
     "one-step student"),
])
def test_bad_entries_are_named_in_one_line(method, match):
    with pytest.raises(ValueError, match=match) as e:
        Suite(name="x", teachers=["moons"], methods=[method], nfe=[2], seeds=[0]).validate()
    assert "\n" not in str(e.value)


def test_sigma_s_above_the_teachers_sigma_max_is_refused():
    with pytest.raises(ValueError, match=r"sigma_s=100 is above the teacher's sigma_max=80"):
        Suite(name="x", teachers=["moons"], methods=["early_stop:ddim:gaussian@sigma_s=100"],
              nfe=[2], seeds=[0]).validate()
    # at or below sigma_min: refused when the suite is checked, not as a failed case later
    with pytest.raises(ValueError, match=r"sigma_s=0.002 is not above the teacher's "
                       r"sigma_min=0.002"):
        Suite(name="x", teachers=["moons"], methods=["early_stop:ddim:gaussian@sigma_s=0.002"],
              nfe=[2], seeds=[0]).validate()
    # on a teacher it is not run on (another data set), it is skipped, not refused
    Suite(name="x", teachers=["zoo:checkerboard-edm"],
          methods=["early_stop:ddim:zoo:digits-vae@sigma_s=100"], nfe=[2], seeds=[0]).validate()


@pytest.mark.parametrize("method,teacher,why", [
    ("early_stop:ddim:zoo:digits-vae@sigma_s=1", "moons", "a prior of digits, not run on moons"),
    ("early_stop:ddim:zoo:digits-vae@sigma_s=1", "zoo:checkerboard-edm", "a prior of digits"),
    ("early_stop:ddim:student:zoo:checkerboard-kd@sigma_s=1", "zoo:digits-edm",
     "its prior is a student of zoo:checkerboard-edm, not run on zoo:digits-edm"),
    ("early_stop:ddim:student:zoo:checkerboard-kd@sigma_s=1", "checkerboard",
     "its prior is a student of zoo:checkerboard-edm"),
    ("early_stop:ddim:gaussian@sigma_s=1", "gmm2", "train data is not known"),
    ("early_stop:ddim:zoo:digits-vae@sigma_s=1", "zoo:digits-cond-edm", "class-conditional"),
    ("early_stop:ddim:zoo:digits-vae@sigma_s=1", "zoo:digits-latent-edm", "latent"),
])
def test_skipped_on_a_teacher_of_other_data(method, teacher, why):
    suite = Suite(name="x", teachers=[teacher], methods=[method], nfe=[2], seeds=[0])
    assert suite.cases() == [] and len(suite.skipped) == 1 and why in suite.skipped[0]
    own = {"zoo:digits-vae": "zoo:digits-edm", "student:zoo:checkerboard-kd":
           "zoo:checkerboard-edm", "gaussian": "moons"}[early_stopped.parse(method)[1]]
    assert early_stopped.unreachable(method, 2, own) is None  # on its own teacher it runs


def test_budget_below_the_solvers_minimum_is_skipped():
    suite = Suite(name="x", teachers=["moons"], methods=["early_stop:heun:gaussian@sigma_s=1"],
                  nfe=[1, 2, 3], seeds=[0])
    assert [c.nfe for c in suite.cases()] == [3]
    assert suite.skipped == [f"early_stop:heun:gaussian@sigma_s=1 at NFE {k}: below heun's "
                             "minimum of 3" for k in (1, 2)]


def test_one_step_prior_is_the_generator_on_scaled_latents():
    """With G(x, sigma) = x / sigma the prior returns its latents z exactly."""
    prior = OneStepPrior(lambda x, s: x / s[:, None], (2,), 80.0)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(prior.sample(5, torch.Generator().manual_seed(3)), z.double())
    assert prior.evaluations == 1


def test_rows_spend_the_nfe_asked_and_carry_the_priors_cost(kd_prior, tmp_path):
    es2 = f"early_stop:ddim:{kd_prior}@sigma_s=2"
    es_heun = f"early_stop:heun:{kd_prior}@sigma_s=0.5"
    suite = Suite(name="es", teachers=["gmm2"], methods=[es2, es_heun, "ddim"], nfe=[1, 3, 4],
                  seeds=[0, 1], n_samples=32, reference_rtol=1e-4, timing_repeats=1)
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0 and summary.total == 2 * (3 + 2 + 3)  # heun: not at NFE 1
    rows = Store(tmp_path / "results.sqlite").rows()
    seconds, teacher_nfe = students.training_cost(kd_prior)
    assert seconds > 0 and teacher_nfe > 0
    for r in rows:
        assert r["status"] == "ok" and r["nfe"] == r["nfe_target"]
        if r["method"] != "ddim":
            assert r["impl"] == "early_stop"
            assert (r["train_seconds"], r["train_teacher_nfe"]) == (seconds, teacher_nfe)
            assert "1 network pass(es) per sample" in " ".join(r["config"]["notes"])
    assert peer_comparison(rows) == []  # early-stopped rows are fewstep's own, not peers
    points = {(p.agg.method, p.agg.nfe_target): p for p in amortised(rows, "sw")}
    assert points[(es2, 4)].one_off_s == pytest.approx(seconds)
    assert points[("ddim", 4)].one_off_s == 0
    assert math.isfinite(points[(es2, 4)].seconds(1000))


def test_rows_are_the_early_stopped_sampler_on_the_cases_noise(kd_prior):
    """A row's samples: the prior's (latents from the seed) noised with the case's start noise
    z to sigma_s, then the solver; the same seed gives the same samples."""
    teacher = teachers.get("gmm2")
    method = f"early_stop:dpmpp_2m:{kd_prior}@sigma_s=1.5"
    x = start_noise(teacher, 4, 16)
    with torch.no_grad():
        out, steps = early_stopped.run(method, teacher.denoiser, x, 4, teacher, seed=4)
        again, _ = early_stopped.run(method, teacher.denoiser, x, 4, teacher, seed=4)
        other, _ = early_stopped.run(method, teacher.denoiser, x, 4, teacher, seed=5)
        x0 = OneStepPrior(students.model(kd_prior), (2,), teacher.sigma_max).sample(
            16, torch.Generator().manual_seed(early_stopped.PRIOR_SEED + 4))
        want = sample_early_stopped(teacher.denoiser, x0.float(), x / teacher.sigma_max, 1.5,
                                    "dpmpp_2m", 4, sigma_max=teacher.sigma_max)
    assert steps == 4
    torch.testing.assert_close(out, want)
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_vae_prior_cost_is_the_autoencoders_training():
    if not zoo.built("digits-vae"):
        pytest.skip("zoo entry digits-vae not built")
    method = "early_stop:dpmpp_2m:zoo:digits-vae@sigma_s=1"
    assert early_stopped.training_cost(method) == (zoo.entry("digits-vae").cost.seconds, 0.0)
    assert "1 network pass(es) per sample" in early_stopped.notes(method)[0]
    assert early_stopped.training_cost("early_stop:ddim:gaussian@sigma_s=1") == (0.0, 0.0)


def test_cli_names_a_bad_sigma_s_in_one_line(tmp_path, capsys):
    suite = tmp_path / "es.toml"
    suite.write_text('name = "es"\nteachers = ["moons"]\nnfe = [2]\nseeds = [0]\n'
                     'methods = ["early_stop:ddim:gaussian@sigma_s=200"]\n')
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sigma_s=200 is above the teacher's sigma_max=80" in err and "\n" not in err
    assert not (tmp_path / "out" / "results.sqlite").exists()  # nothing half-written
