"""Closed-form checks for fewstep.metrics.features."""

import hashlib

import numpy as np
import pytest
import torch

from fewstep.metrics import (
    ChecksumError,
    FeatureExtractor,
    IdentityExtractor,
    extract_features,
    feature_stats,
    frechet_distance,
    frechet_distance_from_features,
    kid,
    load_extractor_weights,
    prdc,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ----------------------------------------------------------------------------- Fréchet


def test_fd_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # |mu1-mu2|^2 = 5; trace term = sum(a + b - 2 sqrt(ab)) = (5-4) + (5-4) + (10-6) = 6.
    fd = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fd == pytest.approx(11.0, rel=1e-10)


def test_fd_general_covariances_match_symmetric_formula():
    rng = np.random.default_rng(0)
    c1, c2 = _spd(rng, 6), _spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1 = _psd_sqrt(c1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * _psd_sqrt(s1 @ c2 @ s1))
    as_torch = [torch.tensor(a) for a in (mu1, c1, mu2, c2)]
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(*as_torch) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-8)


def test_fd_of_identical_stats_is_zero():
    c = _spd(np.random.default_rng(1), 4)
    assert frechet_distance(np.ones(4), c, np.ones(4), c) == pytest.approx(0.0, abs=1e-9)


def test_fd_singular_covariance_stays_finite():
    f = torch.randn(5, 16, generator=_gen(), dtype=torch.float64)  # rank-4 covariance
    fd = frechet_distance_from_features(f, f)
    assert np.isfinite(fd)
    assert abs(fd) < 1e-3


def test_feature_stats_match_numpy():
    f = torch.randn(50, 3, generator=_gen(1))
    mu, cov = feature_stats(f)
    ref = f.double().numpy()
    assert mu.dtype == np.float64
    assert cov.dtype == np.float64
    np.testing.assert_allclose(mu, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(ref, rowvar=False), rtol=1e-12)
    assert feature_stats(f[:, :1])[1].shape == (1, 1)


def test_fd_from_large_samples_approaches_closed_form():
    g = _gen(2)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    f1 = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    f2 = torch.randn(20000, 3, generator=g, dtype=torch.float64) * scale + 1.0
    # |dmu|^2 + tr C1 + tr C2 - 2 tr sqrt(C1 C2) = 3 + 3 + 5.25 - 2 * 3.5 = 4.25
    assert frechet_distance_from_features(f1, f2) == pytest.approx(4.25, abs=0.1)


def test_fd_errors_name_bad_values():
    c = np.eye(3)
    with pytest.raises(ValueError, match="'mu2': 2"):
        frechet_distance(np.zeros(3), c, np.zeros(2), c)
    with pytest.raises(ValueError, match=r"cov1 must be a square matrix, got shape \(3, 2\)"):
        frechet_distance(np.zeros(3), np.ones((3, 2)), np.zeros(3), c)
    with pytest.raises(ValueError, match="mu1 contains non-finite"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), c, np.zeros(3), c)
    with pytest.raises(ValueError, match="f1 has 3, f2 has 4"):
        frechet_distance_from_features(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="feats needs at least 2 samples, got 1"):
        feature_stats(torch.zeros(1, 3))


# ----------------------------------------------------------------------------- KID


def test_kid_point_masses_closed_form():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])

    def k(u, v):
        return (float(u @ v) / 3 + 1) ** 3

    mean, std = kid(a.expand(20, 3), b.expand(30, 3), subsets=5, subset_size=10, generator=_gen())
    assert mean == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_kid_identical_sets_is_small_closed_form():
    # With subset_size = N every subset is a permutation, so KID(f, f) is exactly
    # 2 (S - T) / (N (N - 1)) - 2 S / N^2 (S: kernel sum, T: its trace), which is O(1/N).
    f = torch.randn(300, 8, generator=_gen(3), dtype=torch.float64)
    gram = (f @ f.T / 8 + 1) ** 3
    s, t, n = gram.sum().item(), gram.trace().item(), 300
    expected = 2 * (s - t) / (n * (n - 1)) - 2 * s / n**2
    mean, std = kid(f, f.clone(), subsets=3, subset_size=n, generator=_gen(4))
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)
    assert abs(mean) < 0.1


def test_kid_same_distribution_near_zero_and_separated_positive():
    g = _gen(5)
    f1, f2 = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    mean, std = kid(f1, f2, subsets=50, subset_size=200, generator=_gen(6))
    far, _ = kid(f1, f2 + 1.0, subsets=50, subset_size=200, generator=_gen(6))
    assert abs(mean) < 0.05
    assert std > 0
    assert far > 5.0


