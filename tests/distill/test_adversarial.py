"""The shared adversarial pieces: GAN losses, R1, the frozen discriminator, the pair."""

import math

import pytest
import torch
from torch import nn

from fewstep.distill.adversarial import (
    AdversarialPair,
    check_pair,
    discriminator_loss,
    frozen,
    generator_loss,
    r1_penalty,
)
from fewstep.nets import build_model, model_spec
from fewstep.nets.gan import ConvDiscriminator, MLPDiscriminator


def test_gan_losses_on_hand_computable_logits():
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    # D(x) = 3 on reals, -1 on fakes: log(1 + e^-3) + log(1 + e^-1); G pays log(1 + e^1)
    d_real, d_fake = torch.full((3,), 3.0), torch.full((3,), -1.0)
    assert discriminator_loss(d_real, d_fake).item() == pytest.approx(
        math.log1p(math.exp(-3)) + math.log1p(math.exp(-1)))
    assert generator_loss(d_fake).item() == pytest.approx(math.log1p(math.e))


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    """D(x) = w.x + b has grad_x D = w everywhere, so E||grad D||^2 = |w|^2, and the penalty's
    gradient with respect to w is 2w."""
    D = nn.Linear(3, 1)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    x = torch.randn(7, 3).requires_grad_()
    r1 = r1_penalty(D(x).squeeze(1), x)
    assert r1.item() == pytest.approx(5.25)
    r1.backward()
    torch.testing.assert_close(D.weight.grad, 2 * D.weight.detach())


def test_r1_needs_real_samples_that_require_grad():
    with pytest.raises(ValueError, match="requires_grad_"):
        r1_penalty(torch.zeros(2), torch.zeros(2, 3))


def test_frozen_discriminator_passes_gradient_to_inputs_only():
    torch.manual_seed(0)
    D = MLPDiscriminator(2, hidden=8, depth=1, emb_dim=8)
    x = torch.randn(5, 2, requires_grad=True)
    c = torch.zeros(5)
    frozen(D)(x, c).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())
    torch.testing.assert_close(frozen(D)(x, c), D(x, c))  # same function


def test_pair_forwards_to_the_generator_and_rebuilds_from_its_spec():
    torch.manual_seed(0)
    D = ConvDiscriminator(1, 1, width=4, levels=1, emb_dim=8)
    assert model_spec(AdversarialPair(nn.Identity(), D)) is None  # usable, not rebuildable
    pair = AdversarialPair(MLPDiscriminator(2, 0, hidden=8, depth=1, emb_dim=8), D)
    x = torch.randn(3, 2)
    torch.testing.assert_close(pair(x, torch.zeros(3)), pair.generator(x, torch.zeros(3)))
    rebuilt = build_model(model_spec(pair))
    assert isinstance(rebuilt, AdversarialPair)
    assert rebuilt.state_dict().keys() == pair.state_dict().keys()


def test_check_pair_names_the_method():
    with pytest.raises(TypeError, match="method 'ddgan' trains a generator and a discriminator"):
        check_pair(nn.Linear(2, 2), "ddgan")


def test_discriminators_check_their_conditioning_sample():
    D = MLPDiscriminator(2, cond_dim=2, hidden=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match="takes a conditioning sample"):
        D(torch.zeros(1, 2), torch.zeros(1))
    M = ConvDiscriminator(1, 0, width=4, levels=1, emb_dim=8)
    with pytest.raises(ValueError, match="marginal"):
        M(torch.zeros(1, 1, 4, 4), torch.zeros(1), torch.zeros(1, 1, 4, 4))
    assert M(torch.zeros(2, 1, 5, 5), torch.zeros(2)).shape == (2,)  # odd sizes pool fine
