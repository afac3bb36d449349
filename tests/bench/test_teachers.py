import pytest
import torch

from fewstep.bench import teachers


@pytest.mark.parametrize("name", ["gmm2", "gmm16", "moons", "digits"])
def test_builtin_teachers_build_and_denoise(name):
    t = teachers.get(name)
    x = t.sigma_max * torch.randn(4, *t.sample_shape)
    out = t.denoiser(x, torch.full((4,), t.sigma_max))
    assert out.shape == x.shape and torch.isfinite(out).all()
    ref = t.reference_samples(50, 0)
    assert ref.shape == (50, *t.sample_shape)
    torch.testing.assert_close(ref, t.reference_samples(50, 0))


def test_finite_reference_set_is_capped_not_an_error():
    t = teachers.get("digits")
    assert len(t.reference_samples(10_000, 0)) < 10_000


def test_every_registered_teacher_is_listed():
    names = teachers.available()
    assert {"gmm2", "gmm16", "gmm64", "moons", "checkerboard", "digits", "patches"} <= set(names)


def test_unknown_teacher_is_named():
    with pytest.raises(ValueError, match="unknown teacher 'imagenet'"):
        teachers.get("imagenet")


def test_user_teacher_registration():
    from fewstep import GaussianMixture

    gm = GaussianMixture(torch.zeros(1, 3), 1.0)
    teachers.register("mine", lambda: teachers.Teacher(
        "mine", gm, (3,), 0.01, 10.0, lambda n, s: gm.sample(n)), overwrite=True)
    assert teachers.get("mine").denoiser is gm
    with pytest.raises(ValueError, match="already registered"):
        teachers.register("mine", lambda: None)
