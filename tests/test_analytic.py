import math

import pytest
import torch

from fewstep import EmpiricalDenoiser, GaussianMixture
from fewstep.solvers import reference_solution


def test_denoiser_is_tweedie(mixture):
    """D(x, sigma) = x + sigma^2 grad log p_sigma(x), with the gradient by autograd."""
    x = mixture.sample(32, sigma=0.7, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(mixture.log_prob(x, 0.7).sum(), x)
    torch.testing.assert_close(mixture(x.detach(), 0.7), x.detach() + 0.49 * g)
    torch.testing.assert_close(mixture.score(x.detach(), 0.7), g)


def test_log_prob_of_single_gaussian_matches_scipy(single_gaussian):
    from scipy.stats import multivariate_normal

    x = torch.randn(8, 4, dtype=torch.float64)
    var = single_gaussian.variances[0] + 0.3**2
    ref = multivariate_normal(single_gaussian.means[0].numpy(), torch.diag(var).numpy())
    torch.testing.assert_close(single_gaussian.log_prob(x, 0.3),
                               torch.from_numpy(ref.logpdf(x.numpy())))


def test_samples_have_the_noised_moments(single_gaussian):
    x = single_gaussian.sample(200_000, sigma=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), single_gaussian.means[0], atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), single_gaussian.variances[0] + 0.25, rtol=0.02, atol=0)


def test_isotropic_and_diagonal_agree():
    means = torch.randn(3, 5, dtype=torch.float64)
    iso = GaussianMixture(means, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    diag = GaussianMixture(means, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)[:, None]
                           .expand(3, 5))
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(iso(x, 0.4), diag(x, 0.4))


def test_float32_and_float64(mixture):
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(mixture(x.float(), 0.5), mixture(x, 0.5).float(),
                               rtol=1e-4, atol=1e-5)


def test_single_gaussian_flow_solves_the_pf_ode(single_gaussian):
    x = torch.randn(6, 4, dtype=torch.float64) * 3
    s, ds = 1.3, 1e-5
    up, down = (single_gaussian.flow(x, 3.0, s + v) for v in (ds, -ds))
    x_s = single_gaussian.flow(x, 3.0, s)
    torch.testing.assert_close((up - down) / (2 * ds), (x_s - single_gaussian(x_s, s)) / s,
                               rtol=1e-6, atol=1e-8)


def test_reference_solution_matches_closed_form(single_gaussian):
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 20
    exact = single_gaussian.flow(x, 20.0, 0.0)
    torch.testing.assert_close(reference_solution(single_gaussian, x, 20.0), exact,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [
    lambda: GaussianMixture(torch.zeros(3), 1.0),
    lambda: GaussianMixture(torch.zeros(2, 3), torch.tensor([1.0, -1.0])),
    lambda: GaussianMixture(torch.zeros(2, 3), 1.0, torch.tensor([1.0, 2.0, 3.0])),
])
def test_bad_mixture_arguments(bad):
    with pytest.raises(ValueError):
        bad()


def test_mixture_rejects_wrong_dim(mixture):
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        mixture(torch.zeros(2, 3, dtype=torch.float64), 1.0)


def _brute_force(data, x, sigma):
    w = torch.softmax(-((x[:, None] - data[None]) ** 2).sum(-1) / (2 * sigma**2), dim=1)
    return w @ data


def test_empirical_denoiser_matches_brute_force_and_chunks():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64) * 2
    for chunk in (7, 64, 10_000):
        torch.testing.assert_close(EmpiricalDenoiser(data, chunk_size=chunk)(x, 0.8),
                                   _brute_force(data, x, 0.8))


def test_empirical_denoiser_limits():
    data = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    D = EmpiricalDenoiser(data)
    x = torch.tensor([[0.5, 0.1], [3.0, -0.2]], dtype=torch.float64)
    torch.testing.assert_close(D(x, 0.01), data)  # small sigma: nearest point
    torch.testing.assert_close(D(x, 1e4), data.mean(0).expand(2, 2), atol=1e-6, rtol=0)


def test_empirical_denoiser_images_and_memory():
    data = torch.randn(10_000, 64)
    D = EmpiricalDenoiser(data.reshape(10_000, 1, 8, 8), chunk_size=1024)
    out = D(torch.randn(32, 1, 8, 8) * 3, 2.0)
    assert out.shape == (32, 1, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="expected"):
        D(torch.zeros(2, 64), 1.0)


def test_gaussian_log_prob_normalises_in_2d():
    gm = GaussianMixture.random(2, 3, spread=1.0, std=0.5, seed=0)
    grid = torch.linspace(-6, 6, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    p = gm.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1), 0.2).exp()
    assert math.isclose(float(p.sum() * (grid[1] - grid[0]) ** 2), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sigma", [0.01, 1.0, 80.0, 300.0, 2000.0])
def test_half_precision_inputs_do_not_overflow(mixture, dtype, sigma):
    """fp16 overflows sigma^2 above 256 (the posterior went NaN/inf); the mixture computes
    in float32 and returns the input dtype, within the input's rounding of the float64
    answer."""
    x = sigma * torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x.to(dtype)
    out = mixture(x, sigma)
    assert out.dtype == dtype and torch.isfinite(out).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), mixture(x.double(), sigma),
                               rtol=4 * eps, atol=4 * eps * mixture.means.abs().max().item())
    assert mixture.log_prob(x, sigma).dtype == dtype
    assert torch.isfinite(mixture.score(x, sigma)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_empirical_denoiser_half_precision(dtype):
    data = torch.randn(50, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    D = EmpiricalDenoiser(data, chunk_size=16)
    x = (data[:8] + 300.0 * torch.randn(8, 3, 4, 4, dtype=torch.float64)).to(dtype)
    out = D(x, 300.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), D(x.double(), 300.0),
                               rtol=4 * torch.finfo(dtype).eps, atol=0.05)
