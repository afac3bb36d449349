"""Consistency sampling with the exact consistency function of a single Gaussian."""

import pytest
import torch

from fewstep import CountingDenoiser, solvers
from fewstep.solvers.consistency import renoise_scale, sample_consistency

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def exact_f(gaussian):
    """f(x, sigma) = flow(x, sigma -> sigma_min): the consistency function of the PF-ODE."""
    def f(x, sigma):
        return gaussian.flow(x, float(sigma[0]), SIGMA_MIN)
    return f


def test_one_step_reproduces_the_exact_endpoint(single_gaussian):
    x = SIGMA_MAX * torch.randn(64, 4, dtype=torch.float64)
    out = sample_consistency(exact_f(single_gaussian), x, torch.tensor([SIGMA_MAX, 0.0]))
    torch.testing.assert_close(out, single_gaussian.flow(x, SIGMA_MAX, SIGMA_MIN))


def test_multistep_keeps_the_marginal(single_gaussian):
    """Every re-noised state has the marginal N(mu, var + sigma_i^2); the output N(mu, var +
    sigma_min^2). 20000 samples: standard error of a variance ~1% (tolerance 5%)."""
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x = SIGMA_MAX * torch.randn(n, 4, dtype=torch.float64, generator=g)
    sigmas = torch.tensor([SIGMA_MAX, 2.0, 0.5, 0.0], dtype=torch.float64)
    seen = {}
    out = sample_consistency(exact_f(single_gaussian), x, sigmas, generator=g,
                             callback=lambda d: seen.setdefault(d["sigma_next"], d["x"]))
    mu, var = single_gaussian.means[0], single_gaussian.variances[0]
    for s, xs in seen.items():
        torch.testing.assert_close(xs.mean(0), mu, atol=0.05 * (1 + s), rtol=0)
        torch.testing.assert_close(xs.var(0), var + s**2, rtol=0.05, atol=0)
    assert set(seen) == {2.0, 0.5, 0.0}
    torch.testing.assert_close(out, seen[0.0])


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_plan_spends_exactly_k_evaluations(k, single_gaussian):
    p = solvers.plan("consistency", k, sigma_min=0.5)
    counter = CountingDenoiser(exact_f(single_gaussian))
    x = SIGMA_MAX * torch.randn(3, 4, dtype=torch.float64)
    out = solvers.get("consistency")(counter, x, p.sigmas, generator=solvers.generators(range(3)))
    assert counter.nfe == k == p.nfe
    assert counter.sigmas == pytest.approx(p.sigmas[:-1].tolist())
    assert torch.isfinite(out).all()


def test_batch_size_independence(single_gaussian):
    p = solvers.plan("consistency", 3, sigma_min=0.5)
    x = SIGMA_MAX * torch.randn(6, 4, dtype=torch.float64)
    f = exact_f(single_gaussian)
    whole = sample_consistency(f, x, p.sigmas, generator=solvers.generators(range(6)))
    halves = [sample_consistency(f, x[i:i + 3], p.sigmas,
                                 generator=solvers.generators(range(i, i + 3))) for i in (0, 3)]
    torch.testing.assert_close(whole, torch.cat(halves))


def test_ends_at_a_noisy_sample_when_the_last_sigma_is_positive(single_gaussian):
    """A schedule without its trailing 0 returns the re-noised state at sigmas[-1]."""
    x = SIGMA_MAX * torch.randn(5, 4, dtype=torch.float64)
    f = exact_f(single_gaussian)
    out = sample_consistency(f, x, torch.tensor([SIGMA_MAX, 1.0]),
                             generator=torch.Generator().manual_seed(7))
    z = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x0 = f(x, torch.full((5,), SIGMA_MAX))
    torch.testing.assert_close(out, x0 + renoise_scale(1.0, SIGMA_MIN) * z)


def test_renoise_scale_and_errors():
    assert renoise_scale(1.0, 0.6) == pytest.approx(0.8)
    assert renoise_scale(0.001, 0.002) == 0.0 == renoise_scale(0.0, 0.002)
    with pytest.raises(ValueError, match="sigma_min must be >= 0"):
        sample_consistency(lambda x, s: x, torch.randn(2, 3), torch.tensor([1.0, 0.0]),
                           sigma_min=-1.0)
