"""Latent diffusion: the autoencoder, its KL term and loss, the latent space and the bench's
latent teachers (decoded before scoring)."""

import dataclasses
import math

import pytest
import torch

from fewstep import data, zoo
from fewstep.analytic import EmpiricalDenoiser
from fewstep.bench import runner
from fewstep.bench.suite import Case
from fewstep.bench.teachers import latent_teacher, trained_teacher
from fewstep.distill import AutoencoderLoss, LossContext, get_method
from fewstep.latent import LatentSpace, NullLabel, encode_data, fit_scale, reconstruction_error
from fewstep.nets import ConvAutoencoder, kl_normal
from fewstep.train import TrainConfig, train


def _ae(levels=1, **kw):
    torch.manual_seed(0)
    return ConvAutoencoder(in_channels=1, latent_channels=2, channels=8, levels=levels, **kw)


@pytest.mark.parametrize("levels,size,latent", [(1, 8, 4), (2, 16, 4), (1, 16, 8)])
def test_encode_decode_shapes(levels, size, latent):
    ae = _ae(levels)
    x = torch.randn(3, 1, size, size)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 2, latent, latent)
    assert ae.latent_shape((1, size, size)) == (2, latent, latent)
    assert ae.decode(mean).shape == ae(x).shape == x.shape


def test_kl_closed_form():
    """KL(N(m, v) || N(0, 1)) = (m^2 + v - 1 - ln v) / 2 per dimension, summed."""
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])
    expected = 0.5 * ((1 + 4 - 1 - math.log(4)) + (4 + 1 - 1 - 0))
    kl = kl_normal(mean, logvar)
    assert kl[0].item() == pytest.approx(expected) and kl[1].item() == 0.0
    q = torch.distributions.Normal(mean, (logvar / 2).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum(1))


def test_round_trip_is_deterministic_and_the_scale_cancels():
    ae, x = _ae(), data.get("digits").load("test")[:16]
    torch.testing.assert_close(ae(x), ae(x), rtol=0, atol=0)
    space = LatentSpace(ae, 3.7, (1, 8, 8))
    assert space.shape == (2, 4, 4)
    torch.testing.assert_close(space.decode(space.encode(x)), ae(x))
    torch.testing.assert_close(space.encode(x), 3.7 * ae.encode(x)[0])
    rmse = reconstruction_error(ae, x)
    torch.testing.assert_close(rmse, (ae(x) - x).flatten(1).pow(2).mean(1).sqrt())


def test_fit_scale_gives_unit_std():
    ae, x = _ae(), data.get("digits").load("train")[:200]
    s = fit_scale(ae, x)
    assert (s * ae.encode(x)[0]).double().std().item() == pytest.approx(1.0, rel=1e-6)


def test_autoencoder_loss_terms():
    """kl_weight=0 and no sampling: the mean per-image sum of squared errors; the KL term adds
    kl_weight * KL of the posterior."""
    ae, x = _ae(), data.get("digits").load("train")[:32]
    ctx = LossContext(None, None, torch.Generator().manual_seed(0), 32)
    sse = (ae(x) - x).flatten(1).pow(2).sum(1).mean()
    torch.testing.assert_close(AutoencoderLoss(0.0, sample=False).loss(ae, x, ctx), sse)
    mean, logvar = ae.encode(x)
    with_kl = AutoencoderLoss(0.5, sample=False).loss(ae, {"x": x, "cond": torch.zeros(32)}, ctx)
    torch.testing.assert_close(with_kl, sse + 0.5 * kl_normal(mean, logvar).mean())
    assert get_method("autoencoder") is AutoencoderLoss


def test_autoencoder_trains_through_the_loop():
    x = data.get("digits").load("train")
    before = reconstruction_error(_ae(), x).mean()
    res = train(AutoencoderLoss(), _ae(), x, TrainConfig(steps=30, batch_size=64, lr=3e-3,
                                                         progress=False))
    assert reconstruction_error(res.student, x).mean() < 0.8 * before


def test_errors():
    ae = _ae()
    with pytest.raises(ValueError, match=r"image shape \(1, 7, 7\).*divisible by 2"):
        ae.encode(torch.randn(2, 1, 7, 7))
    with pytest.raises(ValueError, match=r"latents must be \(batch, 2, h, w\); got \(2, 3, 4, 4\)"):
        ae.decode(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        kl_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="kl_weight must be >= 0; got -1"):
        AutoencoderLoss(kl_weight=-1)
    with pytest.raises(ValueError, match="scale must be > 0; got 0"):
        LatentSpace(ae, 0.0, (1, 8, 8))
    with pytest.raises(ValueError, match="levels, latent_channels and channels must be >= 1"):
        ConvAutoencoder(levels=0)


