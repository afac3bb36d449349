"""Early-stopped diffusion (ES-DDPM): limits in sigma_s, priors, errors."""

import pytest
import torch

from fewstep import data, solvers
from fewstep.analytic import GaussianMixture
from fewstep.early_stop import DecodedPrior, GaussianPrior, sample_early_stopped


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture.random(2, 4, spread=1.0, std=0.25, seed=0)


def _noise(n=256, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("solver,nfe", [("heun", 9), ("dpmpp_2m", 6), ("ipndm", 5)])
def test_from_sigma_max_with_a_zero_prior_is_the_ordinary_sampler(gm, solver, nfe):
    eps = _noise()
    f64 = {"dtype": torch.float64}
    zero = GaussianPrior(torch.zeros(2, **f64), torch.zeros(2, 2, **f64))
    out = sample_early_stopped(gm, zero.sample(256), eps, 80.0, solver, nfe)
    ordinary = solvers.sample(gm, 80.0 * eps, solver, nfe=nfe,
                              schedule_kwargs={"sigma_min": 0.002, "sigma_max": 80.0})
    torch.testing.assert_close(out, ordinary, rtol=0, atol=0)


def test_from_sigma_max_the_gaussian_prior_barely_matters(gm):
    """At sigma_max = 80 the prior's offset (data scale ~1) is 1/80 of the noise: the result is
    close to the ordinary sampler's on the same noise."""
    eps = _noise()
    prior = GaussianPrior.fit(gm.sample(4096, generator=torch.Generator().manual_seed(1)))
    x0 = prior.sample(256, torch.Generator().manual_seed(2))
    out = sample_early_stopped(gm, x0, eps, 80.0, "heun", 17)
    ordinary = solvers.sample(gm, 80.0 * eps, "heun", nfe=17,
                              schedule_kwargs={"sigma_min": 0.002, "sigma_max": 80.0})
    assert (out - ordinary).abs().median() < 0.05


def test_sigma_s_to_zero_returns_the_prior_sample(gm):
    x0 = GaussianPrior.fit(gm.sample(512)).sample(64, torch.Generator().manual_seed(0))
    eps = _noise(64)
    assert sample_early_stopped(gm, x0, eps, 0.0) is x0
    gaps = [(sample_early_stopped(gm, x0, eps, s, "heun", 3, sigma_min=1e-5) - x0).abs().max()
            for s in (1e-2, 1e-3, 1e-4)]
    assert gaps[2] < 1e-3 and gaps[0] > gaps[1] > gaps[2]  # -> 0 with sigma_s


def test_early_stopping_from_a_gaussian_prior_improves_it():
    """On digits' empirical denoiser, ES from sigma_s = 2 moves the Gaussian prior's samples
    towards the data: the mean distance to the nearest training image shrinks."""
    from fewstep.analytic import EmpiricalDenoiser

    train = data.get("digits").load("train")[:400].double()
    D = EmpiricalDenoiser(train)
    prior = GaussianPrior.fit(train)
    x0 = prior.sample(64, torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample_early_stopped(D, x0, eps, 2.0, "heun", 9)

    def nearest(x):
        return torch.cdist(x.flatten(1), train.flatten(1)).min(1).values.mean()

    assert nearest(out) < 0.5 * nearest(x0)


def test_gaussian_prior_fit_matches_moments():
    x = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x @ torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [0, 0, 0.1]], dtype=torch.float64) + 3
    prior = GaussianPrior.fit(x)
    y = prior.sample(20_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y.mean(0), x.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), torch.cov(x.T), atol=0.1, rtol=0.05)
    img = GaussianPrior.fit(torch.randn(50, 1, 2, 2))
    assert img.sample(5).shape == (5, 1, 2, 2) and img.evaluations == 0


def test_decoded_prior_decodes_latent_samples():
    f64 = {"dtype": torch.float64}
    latent = GaussianPrior(torch.zeros(2, 1, 1, **f64), torch.eye(2, **f64))
    prior = DecodedPrior(latent, lambda z: 3 * z)
    a = prior.sample(4, torch.Generator().manual_seed(0))
    b = latent.sample(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, 3 * b.float().double())
    assert prior.evaluations == 1


def test_errors(gm):
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"sigma_s must be 0 .* above sigma_min=0.002; got 0.001"):
        sample_early_stopped(gm, x0, x0, 0.001)
    with pytest.raises(ValueError, match="got -1"):
        sample_early_stopped(gm, x0, x0, -1.0)
    with pytest.raises(ValueError, match="got nan"):
        sample_early_stopped(gm, x0, x0, float("nan"))
    with pytest.raises(ValueError, match="sigma_s=81 is above the denoiser's sigma_max=80"):
        sample_early_stopped(gm, x0, x0, 81.0)
    with pytest.raises(ValueError, match="sigma_s=2 is above the denoiser's sigma_max=1"):
        sample_early_stopped(gm, x0, x0, 2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"x_prior \(4, 2\) and noise \(4, 3\) differ"):
        sample_early_stopped(gm, x0, torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match="at least 2 samples; got 1"):
        GaussianPrior.fit(torch.zeros(1, 2))
