"""Gotta Go Fast: the adaptive reverse-SDE sampler reaches the closed-form distribution of a
Gaussian teacher; tighter tolerance costs more NFE and lowers the error; per-sample step
sizes make results independent of the batch."""

import pytest
import torch

from fewstep import CountingDenoiser, GaussianMixture, solvers

SIGMA_MAX, SIGMA_MIN = 20.0, 0.05


@pytest.fixture(scope="module")
def gaussian64():
    """A 64-d Gaussian with diagonal covariance (the method's error norm averages over
    features, as over an image's pixels)."""
    gen = torch.Generator().manual_seed(5)
    return GaussianMixture(torch.randn(1, 64, dtype=torch.float64, generator=gen),
                           0.1 + torch.rand(1, 64, dtype=torch.float64, generator=gen))


def _errors(g, out):
    """(max |mean error| in standard errors, |mean variance ratio - 1|) against the exact
    marginal at sigma_min, N(mu, var + sigma_min^2)."""
    var = g.variances[0] + SIGMA_MIN**2
    z = (out.mean(0) - g.means[0]) / (var / out.shape[0]).sqrt()
    return float(z.abs().max()), float((out.var(0) / var).mean() - 1)


def test_matches_the_gaussian_and_tightens_with_tolerance(gaussian64):
    x = gaussian64.sample(1000, sigma=SIGMA_MAX, generator=torch.Generator().manual_seed(0))
    nfes, var_errs = [], []
    for tol in (0.2, 0.05):
        info, counter = {}, CountingDenoiser(gaussian64)
        out = solvers.get("ggf")(counter, x, [SIGMA_MAX, SIGMA_MIN], rtol=tol, atol=tol,
                                 info=info, generator=solvers.generators(range(1000)))
        assert info["nfe"] == counter.rows / 1000 and info["rounds"] == counter.nfe
        assert info["nfe_max"] == info["rounds"]  # every running sample evaluates each round
        mean_z, var_err = _errors(gaussian64, out)
        assert mean_z < 4.5, mean_z
        nfes.append(info["nfe"])
        var_errs.append(abs(var_err))
    assert nfes[1] > nfes[0]
    assert var_errs[1] < var_errs[0] and var_errs[1] < 0.02, var_errs


def test_final_denoise_and_reported_counts(gaussian64):
    """With sigmas ending in 0 the last evaluation is x0 = D(x, sigma_min): one more NFE."""
    x = gaussian64.sample(8, sigma=SIGMA_MAX, generator=torch.Generator().manual_seed(1))
    a, b = {}, {}
    gens = solvers.generators(range(8))
    out = solvers.get("ggf")(gaussian64, x, [SIGMA_MAX, SIGMA_MIN], info=a, generator=gens)
    den = solvers.get("ggf")(gaussian64, x, [SIGMA_MAX, SIGMA_MIN, 0.0], info=b,
                             generator=solvers.generators(range(8)))
    assert b["nfe"] == a["nfe"] + 1
    torch.testing.assert_close(den, gaussian64(out, torch.full((8,), SIGMA_MIN,
                                                               dtype=torch.float64)))


def test_same_seeds_same_samples_whatever_the_batch(mixture):
    x = SIGMA_MAX * torch.randn(6, 4, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(2))
    run = solvers.get("ggf")
    whole = run(mixture, x, [SIGMA_MAX, 0.01, 0.0], generator=solvers.generators(range(6)))
    halves = [run(mixture, x[i:i + 3], [SIGMA_MAX, 0.01, 0.0],
                  generator=solvers.generators(range(i, i + 3))) for i in (0, 3)]
    torch.testing.assert_close(whole, torch.cat(halves))
    other = run(mixture, x, [SIGMA_MAX, 0.01, 0.0], generator=solvers.generators(range(6, 12)))
    assert (other - whole).abs().max() > 1e-3


def test_max_norm_is_stricter_than_scaled_l2(mixture):
    """q = inf (max norm) >= scaled L2 elementwise, so it never takes fewer evaluations."""
    x = SIGMA_MAX * torch.randn(16, 4, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(3))
    nfe = {}
    for q in (2.0, float("inf")):
        info = {}
        solvers.get("ggf")(mixture, x[:1], [SIGMA_MAX, 0.01], q=q, info=info,
                           generator=torch.Generator().manual_seed(0))
        nfe[q] = info["nfe"]
    assert nfe[float("inf")] >= nfe[2.0]


@pytest.mark.parametrize("knobs,match", [({"rtol": 0.0}, "rtol must be > 0"),
                                         ({"r": -1.0}, "r must be > 0"),
                                         ({"q": 0.5}, "q must be >= 1")])
def test_bad_knobs_are_named(knobs, match, mixture):
    with pytest.raises(ValueError, match=match):
        solvers.get("ggf")(mixture, torch.randn(2, 4, dtype=torch.float64), [5.0, 0.1],
                           **knobs)
