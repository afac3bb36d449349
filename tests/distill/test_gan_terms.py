"""UFOGen's and ADD's adversarial terms on top of fewstep.distill.adversarial: analytic loss
values, the one-backward split of gradients (with R1) and the backbone discriminators."""

import math

import pytest
import torch
from torch import nn

from fewstep.distill.adversarial import r1_penalty
from fewstep.distill.gan_terms import GAN_LOSSES, adversarial_terms, gan_loss
from fewstep.nets import (
    FeatureHeads,
    FrozenFeatureDiscriminator,
    MLPDenoiserNet,
    NoisyDiscriminator,
    UNet,
)


def test_gan_losses_at_known_logits():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    sp = torch.nn.functional.softplus
    d, g = gan_loss("nonsaturating", real, fake, fake)
    assert d.item() == pytest.approx((sp(-real).mean() + sp(fake).mean()).item())
    assert g.item() == pytest.approx(sp(-fake).mean().item())
    zero = torch.zeros(3)
    d, g = gan_loss("nonsaturating", zero, zero, zero)  # D undecided: log 2 each
    assert (d.item(), g.item()) == pytest.approx((2 * math.log(2), math.log(2)))
    d, g = gan_loss("hinge", real, fake, fake)
    # max(0, 1 - 2) = 0, max(0, 1 + 1) = 2; max(0, 1.5) = 1.5, max(0, 4) = 4
    assert (d.item(), g.item()) == pytest.approx(((0 + 2) / 2 + (1.5 + 4) / 2, -1.75))
    with pytest.raises(ValueError, match=r"unknown GAN loss 'wgan'; available: hinge, nonsa"):
        gan_loss("wgan", real, fake, fake)
    assert set(GAN_LOSSES) == {"nonsaturating", "hinge"}


def test_one_backward_gives_each_player_its_own_gradient():
    """grad_G(d_term + g_term) == grad_G(g_term with D fixed) and grad_D(...) == grad_D(d_term
    with the fakes fixed): the sum trains both players as two optimisers would."""
    torch.manual_seed(0)
    G = nn.Linear(2, 2)
    D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    z, real = torch.randn(16, 2), torch.randn(16, 2)

    def grads(module):
        return [p.grad.clone() for p in module.parameters()]

    d_term, g_term = adversarial_terms(D, real, G(z), "nonsaturating", 0.5)
    (d_term + g_term).backward()
    joint_g, joint_d = grads(G), grads(D)
    G.zero_grad(), D.zero_grad()
    fake = G(z)
    torch.nn.functional.softplus(-D(fake)).mean().backward()  # G's loss alone
    only_g = grads(G)
    D.zero_grad()
    x = real.clone().requires_grad_(True)
    logits = D(x)
    d_alone = (torch.nn.functional.softplus(-logits).mean()
               + torch.nn.functional.softplus(D(fake.detach())).mean()
               + 0.5 / 2 * r1_penalty(logits, x))
    D.zero_grad()
    d_alone.backward()
    for a, b in zip(joint_g, only_g, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(joint_d, grads(D), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("net,shape", [(MLPDenoiserNet(2, hidden=16, depth=2, emb_dim=8), (5, 2)),
                                       (UNet(1, channels=8, channel_mult=(1, 2), emb_dim=8),
                                        (5, 1, 8, 8))])
def test_backbone_features_and_discriminators(net, shape):
    x = torch.randn(*shape)
    c_noise = torch.full((5,), 0.1)
    feats = net.features(x, c_noise)
    assert [f.shape[1] for f in feats] == net.feature_channels
    assert all(f.shape[0] == 5 for f in feats)
    # forward is unchanged by the split into features(): the same function of the weights
    assert net(x, c_noise).shape == x.shape
    noisy = NoisyDiscriminator(net, sigma_data=0.5)
    assert noisy(x, torch.full((5,), 2.0)).shape == (5,)
    frozen = FrozenFeatureDiscriminator(net, feature_sigma=0.5)
    assert all(not p.requires_grad for p in frozen.net.parameters())
    assert frozen.train().net.training is False
    assert frozen(x).shape == (5,)


def test_discriminator_errors_are_clear():
    with pytest.raises(TypeError, match="has no features"):
        NoisyDiscriminator(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="feature_sigma must be a positive number"):
        FrozenFeatureDiscriminator(MLPDenoiserNet(2, hidden=8, depth=1, emb_dim=8),
                                   feature_sigma=0.0)
    with pytest.raises(ValueError, match="at least one"):
        FeatureHeads([])
    with pytest.raises(ValueError, match="2 heads, 1 feature tensors"):
        FeatureHeads([4, 4])([torch.zeros(1, 4)])

