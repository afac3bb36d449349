"""The EDM teacher loss (Karras et al. 2022) against exact denoisers."""

import torch

import fewstep
import fewstep.data
from fewstep.distill import EDMLoss, LossContext, edm_weight, get_method
from fewstep.metrics import sliced_wasserstein
from fewstep.nets import EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train


def _loss(denoiser, data, method=None, seed=12345):
    ctx = LossContext(None, None, torch.Generator().manual_seed(seed), len(data))
    return (method or EDMLoss()).loss(denoiser, data, ctx).item()


def test_exact_denoiser_attains_the_closed_form_minimum(single_gaussian):
    """E_sigma[lambda(sigma) mean_d v_d sigma^2 / (v_d + sigma^2)]: the weighted MMSE."""
    data = single_gaussian.sample(40_000, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    sigma = (-1.2 + 1.2 * torch.randn(400_000, generator=g, dtype=torch.float64)).exp()
    v = single_gaussian.variances[0]
    mmse = (v * sigma[:, None] ** 2 / (v + sigma[:, None] ** 2)).mean(1)
    expected = (edm_weight(sigma, 0.5) * mmse).mean().item()
    assert abs(_loss(single_gaussian, data) - expected) < 0.03 * expected


def test_exact_denoiser_beats_perturbed_ones(mixture):
    data = mixture.sample(8192, generator=torch.Generator().manual_seed(0))
    exact = _loss(mixture, data)
    for delta in (0.02, 0.1):
        assert _loss(lambda x, s, d=delta: mixture(x, s) + d, data) > exact
    assert _loss(lambda x, s: mixture(x, 1.1 * s), data) > exact


def test_lognormal_sigma_and_registry_defaults():
    method = get_method("edm")()
    assert (method.P_mean, method.P_std, method.sigma_data) == (-1.2, 1.2, 0.5)
    seen = []

    def spy(x, sigma):
        seen.append(sigma)
        return x

    _loss(spy, torch.zeros(20_000, 1), method)
    log_sigma = seen[0].log()
    assert abs(log_sigma.mean() + 1.2) < 0.03 and abs(log_sigma.std() - 1.2) < 0.03


def test_short_teacher_training_on_builtin_data_improves_samples():
    torch.manual_seed(0)
    ref = fewstep.data.load("moons", "test", n=2000)
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    template = EDMPrecond(MLPDenoiserNet(2, hidden=64, depth=2, emb_dim=32))

    def sw(model):
        with torch.no_grad():
            x = fewstep.sample(model, z, "ipndm", nfe=20)
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    before = sw(template)
    cfg = TrainConfig(steps=400, batch_size=256, lr=3e-3, ema_decay=0.95, progress=False,
                      data_n=4096)
    result = train(get_method("edm")(), template, "moons", cfg)
    assert sw(result.ema) < 0.5 * before
    assert result.cost.teacher_nfe == 0 and result.cost.steps == 400
