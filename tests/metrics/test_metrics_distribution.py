"""Closed-form checks for fewstep.metrics.distribution."""

import math

import numpy as np
import ot
import pytest
import scipy.stats
import torch

from fewstep.metrics import distribution as dist
from fewstep.metrics import energy_distance, mmd, mode_coverage, nll, sliced_wasserstein
from fewstep.metrics.distribution import SlicedReference


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- sliced W


def test_sw_of_shifted_set_is_norm_over_dim():
    g = _gen()
    x = torch.randn(300, 4, generator=g)
    v = torch.tensor([1.0, 2.0, 0.0, -1.0])
    sw = sliced_wasserstein(x, x + v, n_projections=4000, generator=g)
    # SW_2^2 = E_theta[(theta . v)^2] = |v|^2 / d; MC relative std here is ~1.6%.
    assert sw**2 == pytest.approx(v.square().sum().item() / 4, rel=0.06)


def test_sw_flattens_images():
    g = _gen(1)
    x = torch.randn(64, 3, 4, 4, generator=g)
    v = torch.randn(3, 4, 4, generator=g)
    sw = sliced_wasserstein(x, x + v, n_projections=4000, generator=g)
    assert sw**2 == pytest.approx(v.square().sum().item() / 48, rel=0.1)


def test_sw_is_deterministic_given_generator():
    x = torch.randn(50, 5, generator=_gen(2))
    y = torch.randn(70, 5, generator=_gen(3)) + 1
    a = sliced_wasserstein(x, y, 16, generator=_gen(7))
    b = sliced_wasserstein(x, y, 16, generator=_gen(7))
    c = sliced_wasserstein(x, y, 16, generator=_gen(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sw_1d_unequal_sizes_matches_exact_ot(p):
    # In 1-D every direction is +-1, so SW_p is the exact W_p.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(1.0, 2.0, size=4)
    a, b = np.full(7, 1 / 7), np.full(4, 1 / 4)
    exact = ot.emd2(a, b, np.abs(x[:, None] - y[None, :]) ** p) ** (1 / p)
    sw = sliced_wasserstein(torch.tensor(x), torch.tensor(y), 8, p=p, generator=_gen())
    assert sw == pytest.approx(exact, rel=1e-9)
    if p == 1:
        assert sw == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-9)


def test_sw_of_replicated_set_is_zero():
    x = torch.randn(5, 3, generator=_gen())
    assert sliced_wasserstein(x, x.repeat(3, 1), generator=_gen()) == pytest.approx(0, abs=1e-12)


def _sw_as_before(x, y, n_projections, p, generator):
    """The one-shot computation sliced_wasserstein did before SlicedReference existed."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    theta = torch.randn(x.shape[1], n_projections, generator=generator).double()
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ theta, dim=0).values, torch.sort(y @ theta, dim=0).values
    return float(dist._wasserstein_1d_pp(px, py, p).mean() ** (1.0 / p))


@pytest.mark.parametrize("n,m,p", [(40, 40, 2), (40, 70, 2), (33, 9, 1), (50, 20, 3)])
def test_sliced_reference_is_identical_to_before_and_reusable(n, m, p):
    g = _gen(11)
    x, x2 = torch.randn(n, 2, 3, generator=g), torch.randn(n, 2, 3, generator=g) * 2
    y = torch.randn(m, 2, 3, generator=g) + 0.5
    before = [_sw_as_before(v, y, 64, p, _gen(5)) for v in (x, x2)]
    ref = SlicedReference(y, 64, _gen(5))
    assert [ref.distance(x, p), ref.distance(x2, p), ref.distance(x, p)] == [*before, before[0]]
    assert [sliced_wasserstein(v, y, 64, p, _gen(5)) for v in (x, x2)] == before


def test_sliced_reference_checks_its_inputs():
    ref = SlicedReference(torch.randn(10, 3), 8, _gen())
    with pytest.raises(ValueError, match="x has 4, y has 3"):
        ref.distance(torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"p must be >= 1, got 0\.5"):
        ref.distance(torch.randn(10, 3), p=0.5)
    with pytest.raises(ValueError, match="y needs at least 2 samples, got 1"):
        SlicedReference(torch.randn(1, 3))
    with pytest.raises(ValueError, match="n_projections must be a positive integer, got 0"):
        SlicedReference(torch.randn(5, 3), n_projections=0)


# ----------------------------------------------------------------------------- MMD


def test_mmd_point_masses_closed_form():
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    bw = (0.5, 1.0, 2.0)
    x, y = a.expand(5, 2), b.expand(7, 2)
    expected = 2 * len(bw) - 2 * sum(math.exp(-2.0 / (2 * s * s)) for s in bw)
    assert mmd(x, y, bandwidths=bw) == pytest.approx(expected, rel=1e-9)


def test_mmd_gaussians_closed_form():
    # X ~ N(0, I), Y ~ N(delta, I) in 2-D, RBF bandwidth 1:
    # MMD^2 = 2 c (1 - exp(-|delta|^2 / (2 (1 + 2)))) with c = (1 / 3)^(d / 2).
    g = _gen(4)
    x = torch.randn(3000, 2, generator=g)
    y = torch.randn(3000, 2, generator=g) + torch.tensor([1.0, 0.0])
    expected = 2 / 3 * (1 - math.exp(-1 / 6))  # ~0.102; estimator std here ~0.005
    assert mmd(x, y, bandwidths=[1.0]) == pytest.approx(expected, abs=0.02)


def test_mmd_near_zero_for_same_distribution():
    g = _gen(5)
    x, y = torch.randn(800, 3, generator=g), torch.randn(800, 3, generator=g)
    assert abs(mmd(x, y)) < 5e-3


def test_mmd_grows_with_separation():
    g = _gen(6)
    x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
    values = [mmd(x, y + s, bandwidths=(0.5, 1.0, 2.0)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert values[0] > 0
    assert values == sorted(values)


def test_mmd_block_size_changes_only_the_summation_order(monkeypatch):
    g = _gen(9)
    x, y = torch.randn(1300, 3, generator=g), torch.randn(1100, 3, generator=g) + 0.3
    blocked = mmd(x, y)  # several blocks of dist._MMD_BLOCK rows
    monkeypatch.setattr(dist, "_MMD_BLOCK", 4096)  # one block
    assert dist._MMD_BLOCK > 1300 and blocked == pytest.approx(mmd(x, y), rel=1e-9, abs=1e-15)


def test_mmd_rejects_bad_bandwidth():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"-1\.0"):
        mmd(x, x, bandwidths=[1.0, -1.0])


# ----------------------------------------------------------------------------- energy


def test_energy_point_masses_is_twice_distance():
    assert energy_distance(torch.full((3, 1), 1.5), torch.full((5, 1), -0.25)) == pytest.approx(
        3.5, rel=1e-9
    )
    a, b = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 2.0])
    assert energy_distance(a.expand(4, 3), b.expand(2, 3)) == pytest.approx(6.0, rel=1e-7)


def test_energy_matches_scipy_squared_in_1d():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.exponential(size=25)
    expected = scipy.stats.energy_distance(x, y) ** 2
    assert energy_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-9)


def test_energy_zero_for_identical_and_grows_with_separation():
    g = _gen(7)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) < 0.03
    values = [energy_distance(x, y + s) for s in (0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert values[0] > 0.1


# ----------------------------------------------------------------------------- modes


def _ring(k: int = 8, radius: float = 5.0) -> torch.Tensor:
    angles = torch.arange(k) * 2 * math.pi / k
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def test_mode_coverage_counts_hit_modes_and_quality():
    means = _ring()
    g = _gen(8)
    samples = torch.cat([means[i] + 0.1 * torch.randn(100, 2, generator=g) for i in range(6)])
    out = mode_coverage(samples, means, std=0.1, n_std=4.0)
    assert out == {
        "mode_fraction": 0.75,
        "high_quality_fraction": 1.0,
        "modes_hit": 6,
        "n_modes": 8,
    }
    outliers = torch.full((50, 2), 100.0)
    out = mode_coverage(torch.cat([samples, outliers]), means, std=0.1, n_std=4.0)
    assert out["high_quality_fraction"] == pytest.approx(600 / 650)
    assert out["mode_fraction"] == 0.75


def test_mode_coverage_threshold_and_per_mode_std():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.0, 0.5]] * 10 + [[10.0, 1.5]] * 3)
    std = torch.tensor([0.2, 1.0])  # first mode: 0.5 / 0.2 = 2.5 std away
    out = mode_coverage(samples, means, std=std, n_std=3.0, min_count=5)
    assert out["modes_hit"] == 1
    assert out["high_quality_fraction"] == 1.0
    out = mode_coverage(samples, means, std=std, n_std=2.0, min_count=1)
    assert out["modes_hit"] == 1  # only the second mode's samples are within 2 std
    assert out["high_quality_fraction"] == pytest.approx(3 / 13)


def test_mode_coverage_rejects_wrong_std_length():
    with pytest.raises(ValueError, match="3"):
        mode_coverage(torch.zeros(4, 2), _ring(2), std=torch.ones(3))


# ----------------------------------------------------------------------------- NLL


def test_nll_standard_normal_closed_form():
    x = torch.randn(1000, 3, generator=_gen(9), dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    expected = 1.5 * math.log(2 * math.pi) + 0.5 * x.square().sum(dim=1).mean().item()
    assert nll(x, lambda s: dist.log_prob(s.float())) == pytest.approx(expected, rel=1e-5)


def test_nll_rejects_bad_output():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        nll(x, lambda s: torch.zeros(4, 1))
    with pytest.raises(ValueError, match="NaN"):
        nll(x, lambda s: torch.full((4,), float("nan")))


# ----------------------------------------------------------------------------- errors


METRICS = [
    lambda x, y: sliced_wasserstein(x, y, generator=_gen()),
    mmd,
    energy_distance,
]


@pytest.mark.parametrize("metric", METRICS)
def test_mismatched_dims_named(metric):
    with pytest.raises(ValueError, match="x has 3, y has 4"):
        metric(torch.zeros(5, 3), torch.zeros(5, 4))


@pytest.mark.parametrize("metric", METRICS)
def test_too_few_samples_named(metric):
    with pytest.raises(ValueError, match="y needs at least 2 samples, got 1"):
        metric(torch.randn(5, 3), torch.randn(1, 3))


@pytest.mark.parametrize("metric", METRICS)
def test_nan_input_rejected(metric):
    x = torch.randn(5, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains non-finite values \\(1 NaN"):
        metric(x, torch.randn(5, 3))


def test_sw_rejects_bad_arguments():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"n_projections.*0"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match=r"0\.5"):
        sliced_wasserstein(x, x, p=0.5)
