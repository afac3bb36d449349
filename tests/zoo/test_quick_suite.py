"""The quick suite compares every family on trained zoo teachers: solvers, diffusers peers and
every student of each zoo teacher, side by side; a slow test rebuilds a committed entry."""

import pytest
import torch

import fewstep.data
from fewstep import zoo
from fewstep.bench import teachers
from fewstep.bench.suite import load_suite


def test_quick_suite_has_trained_teachers_with_all_their_students():
    s = load_suite("quick")
    trained = [t for t in s.teachers if t.startswith("zoo:")]
    kinds = {teachers.get(t).kind for t in trained}
    assert kinds == {"vector", "image"}  # a trained 2-D teacher and a trained image teacher
    cases = s.cases()
    for t in trained:
        own = {f"student:zoo:{n}" for n, r in zoo.RECIPES.items()
               if r.teacher == t.removeprefix("zoo:") and zoo.built(n)}
        assert own and own <= set(s.methods), t  # every built student of the teacher
        ran = {c.method for c in cases if c.teacher == t}
        assert own <= ran, t  # every student runs on its teacher, at least at one budget
        assert {m for m in s.methods if m.startswith("diffusers:")} <= ran
        assert {m for m in s.methods if ":" not in m} <= ran  # every solver of the suite
    for c in cases:
        if c.method.startswith("student:zoo:"):
            assert c.teacher == f"zoo:{zoo.recipe(c.method.removeprefix('student:zoo:')).teacher}"


def test_the_full_suite_benches_the_16x16_zoo_teachers_with_every_solver():
    """shapes-edm and patches-edm (too slow for make bench) run in the full suite."""
    s = load_suite("full")
    for t in ("zoo:shapes-edm", "zoo:patches-edm"):
        assert zoo.built(t.removeprefix("zoo:")) and t not in load_suite("quick").teachers
        ran = {c.method for c in s.cases() if c.teacher == t}
        solvers_and_peers = {m for m in s.methods if not m.startswith(("baseline:", "student:"))}
        assert solvers_and_peers <= ran, t  # students run on their own teachers only


def test_committed_entries_load_and_denoise():
    for name in zoo.available():
        if not zoo.built(name):
            continue
        e = zoo.entry(name)
        D = zoo.load(name)
        if e.recipe.role == "autoencoder":  # a round trip of images of its data set
            x = torch.randn(3, *fewstep.data.get(e.recipe.data).shape)
            with torch.no_grad():
                assert D(x).shape == x.shape and torch.isfinite(D(x)).all(), name
            assert e.cost.seconds > 0 and e.cost.steps == e.recipe.steps, name
            continue
        root = name  # the teacher at the root of a chain of students
        while zoo.recipe(root).teacher is not None:
            root = str(zoo.recipe(root).teacher)
        shape = teachers.get(f"zoo:{root}").sample_shape
        x = torch.randn(3, *shape)
        kwargs = e.recipe.backbone["kwargs"]
        k = kwargs.get("num_classes", 0)  # a whole-student spec (GAN pair, operator) has none
        cond = {"cond": torch.arange(3) % k} if k else {}
        if kwargs.get("w_embedding"):  # a guided-distillation student takes w
            cond["w"] = torch.full((3,), 2.0)
        if e.recipe.method in ("ddgan", "siddm"):  # a generator draws x0 given its latent z
            cond["z"] = torch.randn(3, *shape)
        # an operator maps noise at its sigma_max to the sample
        sigma = e.method["params"]["sigma_max"] if e.recipe.method == "dfno" else 1.0
        with torch.no_grad():
            out = D(x, torch.full((3,), sigma), **cond)
        assert out.shape == x.shape and torch.isfinite(out).all(), name
        assert e.cost.seconds > 0 and e.cost.steps == e.recipe.steps, name
        assert (e.cost.teacher_nfe > 0) == (e.recipe.method in ("cd", "pd", "kd", "direct_cm",
                                                                "guided", "add", "dfno",
                                                                "lcd"))


@pytest.mark.slow
def test_a_committed_entry_rebuilds_to_its_recorded_hash(tmp_path):
    e = zoo.entry("checkerboard-ect")
    if e.environment.get("torch") != torch.__version__:
        pytest.skip(f"recorded with torch {e.environment.get('torch')}, not {torch.__version__}")
    assert zoo.build("checkerboard-ect", tmp_path).sha256 == e.sha256
