"""Procedural 2-D toy distributions, each centred and scaled to roughly unit std per axis."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fewstep.data.registry import Dataset, generated_label_loaders, generated_loader

TOY_DEFAULT_N = {"train": 20_000, "test": 5_000}
TOY_LICENCE = "generated procedurally by fewstep's own code (no external data); Apache-2.0"


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform density on the dark squares of a 4x4 checkerboard."""
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) / 1.15


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixture of eight isotropic Gaussians evenly spaced on a circle."""
    return labelled_eight_gaussians(n, rng)[0]


def labelled_eight_gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`eight_gaussians` with each point's mode (0-7, counter-clockwise from angle 0)."""
    mode = rng.integers(0, 8, n)
    angles = 2 * np.pi * mode / 8
    centres = 1.4 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + 0.15 * rng.standard_normal((n, 2)), mode.astype(np.int64)


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy 2-D Swiss-roll spiral."""
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(0.0, 1.0, n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((n, 2))
    return (x - np.array([2.0, 0.2])) / 6.8


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaving half circles with small Gaussian noise."""
    t = np.pi * rng.uniform(0.0, 1.0, n)
    upper = rng.integers(0, 2, n).astype(bool)
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + 0.08 * rng.standard_normal((n, 2))
    return (pts - np.array([0.5, 0.25])) / np.array([0.87, 0.5])


def rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four concentric noisy circles, points spread evenly over the rings."""
    radius = 0.52 * rng.integers(1, 5, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return pts + 0.04 * rng.standard_normal((n, 2))


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five curved arms of a pinwheel (as in the FFJORD toy suite)."""
    arm = rng.integers(0, 5, n)
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1]) + np.array([1.0, 0.0])
    angle = 2 * np.pi * arm / 5 + 0.25 * np.exp(feats[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    r, t = feats[:, 0], feats[:, 1]
    pts = np.stack([cos * r - sin * t, sin * r + cos * t], axis=1)
    return pts / 0.75


TOYS: dict[str, tuple[Callable[[int, np.random.Generator], np.ndarray], str]] = {
    "checkerboard": (checkerboard, "uniform on the dark cells of a 4x4 checkerboard"),
    "8gaussians": (eight_gaussians, "eight Gaussians on a circle"),
    "swissroll": (swiss_roll, "2-D Swiss roll"),
    "moons": (two_moons, "two interleaving moons"),
    "rings": (rings, "four concentric circles"),
    "pinwheel": (pinwheel, "five-armed pinwheel"),
}


# toys with class labels: (labelled sampler, number of classes); same stream as the plain one
LABELLED_TOYS = {"8gaussians": (labelled_eight_gaussians, 8)}


def toy_datasets() -> list[Dataset]:
    """One Dataset per 2-D toy (generated: test draws from its own seed stream)."""
    out = []
    for name, (fn, desc) in TOYS.items():
        labelled = LABELLED_TOYS.get(name)
        loader, labels = (generated_label_loaders(labelled[0], TOY_DEFAULT_N) if labelled
                          else (generated_loader(fn, TOY_DEFAULT_N), None))
        out.append(Dataset(name=name, kind="vector", shape=(2,), licence=TOY_LICENCE,
                           loader=loader, finite=False, description=desc,
                           num_classes=labelled[1] if labelled else 0, labels=labels))
    return out
