"""Bring your own model: checkpoint:PATH and python:MODULE:ATTR teachers, external students
(student:python:MODULE:ATTR), sampling a trained teacher, and student names in the tables."""

import textwrap

import pytest
import torch

from fewstep.analytic import GaussianMixture
from fewstep.bench import students, teachers
from fewstep.bench.report.text import short_label
from fewstep.bench.runner import run_suite, start_noise
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.cli import main

MODULE = textwrap.dedent('''
    import torch
    from fewstep.analytic import GaussianMixture
    from fewstep.bench.teachers import Teacher

    GM = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 0.1)

    def denoiser(x, sigma):              # a bare D(x, sigma)
        return GM(x, sigma)
    denoiser.sample_shape = (2,)

    class Scored:                        # a factory: the class builds the denoiser
        data = "moons"
        def __call__(self, x, sigma):
            return GM(x, sigma)

    def as_teacher():                    # a factory returning a Teacher
        return Teacher("mine", GM, (2,), 0.002, 80.0, None)

    MU, VAR = torch.tensor([0.5, -0.5]), 0.1
    G1 = GaussianMixture(MU[None], VAR)  # one Gaussian: its PF-ODE flow is closed-form

    def gauss(x, sigma):
        return G1(x, sigma)
    gauss.sample_shape = (2,)

    def one_step(x, sigma):              # the exact consistency function of G1:
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return MU.to(x) + (x - MU.to(x)) * (VAR / (VAR + s**2)) ** 0.5
    one_step.nfe = (1,)                  # declared a one-step generator

    not_callable = 3
    def no_shape(x, sigma):
        return x
''')


@pytest.fixture()
def own(tmp_path, monkeypatch):
    (tmp_path / "own_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "own_models"
    teachers.get.cache_clear()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A (barely) trained moons teacher, as `fewstep train` writes it."""
    out = tmp_path_factory.mktemp("runs") / "moons-teacher"
    assert main(["train", "--data", "moons", "--out", str(out), "--steps", "4", "--hidden",
                 "16", "--batch-size", "32", "--quiet"]) == 0
    return out


def test_python_teacher_forms(own):
    bare = teachers.get(f"python:{own}:denoiser")
    assert bare.sample_shape == (2,) and bare.reference_samples is None
    x = torch.randn(5, 2)
    gm = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 0.1)
    torch.testing.assert_close(bare.denoiser(x, torch.tensor(2.0)), gm(x, torch.tensor(2.0)))
    scored = teachers.get(f"python:{own}:Scored")  # factory -> denoiser with data
    assert scored.reference_samples is not None and scored.kind == "vector"
    assert teachers.get(f"python:{own}:as_teacher").name == f"python:{own}:as_teacher"


@pytest.mark.parametrize("spec, message", [
    ("python:own_models:nope", "has no attribute 'nope'"),
    ("python:no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("python:own_models", "expected python:MODULE:ATTR"),
    ("python:own_models:not_callable", "not a Teacher, a factory or a denoiser"),
    ("python:own_models:no_shape", "needs a sample_shape"),
    ("checkpoint:/no/such/run", "no checkpoint there"),
    ("zoo:no-such-entry", "unknown zoo entry 'no-such-entry'"),
])
def test_bad_teachers_are_one_line_errors(own, spec, message, capsys, tmp_path):
    with pytest.raises(ValueError, match=message):
        teachers.get(spec)
    assert spec not in teachers.available()  # a failed load registers nothing
    assert main(["bench", "--teacher", spec, "--suite", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_checkpoint_teacher_knows_its_data(run_dir):
    t = teachers.get(f"checkpoint:{run_dir}")
    assert t.sample_shape == (2,) and t.reference_samples is not None
    assert "moons" in t.description
    assert teachers.get(f"checkpoint:{run_dir}/checkpoints/step_00000004").sample_shape == (2,)


def test_bench_a_checkpoint_teacher_and_an_external_student(own, run_dir, tmp_path, capsys):
    ext = f"student:python:{own}:one_step"
    assert main(["bench", "--suite", "smoke", "--teacher", f"checkpoint:{run_dir}", "--out",
                 str(tmp_path / "a"), "--list"]) == 0
    assert f"checkpoint:{run_dir}" in capsys.readouterr().out
    suite = Suite(name="own", teachers=[f"python:{own}:gauss"], methods=[ext, "ddim"],
                  nfe=[1, 2], seeds=[0], n_samples=32, reference_rtol=1e-6)
    suite.validate()
    suite.cases()
    assert any("declares nfe=(1,)" in why for why in suite.skipped)
    assert run_suite(suite, tmp_path / "b", progress=False).failed == 0
    rows = {(r["method"], r["nfe_target"]): r for r in Store(tmp_path / "b" / "results.sqlite")
            .rows()}
    assert set(rows) == {(ext, 1), ("ddim", 1), ("ddim", 2)}
    # the exact one-step map reproduces the reference PF-ODE endpoint; DDIM at 1 step does not
    assert rows[(ext, 1)]["metrics"]["ode_rmse"] < 1e-4
    assert rows[("ddim", 1)]["metrics"]["ode_rmse"] > 0.1
    assert rows[(ext, 1)]["train_seconds"] is None  # not known: never shown as free
    assert rows[("ddim", 1)]["train_seconds"] == 0.0


def test_bad_external_student_is_named(own):
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        Suite(name="x", teachers=["gmm2"], methods=[f"student:python:{own}:missing"], nfe=[1],
              seeds=[0]).validate()


def test_sample_a_trained_teacher_by_path(run_dir, tmp_path, capsys):
    assert main(["sample", "--teacher", str(run_dir), "--solver", "heun", "--nfe", "3", "--n",
                 "8", "--out", str(tmp_path / "s")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["sample", "--teacher", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "t")]) == 2
    assert "unknown teacher" in capsys.readouterr().err


def test_student_labels_tell_students_apart():
    a = short_label("student:/x/runs/moons-cd@2")
    b = short_label("student:/x/runs/moons-ct@2")
    assert a == "moons-cd@2" and b == "moons-ct@2"
    assert short_label("student:/r/moons-pd/checkpoints/step_00000002@2") == \
        "moons-pd/step_00000002@2"
    assert students.label("student:python:m:f") == "py:f"
    assert short_label("dpmpp_2m@4") == "dpmpp_2m@4"


def test_start_noise_is_shared(own):
    t = teachers.get(f"python:{own}:denoiser")
    assert torch.equal(start_noise(t, 0, 4), start_noise(t, 0, 4))
