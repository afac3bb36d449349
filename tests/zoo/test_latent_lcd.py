"""The zoo's latent consistency model: its recipe builds an LCD student of the latent teacher
in the autoencoder's latents, and the bench gives it the teacher's guidance convention."""

import dataclasses

import pytest
import torch

from fewstep import zoo
from fewstep.bench import students
from fewstep.bench.teachers import GuidedRows
from fewstep.latent import space


def test_the_recipe_builds_a_latent_lcm(tmp_path):
    r = dataclasses.replace(zoo.recipe("digits-latent-lcd"), name="tiny-latent-lcd", steps=2,
                            batch_size=16)
    e = zoo.build(r, tmp_path)
    assert e.model["class"] == "ConsistencyPrecond"  # not an EDM denoiser
    assert e.model["kwargs"]["sigma_data"] == 1.0
    assert e.model["kwargs"]["net"]["kwargs"]["w_embedding"] is True
    assert e.latent == zoo.entry("digits-latent-edm").latent  # the teacher's latent space
    assert e.cost.teacher_nfe == 2 * 2  # Euler on the guided ODE: 2 rows per step
    f = zoo.load("tiny-latent-lcd", tmp_path)
    sp = space("digits-latent-edm")  # the same latent space (its autoencoder is packaged)
    z = torch.randn(4, *sp.shape)
    cond = {"cond": torch.arange(4), "w": torch.full((4,), 2.5)}
    assert torch.equal(f(z, torch.full((4,), 0.002), **cond), z)  # f(x, sigma_min) = x
    assert sp.decode(f(z * 80, torch.full((4,), 80.0), **cond)).shape == (4, 1, 8, 8)


@pytest.mark.skipif(not zoo.built("digits-latent-lcd"), reason="digits-latent-lcd not built")
def test_the_bench_gives_the_lcm_the_teachers_guidance():
    """The teacher zoo:digits-latent-edm@w=W guides as (1 + W) D_c - W D_u; the LCM's w is
    the CFG scale, so on that teacher the student is sampled at 1 + W."""
    method = "student:zoo:digits-latent-lcd@w=1.5"
    students.check(method)
    model = students.model(method)
    assert isinstance(model, GuidedRows) and model.takes_w and model.w == 2.5
    assert model.evaluations_per_row == 1
    assert students.wrong_teacher(method, "zoo:digits-latent-edm@w=1.5") is None
    assert students.wrong_teacher(method, "zoo:digits-latent-edm@w=2") is not None


@pytest.mark.skipif(not zoo.built("digits-cond-guided"), reason="guided zoo entries not built")
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_a_zoo_guided_student_is_sampled_at_its_w(w):
    """student:zoo:NAME@w=W gives the student W (the suffix was once dropped: always w=0)."""
    model = students.model(f"student:zoo:digits-cond-guided@w={w:g}")
    assert isinstance(model, GuidedRows) and model.takes_w and model.w == w