def test_kid_deterministic_and_clamps_subset_size():
    f1 = torch.randn(30, 4, generator=_gen(5))
    f2 = torch.randn(40, 4, generator=_gen(6))
    a = kid(f1, f2, subsets=3, subset_size=1000, generator=_gen(9))
    b = kid(f1, f2, subsets=3, subset_size=1000, generator=_gen(9))
    assert a == b


def test_kid_rejects_bad_arguments():
    f = torch.randn(10, 2)
    with pytest.raises(ValueError, match="subset_size must be at least 2, got 1"):
        kid(f, f, subset_size=1)
    with pytest.raises(ValueError, match="subsets must be a positive integer, got 0"):
        kid(f, f, subsets=0)


# ----------------------------------------------------------------------------- PRDC


def test_prdc_identical_sets():
    f = torch.randn(500, 6, generator=_gen(7))
    out = prdc(f, f.clone(), k=5)
    assert out["precision"] == 1.0
    assert out["recall"] == 1.0
    assert out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0, abs=0.05)


def test_prdc_disjoint_far_sets():
    f = torch.randn(200, 6, generator=_gen(8))
    out = prdc(f, f + 1000.0, k=5)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_computed_1d():
    # Real 0,1,2,3 have 1-NN radius 1; fakes 0.5, 10 have 1-NN radius 9.5.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    out = prdc(real, fake, k=1)
    assert out == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}


def test_prdc_all_duplicates_is_one():
    # Every point has 1023 duplicates: radius 0, every ball holds every sample.
    out = prdc(torch.ones(1024, 16), torch.ones(1024, 16), k=5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_prdc_discrete_data_hand_computed():
    # Reals: 0, 10 and 20, four copies each, so every real 2-NN radius is 0 and each ball's
    # sphere holds its 4 copies with weight (k - 0) / 4 = 1/2. Fakes 0, 0, 10, 5.
    real = torch.tensor([0.0, 10.0, 20.0]).repeat_interleave(4)[:, None]
    fake = torch.tensor([[0.0], [0.0], [10.0], [5.0]])
    out = prdc(real, fake, k=2)
    # precision: 3 fakes sit on real points; density: each of them is on 4 spheres, weight
    # 1/2, (3 * 2) / (k M) = 6 / 8; coverage: the 8 reals at 0 and 10; recall: fake radii
    # are 5, 5, 10, 5, and 20 is exactly 10 from the fake at 10 (a closed ball).
    assert out == pytest.approx({"precision": 0.75, "recall": 1.0, "density": 0.75,
                                 "coverage": 8 / 12})


def test_prdc_duplicated_continuous_points_are_ties():
    f = torch.randn(300, 8, generator=_gen(3))
    f = torch.cat([f, f, f])  # each point three times: 2 duplicates < k, radius > 0
    out = prdc(f, f.clone(), k=5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_prdc_rejects_large_k():
    with pytest.raises(ValueError, match=r"k=5 .*real 5, fake 8"):
        prdc(torch.randn(5, 2), torch.randn(8, 2), k=5)


# ----------------------------------------------------------------------------- extractors


def test_identity_extractor_flattens_and_follows_protocol():
    ext = IdentityExtractor(dim=12)
    assert isinstance(ext, FeatureExtractor)
    images = torch.randn(7, 3, 2, 2)
    feats = extract_features(ext, images, batch_size=3)
    assert torch.equal(feats, images.reshape(7, 12))
    with pytest.raises(ValueError, match="expects 12 values per image, got 27"):
        ext(torch.zeros(2, 3, 3, 3))


def test_extract_features_checks_output_shape():
    class Bad:
        name, dim = "bad", 4

        def __call__(self, images):
            return torch.zeros(images.shape[0], 3)

    with pytest.raises(ValueError, match=r"'bad' returned shape \(5, 3\), expected \(5, 4\)"):
        extract_features(Bad(), torch.zeros(5, 1, 2, 2))


def test_load_extractor_weights_verifies_hash(tmp_path):
    path = tmp_path / "ext.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_extractor_weights(path, good.upper())
    assert torch.equal(loaded["w"], state["w"])
    bad = "0" * 64
    with pytest.raises(ChecksumError) as err:
        load_extractor_weights(str(path), bad)
    assert str(path) in str(err.value)
    assert good in str(err.value)
    assert bad in str(err.value)
    assert isinstance(err.value, ValueError)


def test_load_extractor_weights_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="'abc'"):
        load_extractor_weights(tmp_path / "x.pt", "abc")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_extractor_weights(tmp_path / "missing.pt", "0" * 64)
