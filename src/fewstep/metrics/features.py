"""Feature-space metrics (FD, KID, PRDC) and a pluggable feature-extractor interface."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch

from fewstep.metrics._validate import as_samples, check_positive_int, pair

Tensor = torch.Tensor
ArrayLike = np.ndarray | Tensor

_BLOCK = 1024  # rows per distance block in PRDC


# ----------------------------------------------------------------------------- Fréchet


def feature_stats(feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1) of an (N, D) feature matrix, as float64 numpy."""
    f = as_samples(feats, "feats").detach().cpu().double().numpy()
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike, eps: float = 1e-6
) -> float:
    """|mu1-mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Dowson & Landau 1982; Heusel et al. 2017).

    Computed in float64. If sqrtm(C1 C2) is not finite (near-singular product), eps * I is
    added to both covariances; a complex root whose diagonal has an imaginary part above
    1e-3 raises ValueError, smaller imaginary parts are dropped.
    """
    mu1, mu2 = _vector(mu1, "mu1"), _vector(mu2, "mu2")
    cov1, cov2 = _square(cov1, "cov1"), _square(cov2, "cov2")
    dims = {"mu1": mu1.shape[0], "mu2": mu2.shape[0], "cov1": len(cov1), "cov2": len(cov2)}
    if len(set(dims.values())) != 1:
        raise ValueError(f"feature dimensions differ: {dims}")
    diff = mu1 - mu2
    covmean = _sqrtm_product(cov1, cov2, eps)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def frechet_distance_from_features(f1: Tensor, f2: Tensor) -> float:
    """Fréchet distance of Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017)."""
    f1, f2 = pair(f1, f2, names=("f1", "f2"))
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _sqrtm_product(cov1: np.ndarray, cov2: np.ndarray, eps: float) -> np.ndarray:
    """Real part of sqrtm(cov1 @ cov2), with the eps-offset retry and imaginary-part check.

    Singular covariances (e.g. constant pixels) are expected; scipy's warning about them is
    silenced and the result is checked for finiteness instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            offset = eps * np.eye(len(cov1))
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if not np.isfinite(covmean).all():
        raise ValueError(f"sqrtm(cov1 @ cov2) is not finite even with eps={eps} offset")
    if np.iscomplexobj(covmean):
        imag = float(np.abs(np.diagonal(covmean).imag).max())
        if imag > 1e-3:
            raise ValueError(f"sqrtm(cov1 @ cov2) has imaginary diagonal part {imag:.3g} > 1e-3")
        covmean = covmean.real
    return covmean


def _to_numpy(a: ArrayLike, name: str) -> np.ndarray:
    """Float64 numpy copy of a tensor or array, rejecting NaN/inf."""
    arr = a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, float)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values ({int(np.isnan(arr).sum())} NaN)")
    return arr


def _vector(a: ArrayLike, name: str) -> np.ndarray:
    """Validate a 1-D mean vector."""
    arr = _to_numpy(a, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _square(a: ArrayLike, name: str) -> np.ndarray:
    """Validate a square covariance matrix."""
    arr = _to_numpy(a, name)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- KID


def kid(
    f1: Tensor,
    f2: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2, k = (x.y/d + 1)^3 (Bińkowski et al. 2018).

    Averaged over ``subsets`` random subsets of min(subset_size, N1, N2) rows drawn without
    replacement (indices drawn on ``generator``'s device, CPU if None). Returns the mean
    and the population std (ddof=0) over subsets. KID of a set with itself is slightly
    negative, O(1/N), because the two sides' subsets can share rows.
    """
    f1, f2 = pair(f1, f2, names=("f1", "f2"))
    check_positive_int(subsets, "subsets")
    check_positive_int(subset_size, "subset_size")
    if subset_size < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    size = min(subset_size, f1.shape[0], f2.shape[0])
    values = [
        _poly_mmd2(f1[_subset(f1, size, generator)], f2[_subset(f2, size, generator)])
        for _ in range(subsets)
    ]
    t = torch.stack(values)
    return float(t.mean()), float(t.std(correction=0))


def _subset(f: Tensor, size: int, generator: torch.Generator | None) -> Tensor:
    """Random row indices of f, without replacement, on f's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(f.shape[0], generator=generator, device=device)[:size].to(f.device)


def _poly_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel, for equal-size x and y."""
    d, m = x.shape[1], x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.mean()


# ----------------------------------------------------------------------------- PRDC


