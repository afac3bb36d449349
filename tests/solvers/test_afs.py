"""The analytic first step: one evaluation fewer, and exact when the data's statistics are
the teacher's (a single Gaussian)."""

import pytest
import torch

from fewstep import CountingDenoiser, GaussianMixture, solvers
from fewstep.solvers.afs import gaussian_estimate, with_afs, zhou_estimate

from ..conftest import deterministic_solvers


@pytest.fixture(scope="module")
def full_gaussian():
    """One Gaussian with a full (non-diagonal) covariance, built as A A^T."""
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.7, -0.3], [0.2, 0.0, 0.4]], dtype=torch.float64)
    return torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), A @ A.T


def test_gaussian_estimate_is_the_exact_denoiser(single_gaussian):
    """Diagonal covariance: the estimate equals the closed-form teacher at every sigma."""
    est = gaussian_estimate(single_gaussian.means[0], single_gaussian.variances[0])
    x = 5 * torch.randn(6, 4, dtype=torch.float64)
    for s in (0.1, 1.0, 80.0):
        torch.testing.assert_close(est(x, s), single_gaussian(x, torch.full((6,), s,
                                                                            dtype=x.dtype)))


def test_full_covariance_estimate_matches_the_posterior_mean(full_gaussian):
    mu, cov = full_gaussian
    x = 3 * torch.randn(5, 3, dtype=torch.float64)
    s = 0.7
    want = mu + (x - mu) @ torch.linalg.solve(cov + s**2 * torch.eye(3, dtype=x.dtype), cov)
    torch.testing.assert_close(gaussian_estimate(mu, cov)(x, s), want)
    # per-row sigmas (a batched request) broadcast per row
    rows = torch.tensor([s] * 5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_estimate(mu, cov)(x, rows), want)


@pytest.mark.parametrize("name", deterministic_solvers())
def test_afs_saves_one_evaluation_and_is_exact_on_a_gaussian(name, single_gaussian):
    """Every deterministic solver: with the Gaussian's own statistics, AFS spends one
    evaluation fewer and returns the same answer as the solver without it."""
    spec = solvers.get(name)
    p = solvers.plan(name, max(spec.min_nfe, 6), sigma_max=20.0)
    x = 20.0 * torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full, afs = CountingDenoiser(single_gaussian), CountingDenoiser(single_gaussian)
    want = spec(full, x, p.sigmas, **p.knobs)
    got = with_afs(name, mean=single_gaussian.means[0],
                   cov=single_gaussian.variances[0])(afs, x, p.sigmas, **p.knobs)
    assert afs.nfe == full.nfe - 1 == p.nfe - 1
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_zhou_estimate_is_the_papers_direction():
    """d = (x - D) / sigma = x / sqrt(1 + sigma^2) (Zhou et al. 2024)."""
    x, s = torch.randn(3, 5, dtype=torch.float64), 80.0
    torch.testing.assert_close((x - zhou_estimate(x, s)) / s, x / (1 + s**2) ** 0.5)


def test_afs_without_statistics_is_close_at_high_sigma():
    """Zero-mean unit-variance data: the paper's estimate is near the exact first step, so
    the 10-step DPM-Solver++(2M) answer moves little (max 0.05 on a 2-component mixture)."""
    g = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), 0.1)
    x = 80.0 * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = solvers.plan("dpmpp_2m", 10, sigma_max=80.0)
    diff = with_afs("dpmpp_2m")(g, x, p.sigmas) - solvers.get("dpmpp_2m")(g, x, p.sigmas)
    assert float(diff.abs().max()) < 0.05


def test_afs_keeps_knob_checks_and_names():
    spec = with_afs("ipndm")
    assert spec.name == "ipndm+afs" and spec.fn.knobs == solvers.get("ipndm").fn.knobs
    with pytest.raises(TypeError, match="'etaa'"):
        spec(lambda x, s: x, torch.randn(2, 3), [1.0, 0.0], etaa=1)


@pytest.mark.parametrize("mean,cov,match", [
    (torch.zeros(3), torch.zeros(2), r"cov must have shape \(3,\)"),
    (torch.zeros(2), torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
    (torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
    (torch.zeros(2), -torch.ones(2), ">= 0"),
])
def test_bad_statistics_are_named(mean, cov, match):
    with pytest.raises(ValueError, match=match):
        gaussian_estimate(mean, cov)


def test_mean_without_cov_is_refused():
    with pytest.raises(ValueError, match="both mean= and cov="):
        with_afs("ddim", mean=torch.zeros(2))
