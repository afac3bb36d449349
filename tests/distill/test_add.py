"""ADD (Sauer et al. 2023): teacher initialisation, the frozen feature network, the
score-distillation weighting at known draws, sampling grids, determinism and clear errors."""

import pytest
import torch

from fewstep import GaussianMixture, solvers
from fewstep.distill import ADD, LossContext
from fewstep.distill.add import _ddpm_sigmas
from fewstep.nets import EDMPrecond, FrozenFeatureDiscriminator, MLPDenoiserNet, UNet
from fewstep.train import TrainConfig, train

GM = GaussianMixture.random(2, 3, spread=1.0, std=0.3, seed=0).float()
DATA = GM.sample(256, generator=torch.Generator().manual_seed(0))


def _net(seed=0):
    torch.manual_seed(seed)
    return EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=2, emb_dim=8))


def test_student_starts_as_the_teacher_and_reads_its_frozen_backbone():
    teacher = _net(0)
    pair = ADD().init_student(teacher, _net(1))
    x, sigma = torch.randn(6, 2), torch.rand(6) * 5 + 0.01
    assert torch.equal(pair(x, sigma), teacher(x, sigma))
    disc = pair.discriminator
    assert isinstance(disc, FrozenFeatureDiscriminator)
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(disc.net.state_dict()[k], v), k
    assert not any(p.requires_grad for p in disc.net.parameters())
    assert all(p.requires_grad for p in disc.heads.parameters())


def test_training_moves_the_heads_never_the_feature_network():
    teacher = _net(0)
    cfg = TrainConfig(steps=3, batch_size=32, lr=1e-2, progress=False)
    result = train(ADD(), _net(1), DATA, cfg, teacher=teacher)
    disc = result.student.discriminator
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(disc.net.state_dict()[k], v), k
    start = ADD().init_student(teacher, _net(1)).discriminator.heads
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), disc.heads.parameters(),
                                                     strict=True))
    assert result.cost.teacher_nfe == 3  # one teacher evaluation of the batch per step


def test_random_features_are_fixed_and_unlike_the_teacher():
    a = ADD(features="random").init_student(None, _net(1))
    b = ADD(features="random").init_student(None, _net(2))
    for (k, va), vb in zip(a.discriminator.net.state_dict().items(),
                           b.discriminator.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k  # seeded by head_seed, not by the template
    assert not torch.equal(a.discriminator.net.inp.weight, _net(1).net.inp.weight)


def test_loss_at_known_draws_matches_the_paper_weighting():
    """Zeroed heads: hinge gives 2 (D) + 0 (G). With a constant-0 teacher and x_hat = 0.1,
    the distillation term is 2.5 * mean_i alpha(t_i) * 0.01, alpha = 1/sqrt(1 + t^2), t_i
    drawn from DDPM's 1000 levels by the loop's generator (replayed here)."""
    add = ADD()
    pair = add.init_student(_net(0), _net(0))
    for head in pair.discriminator.heads.heads:
        torch.nn.init.zeros_(head[-1].weight), torch.nn.init.zeros_(head[-1].bias)

    class Offset(torch.nn.Module):
        def forward(self, x, sigma):
            return torch.full_like(x, 0.1)

    pair.generator = Offset()
    x0 = torch.zeros(8, 2)
    ctx = LossContext(lambda x, s: torch.zeros_like(x), None, torch.Generator().manual_seed(0), 8)
    loss = add.loss(pair, x0, ctx)
    g = torch.Generator().manual_seed(0)
    torch.randint(4, (8,), generator=g), torch.randn(8, 2, generator=g)  # level, noise
    t = _ddpm_sigmas().clamp(0.002, 80.0)[torch.randint(1000, (8,), generator=g)]
    expected = 2.0 + 2.5 * ((1 + t**2).rsqrt() * 0.01).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ctx.teacher_nfe == 1


def test_sampling_grids_and_one_step_sampling():
    add = ADD(num_student_steps=4, student_sigma_min=0.5, sigma_max=80.0)
    lv = add.student_levels()
    assert (lv[0].item(), lv[-1].item()) == pytest.approx((80.0, 0.5)) and len(lv) == 4
    torch.testing.assert_close(add.sampling_sigmas(1), torch.tensor([80.0, 0.0],
                                                                    dtype=torch.float64))
    torch.testing.assert_close(add.sampling_sigmas(2),
                               torch.stack([lv[0], lv[3], lv.new_zeros(())]))
    torch.testing.assert_close(add.sampling_sigmas(4)[:-1], lv)
    with pytest.raises(ValueError, match=r"samples in 1..4 steps; got 5"):
        add.sampling_sigmas(5)
    pair = add.init_student(_net(0), _net(1)).eval()
    z = 80 * torch.randn(3, 2)
    with torch.no_grad():
        one = solvers.get("consistency")(pair, z, add.sampling_sigmas(1), sigma_min=0.0)
        torch.testing.assert_close(one, pair.generator(z, torch.tensor(80.0)))


def test_image_backbone():
    torch.manual_seed(0)
    teacher = EDMPrecond(UNet(1, channels=8, channel_mult=(1, 2), emb_dim=8))
    data = torch.randn(32, 1, 8, 8).clamp(-1, 1)
    result = train(ADD(), EDMPrecond(UNet(1, channels=8, channel_mult=(1, 2), emb_dim=8)), data,
                   TrainConfig(steps=2, batch_size=8, progress=False), teacher=teacher)
    assert result.student(torch.randn(2, 1, 8, 8), 80.0).shape == (2, 1, 8, 8)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown features 'dino'; available: teacher, random"):
        ADD(features="dino")
    with pytest.raises(ValueError, match="num_student_steps must be >= 1"):
        ADD(num_student_steps=0)
    with pytest.raises(ValueError, match="sigma_min <= student_sigma_min <= sigma_max"):
        ADD(student_sigma_min=100.0)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        ADD(gan_loss="wgan")
    with pytest.raises(ValueError, match=r"features='teacher' reads the teacher's backbone.*"
                                         r"GaussianMixture.*use features='random'"):
        ADD().init_student(GM, _net(1))
    with pytest.raises(TypeError, match="'add' trains a generator and a discriminator"):
        ADD().loss(_net(0), DATA[:4], LossContext(GM, None, torch.Generator(), 4))
