"""UFOGen (Xu et al. 2023): teacher initialisation, the loss at known discriminator outputs,
one-step sampling and image-to-image, determinism and clear errors."""

import math

import pytest
import torch

from fewstep import GaussianMixture, edit
from fewstep.distill import LossContext, UFOGen
from fewstep.distill.adversarial import AdversarialPair
from fewstep.nets import EDMPrecond, MLPDenoiserNet, NoisyDiscriminator
from fewstep.train import TrainConfig, train

GM = GaussianMixture.random(2, 3, spread=1.0, std=0.3, seed=0).float()
DATA = GM.sample(256, generator=torch.Generator().manual_seed(0))


def _net(seed=0):
    torch.manual_seed(seed)
    return EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=2, emb_dim=8))


def _ctx(seed=0, batch=8):
    return LossContext(None, None, torch.Generator().manual_seed(seed), batch)


def test_levels_run_from_sigma_max_to_sigma_min():
    lv = UFOGen(num_scales=3, sigma_min=0.01, sigma_max=20.0).levels()
    assert lv.shape == (4,)
    assert (lv[0].item(), lv[-1].item()) == pytest.approx((20.0, 0.01))
    assert (lv.diff() < 0).all()


def test_both_players_start_from_the_teacher():
    teacher, template = _net(0), _net(1)
    pair = UFOGen().init_student(teacher, template)
    assert isinstance(pair, AdversarialPair)
    x, sigma = torch.randn(6, 2), torch.rand(6) * 5 + 0.01
    assert torch.equal(pair(x, sigma), teacher(x, sigma))  # the one-step generator at start
    disc = pair.discriminator
    assert isinstance(disc, NoisyDiscriminator) and disc.net is not teacher.net
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(disc.net.state_dict()[k], v), k
    assert all(p.requires_grad for p in disc.parameters())  # UFOGen's D trains its backbone
    again = UFOGen().init_student(teacher, template)  # fresh heads are seeded: same every run
    assert UFOGen().init_student(teacher, pair) is pair  # a built pair is trained as given
    for a, b in zip(pair.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_loss_at_an_undecided_discriminator_is_three_log_two_plus_reconstruction():
    """With D's logits 0 everywhere (zeroed last layers) the non-saturating terms are
    2 log 2 (D) + log 2 (G), R1 is 0, and the rest is rec_weight * E||x0' - x0||^2."""
    ufo = UFOGen(rec_weight=2.0)
    pair = ufo.init_student(_net(0), _net(0))
    for head in pair.discriminator.heads.heads:
        torch.nn.init.zeros_(head[-1].weight), torch.nn.init.zeros_(head[-1].bias)
    x0 = torch.zeros(8, 2)

    class Offset(torch.nn.Module):  # x0' = 0.1 everywhere: the error is 0.01 per coordinate
        def forward(self, x, sigma):
            return torch.full_like(x, 0.1)

    pair.generator = Offset()
    loss = ufo.loss(pair, x0, _ctx())
    assert loss.item() == pytest.approx(3 * math.log(2) + 2.0 * 0.01, rel=1e-6)


def test_loss_trains_both_players_in_one_backward_pass():
    ufo = UFOGen()
    pair = ufo.init_student(_net(0), _net(1))
    ufo.loss(pair, DATA[:16], _ctx()).backward()
    assert all(p.grad is not None for p in pair.generator.parameters())
    assert all(p.grad is not None for p in pair.discriminator.heads.parameters())


def test_one_step_and_image_to_image_are_one_generator_evaluation():
    pair = UFOGen().init_student(_net(0), _net(1)).eval()
    x_in = torch.randn(4, 2)
    g = torch.Generator().manual_seed(3)
    out = edit.stroke_guided(pair, x_in, sigma_start=2.0, solver="ddim", nfe=1, generator=g)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(out, pair.generator(x_in + 2.0 * z, torch.tensor(2.0)))


def test_training_is_deterministic_and_moves_the_generator():
    cfg = TrainConfig(steps=4, batch_size=32, lr=1e-3, progress=False)
    a = train(UFOGen(), _net(0), DATA, cfg, teacher=_net(5))
    b = train(UFOGen(), _net(1), DATA, cfg, teacher=_net(5))
    for (k, va), vb in zip(a.student.state_dict().items(), b.student.state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k
    x, s = torch.randn(5, 2), torch.full((5,), 80.0)
    with torch.no_grad():
        assert not torch.equal(a.student(x, s), _net(5)(x, s))
    assert a.cost.teacher_nfe == 0  # the teacher only initialises


def test_analytic_teacher_initialises_nothing_but_trains():
    pair = UFOGen().init_student(None, _net(1))
    for k, v in _net(1).net.state_dict().items():  # D's backbone: the template's own weights
        assert torch.equal(pair.discriminator.net.state_dict()[k], v)
    result = train(UFOGen(), _net(1), DATA, TrainConfig(steps=2, batch_size=16, progress=False),
                   teacher=GM)
    assert result.cost.steps == 2


def test_errors_are_clear():
    with pytest.raises(ValueError, match="num_scales must be >= 1"):
        UFOGen(num_scales=0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        UFOGen(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'"):
        UFOGen(gan_loss="lsgan")
    with pytest.raises(ValueError, match="rec_weight and r1_gamma must be >= 0"):
        UFOGen(rec_weight=-1.0)
    with pytest.raises(TypeError, match=r"'ufogen' trains a generator and a discriminator.*got "
                                        r"EDMPrecond"):
        UFOGen().loss(_net(0), DATA[:4], _ctx())
    with pytest.raises(TypeError, match="builds its discriminator on a denoiser backbone"):
        UFOGen().init_student(None, torch.nn.Linear(2, 2))