def prdc(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage from k-NN balls (Naeem et al. 2020, Eqs. 1-4).

    ``real`` (N, D) and ``fake`` (M, D); ``B(x, r)`` is the closed ball ``d <= r`` of radius
    ``r = NND_k(x)``, the distance to x's k-th nearest other sample of its own set:

    - precision = fraction of fakes in some real ball; recall = fraction of reals in some
      fake ball; coverage = fraction of real balls holding a fake;
    - density = (1 / kM) sum_j sum_i 1[Y_j in B(X_i)], where a ball's boundary sphere counts
      with weight ``(k - a_i) / b_i`` (``a_i`` reals strictly inside the ball, self included,
      ``b_i`` on the sphere), so that every ball holds exactly k of the real samples. Without
      ties (continuous data) this is the paper's definition; with ties it keeps
      E[density] = 1 for identical distributions (the paper's Lemma).

    The authors' reference code (clovaai/generative-evaluation-prdc) tests ``d < r``, which
    differs only on ties and there gives 0 for all four scores when a point has more than k
    duplicates (radius 0). Distances are computed exactly (no ``|x|^2 + |y|^2 - 2 x.y``
    shortcut), so duplicates are at distance 0. Identical sets give 1 for all four.
    """
    real, fake = pair(real, fake, names=("real", "fake"))
    check_positive_int(k, "k")
    if k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(
            f"k={k} must be smaller than both sample counts "
            f"(real {real.shape[0]}, fake {fake.shape[0]})"
        )
    real_radius, boundary_weight = _knn_radius(real, k)
    fake_radius, _ = _knn_radius(fake, k)
    precision, density, nearest_fake = _fake_side(real, fake, real_radius, boundary_weight)
    recall = _fraction_in_balls(real, fake, fake_radius)
    return {
        "precision": precision,
        "recall": recall,
        "density": density / k,
        "coverage": float((nearest_fake <= real_radius).double().mean()),
    }


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Exact Euclidean distances (the matrix-product form puts duplicates at ~1e-3 in fp32)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radius(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Distance from each row of x to its k-th nearest other row (self counts as the 0-th),
    and the weight ``(k - a) / b`` of the ball's boundary sphere (``a`` rows strictly inside,
    self included, ``b`` on the sphere), which makes each ball hold exactly k rows."""
    radii, weights = [], []
    for i in range(0, x.shape[0], _BLOCK):
        dist = _dist(x[i : i + _BLOCK], x)
        r = dist.topk(k + 1, dim=1, largest=False).values[:, -1]
        inside = (dist < r[:, None]).sum(dim=1)
        on_sphere = (dist == r[:, None]).sum(dim=1)
        radii.append(r)
        weights.append((k - inside).to(x.dtype) / on_sphere)
    return torch.cat(radii), torch.cat(weights)


def _fake_side(
    real: Tensor, fake: Tensor, real_radius: Tensor, boundary_weight: Tensor
) -> tuple[float, float, Tensor]:
    """Precision, weighted mean ball count per fake (density * k) and each real's
    nearest-fake distance."""
    hits, count = 0, 0.0
    nearest = torch.full_like(real_radius, float("inf"))
    for i in range(0, fake.shape[0], _BLOCK):
        dist = _dist(fake[i : i + _BLOCK], real)
        r = real_radius[None, :]
        hits += int((dist <= r).any(dim=1).sum())
        count += float((dist < r).sum()) + float(((dist == r) * boundary_weight[None, :]).sum())
        nearest = torch.minimum(nearest, dist.min(dim=0).values)
    return hits / fake.shape[0], count / fake.shape[0], nearest


def _fraction_in_balls(points: Tensor, centres: Tensor, radius: Tensor) -> float:
    """Fraction of points inside at least one closed ball B(centre_j, radius_j)."""
    hits = 0
    for i in range(0, points.shape[0], _BLOCK):
        dist = _dist(points[i : i + _BLOCK], centres)
        hits += int((dist <= radius[None, :]).any(dim=1).sum())
    return hits / points.shape[0]


# ----------------------------------------------------------------------------- extractors


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a batch of images (N, C, H, W) to features (N, dim); ``name`` keys result caches."""

    name: str
    dim: int

    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class IdentityExtractor:
    """Pixel-space 'features': each image flattened to a vector of length ``dim``."""

    dim: int
    name: str = "identity"

    def __call__(self, images: Tensor) -> Tensor:
        """Flatten images to (N, dim), checking the flattened size."""
        feats = images.reshape(images.shape[0], -1)
        if feats.shape[1] != self.dim:
            raise ValueError(
                f"IdentityExtractor expects {self.dim} values per image, got {feats.shape[1]} "
                f"(image shape {tuple(images.shape[1:])})"
            )
        return feats


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: Tensor, batch_size: int = 256) -> Tensor:
    """Run an extractor over images in batches and check it returns (N, extractor.dim)."""
    check_positive_int(batch_size, "batch_size")
    parts = [extractor(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    feats = torch.cat(parts) if parts else images.new_zeros(0, extractor.dim)
    if feats.shape != (images.shape[0], extractor.dim):
        raise ValueError(
            f"extractor {extractor.name!r} returned shape {tuple(feats.shape)}, "
            f"expected ({images.shape[0]}, {extractor.dim})"
        )
    return feats


class ChecksumError(ValueError):
    """A weights file's SHA-256 does not match the expected digest."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_extractor_weights(
    path: str | Path, sha256: str, map_location: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)`` after verifying its SHA-256."""
    expected = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"sha256 must be 64 hex characters, got {sha256!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extractor weights not found: {path}")
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"SHA-256 mismatch for extractor weights {path}: expected {expected}, got {actual}"
        )
    return torch.load(path, map_location=map_location, weights_only=True)
