"""Small built-in image sets: bundled sklearn digits, skimage photo patches, generated shapes."""

from __future__ import annotations

import numpy as np

from fewstep.data.registry import (
    Dataset,
    finite_label_loader,
    finite_loader,
    generated_label_loaders,
)

PATCH = 16
PATCH_DOWNSCALE = 2
# Colour photographs shipped inside the scikit-image wheel (no pooch download), with licences.
PATCH_SOURCES = {
    "astronaut": "NASA photo of Eileen Collins, public domain",
    "chelsea": "Chelsea the cat, CC0 (Stefan van der Walt)",
    "coffee": "coffee cup, CC0 (Rachel Michetti)",
    "rocket": "SpaceX DSCOVR launch photo, public domain",
    "immunohistochemistry": "IHC micrograph (CMMI), no known copyright restrictions",
}
SHAPES_DEFAULT_N = {"train": 10_000, "test": 2_000}
SUPERSAMPLE = 4


def digits_array() -> np.ndarray:
    """All 1797 sklearn digits as (N, 1, 8, 8) float32 in [-1, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    return (images / 8.0 - 1.0)[:, None]


def digits_labels() -> np.ndarray:
    """The class (0-9) of each of :func:`digits_array`'s rows."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def image_tiles(img: np.ndarray, size: int = PATCH, factor: int = PATCH_DOWNSCALE) -> np.ndarray:
    """Mean-pool an (H, W, C) uint8 image by `factor`, cut non-overlapping (C, size, size) tiles."""
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    small = img[:h, :w, :3].astype(np.float32).reshape(h // factor, factor, w // factor, factor, 3)
    small = small.mean(axis=(1, 3))
    th, tw = small.shape[0] // size, small.shape[1] // size
    tiles = small[: th * size, : tw * size].reshape(th, size, tw, size, 3)
    return tiles.transpose(0, 2, 4, 1, 3).reshape(th * tw, 3, size, size)


def patches_array() -> np.ndarray:
    """All 16x16 tiles of the bundled photographs as (N, 3, 16, 16) float32 in [-1, 1]."""
    import skimage.data

    tiles = [image_tiles(getattr(skimage.data, name)()) for name in PATCH_SOURCES]
    return np.concatenate(tiles) / 127.5 - 1.0


def _polygon_mask(
    dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, theta: np.ndarray, sides: int
) -> np.ndarray:
    """Inside-mask of regular polygons with circumradius `radius` rotated by `theta`."""
    inside = np.ones(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
    apothem = (radius * np.cos(np.pi / sides))[:, None, None]
    for j in range(sides):
        phi = (theta + np.pi / sides + 2 * np.pi * j / sides)[:, None, None]
        inside &= dx * np.cos(phi) + dy * np.sin(phi) <= apothem
    return inside


def _shape_mask(
    kind: int, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Supersampled inside-mask for one shape kind: 0 circle, 1 square, 2 triangle."""
    if kind == 0:
        return dx**2 + dy**2 <= (radius**2)[:, None, None]
    return _polygon_mask(dx, dy, radius, theta, 4 if kind == 1 else 3)


def render_shapes(
    kind: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    theta: np.ndarray,
    intensity: np.ndarray,
    size: int = PATCH,
) -> np.ndarray:
    """Anti-aliased grey images (N, size, size) in [0, 1]; kind 0 circle, 1 square, 2 triangle."""
    s = SUPERSAMPLE
    u = (np.arange(size * s, dtype=np.float32) + 0.5) / s
    out = np.zeros((len(kind), size, size), dtype=np.float32)
    for k in range(3):
        i = np.flatnonzero(kind == k)
        dx = u[None, None, :] - cx[i, None, None].astype(np.float32)
        dy = u[None, :, None] - cy[i, None, None].astype(np.float32)
        mask = _shape_mask(k, dx, dy, radius[i], theta[i])
        cover = mask.reshape(len(i), size, s, size, s).sum(axis=(2, 4), dtype=np.float32) / s**2
        out[i] = cover * intensity[i, None, None]
    return out


def sample_shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` random circles/squares/triangles as (n, 1, 16, 16) float32, background -1."""
    return sample_labelled_shapes(n, rng)[0]


def sample_labelled_shapes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_shapes` with each image's class: 0 circle, 1 square, 2 triangle."""
    kind = rng.integers(0, 3, n)
    radius = rng.uniform(3.0, 7.0, n)
    cx = rng.uniform(radius, PATCH - radius)
    cy = rng.uniform(radius, PATCH - radius)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    intensity = rng.uniform(0.35, 1.0, n)
    out = np.empty((n, 1, PATCH, PATCH), dtype=np.float32)
    for start in range(0, n, 1024):
        sl = slice(start, start + 1024)
        out[sl, 0] = render_shapes(kind[sl], cx[sl], cy[sl], radius[sl], theta[sl], intensity[sl])
    return out * 2.0 - 1.0, kind.astype(np.int64)


def image_datasets() -> list[Dataset]:
    """The built-in image data sets (nothing is loaded until `.load`)."""
    shapes_loaders = generated_label_loaders(sample_labelled_shapes, SHAPES_DEFAULT_N)
    photos = "; ".join(f"{k}: {v}" for k, v in PATCH_SOURCES.items())
    return [
        Dataset(
            name="digits",
            kind="image",
            shape=(1, 8, 8),
            loader=finite_loader(digits_array),
            num_classes=10,
            labels=finite_label_loader(digits_array, digits_labels),
            licence="UCI ML hand-written digits (Alpaydin & Kaynak 1998) as bundled with "
            "scikit-learn (load_digits, no download); CC BY 4.0",
            description="1797 8x8 hand-written digits; fixed 80/20 seeded train/test split",
        ),
        Dataset(
            name="patches",
            kind="image",
            shape=(3, PATCH, PATCH),
            loader=finite_loader(patches_array),
            licence=f"tiles of photographs bundled in scikit-image's skimage.data ({photos})",
            description="non-overlapping 16x16 tiles of 5 photos downscaled 2x; tiles (disjoint "
            "regions) split 80/20 by a fixed seed, every photo appears in both splits",
        ),
        Dataset(
            name="shapes",
            kind="image",
            shape=(1, PATCH, PATCH),
            finite=False,
            loader=shapes_loaders[0],
            num_classes=3,
            labels=shapes_loaders[1],
            licence="generated procedurally by fewstep's own code (no external data); Apache-2.0",
            description="anti-aliased circles/squares/triangles, random position/size/"
            "rotation/intensity on a black background",
        ),
    ]
