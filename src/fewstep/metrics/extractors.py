"""Feature extractors for image metrics that fewstep trains itself, with no downloads.

``digits_cnn`` is a small CNN classifier trained (seeded, full-batch, about a second on CPU)
on the train split of the built-in 8x8 digits (``fewstep.data``'s fixed split, so it never
sees a test image the bench scores against); its 64-d penultimate layer is the feature
space for Fréchet distance / KID on that set. Weights are cached with their SHA-256 in a
sidecar JSON and verified on every load (:func:`~fewstep.metrics.load_extractor_weights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_write
from ..data.images import digits_array
from ..data.registry import split_indices
from .features import file_sha256, load_extractor_weights

__all__ = ["DigitsCNN", "cache_dir", "digits_cnn", "train_digits_cnn", "training_indices"]

VERSION = "digits-cnn-v2"  # v2: trained on the data train split only (v1 saw 287 test images)


class DigitsCNN(nn.Module):
    """conv(1->8) -> conv(8->16, stride 2) -> 64-d features -> 10 logits."""

    name = VERSION
    dim = 64
    trained_on = ("the digits train split only (fewstep.data's fixed seeded 80/20 split of "
                  "scikit-learn's 1797 digits, labels supervised; no test image)")

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(16 * 4 * 4, self.dim), nn.SiLU(),
        )
        self.head = nn.Linear(self.dim, 10)

    def forward(self, images: Tensor) -> Tensor:
        """Features of ``(N, 1, 8, 8)`` images in [-1, 1]."""
        if images.shape[1:] != (1, 8, 8):
            raise ValueError(f"digits_cnn takes (N, 1, 8, 8) images; got {tuple(images.shape)}")
        return self.body(images)


def training_indices() -> np.ndarray:
    """Rows of scikit-learn's ``load_digits()`` the extractor trains on: the ``train`` split of
    :func:`fewstep.data.registry.split_indices`, exactly as ``fewstep.data`` splits digits."""
    return split_indices(digits_array())["train"]


def train_digits_cnn(seed: int = 0, steps: int = 150) -> DigitsCNN:
    """Train the extractor on the digits train split (:func:`training_indices`; full-batch
    Adam, seeded)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    train = torch.from_numpy(training_indices())
    x, y = torch.from_numpy(digits_array())[train], torch.tensor(load_digits().target)[train]
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.enable_grad():  # callers (the bench) may run under no_grad
        _fit(net, opt, x, y, steps)
    return net.eval()


def _fit(net: DigitsCNN, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int) -> None:
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net.head(net(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def cache_dir() -> Path:
    """``$FEWSTEP_CACHE`` or ``~/.cache/fewstep``."""
    return Path(os.environ.get("FEWSTEP_CACHE", Path.home() / ".cache" / "fewstep"))


def digits_cnn(directory: str | Path | None = None) -> DigitsCNN:
    """The cached digits extractor, trained and saved atomically on first use; the cached
    weights are checked against the SHA-256 recorded when they were written."""
    d = Path(directory) if directory is not None else cache_dir() / "extractors"
    weights, sidecar = d / f"{VERSION}.pt", d / f"{VERSION}.json"
    net = DigitsCNN()
    if weights.exists() and sidecar.exists():
        sha = json.loads(sidecar.read_text())["sha256"]
        net.load_state_dict(load_extractor_weights(weights, sha))
        return net.eval()
    net = train_digits_cnn()
    atomic_write(weights, lambda tmp: torch.save(net.state_dict(), tmp))
    record = json.dumps({"name": VERSION, "sha256": file_sha256(weights)})
    atomic_write(sidecar, lambda tmp: tmp.write_text(record))
    return net.eval()