def test_encode_data_keeps_labels_row_aligned():
    space = LatentSpace(_ae(), 2.0, (1, 8, 8))
    batch = encode_data(space, "digits", "test", n=20, seed=3)
    ds = data.get("digits").load_labelled("test", n=20, seed=3)
    torch.testing.assert_close(batch["x"], space.encode(ds["x"]))
    assert torch.equal(batch["cond"], ds["cond"])


class _Halve:
    """A 'latent space' z = 2 x with decoder z / 2: a latent teacher's scores must equal the
    pixel teacher's on the decoded samples."""

    shape = (1, 8, 8)

    @staticmethod
    def decode(z):
        return z / 2


def _case():
    return Case(suite="t", teacher="t", method="heun", nfe=4, seed=0, n_samples=64,
                schedule="karras", dtype="float32", reference_rtol=1e-3)


def test_latent_teacher_decodes_before_scoring():
    train_x = data.get("digits").load("train")[:300]
    pixel = trained_teacher("px", EmpiricalDenoiser(train_x), "digits")
    latent = latent_teacher("lt", EmpiricalDenoiser(2 * train_x), _Halve(), "digits")
    assert latent.sample_shape == (1, 8, 8) and latent.kind == "image"
    x = data.get("digits").load("test")[:64].double() + 0.1
    held = runner.held_out(pixel, 0)
    want = runner._score(_case(), pixel, x, x, held)
    got = runner._score(_case(), latent, 2 * x, 2 * x, held)
    assert want.keys() == got.keys() and {"sw", "mmd", "fd", "kid"} <= want.keys()
    for k in ("sw", "mmd", "fd", "kid"):
        assert got[k] == pytest.approx(want[k], rel=1e-9), k
    undecoded = runner._score(_case(), dataclasses.replace(latent, decode=None), 2 * x, 2 * x,
                              held)
    assert undecoded["fd"] > 2 * want["fd"]  # without decoding the scores would differ


def test_identity_autoencoder_gives_the_pixel_result():
    class Identity:
        shape = (1, 8, 8)

        @staticmethod
        def decode(z):
            return z

    train_x = data.get("digits").load("train")[:300]
    D = EmpiricalDenoiser(train_x)
    pixel = trained_teacher("px", D, "digits")
    latent = latent_teacher("lt", D, Identity(), "digits")
    x = runner.start_noise(pixel, 0, 32).float()
    from fewstep import solvers

    out = solvers.sample(D, x, "heun", nfe=5)
    held = runner.held_out(pixel, 0)
    assert runner._score(_case(), latent, out, out, held) == \
        runner._score(_case(), pixel, out, out, held)


def test_null_label_samples_unconditionally():
    seen = []

    def D(x, sigma, cond):
        seen.append(cond)
        return x

    NullLabel(D)(torch.zeros(3, 2), 1.0)
    assert seen[-1].tolist() == [-1, -1, -1]
    NullLabel(D)(torch.zeros(3, 2), 1.0, cond=torch.tensor([1, 2, 3]))
    assert seen[-1].tolist() == [1, 2, 3]


TINY = dict(steps=3, batch_size=32, warmup_steps=0)


def test_zoo_builds_a_latent_teacher_with_its_scale(tmp_path):
    from fewstep import latent

    vae = dataclasses.replace(zoo.recipe("digits-vae"), name="tiny-vae", **TINY)
    zoo.build(vae, tmp_path)
    r = dataclasses.replace(zoo.recipe("digits-latent-edm"), name="tiny-latent",
                            autoencoder="tiny-vae", **TINY)
    e = zoo.build(r, tmp_path, teacher_root=tmp_path)
    assert e.recipe.role == "teacher" and zoo.recipe("digits-vae").role == "autoencoder"
    assert e.latent["autoencoder"] == "tiny-vae"
    space = latent.space("tiny-latent", tmp_path)
    ae = zoo.load("tiny-vae", tmp_path)
    assert e.latent["scale"] == pytest.approx(fit_scale(ae, data.get("digits").load("train")))
    assert space.shape == (2, 4, 4) and space.scale == e.latent["scale"]
    D = zoo.load("tiny-latent", tmp_path)
    z = torch.randn(4, *space.shape)
    assert D(z, torch.ones(4), cond=torch.tensor([0, 1, -1, 9])).shape == z.shape
    assert space.decode(z).shape == (4, 1, 8, 8)


def test_committed_latent_teacher_is_a_bench_teacher_that_decodes():
    from fewstep.bench import teachers

    t = teachers.get("zoo:digits-latent-edm")
    assert t.sample_shape == (2, 4, 4) and t.kind == "image" and t.decode is not None
    assert t.extra["extractor"] == "digits_cnn"
    z = runner.start_noise(t, 0, 4).float()
    out = t.denoiser(z, torch.full((4,), 80.0))  # the null label is supplied
    assert out.shape == z.shape and t.to_data(out).shape == (4, 1, 8, 8)
    e = zoo.entry("digits-latent-edm")
    assert e.latent["autoencoder"] == "digits-vae" and e.cost.steps == 800
