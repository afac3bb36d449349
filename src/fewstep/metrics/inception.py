"""Field-standard FID / KID: Inception-v3 pool3 features through torch-fidelity, from a weights
file the user already has (nothing is downloaded).

Conventions (as torch-fidelity's ``inception-v3-compat``, i.e. the TF FID Inception):
images in [-1, 1] are quantised to uint8 with ``round((x + 1) * 127.5)``, grey images are
repeated to three channels, and torch-fidelity resizes to 299x299 with its TF1-compatible
bilinear interpolation; features are the 2048-d pool3 activations. Fréchet statistics are
computed in float64 by :func:`fewstep.metrics.frechet_distance_from_features`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .features import ChecksumError, file_sha256

__all__ = ["CONVENTIONS", "TRAINED_ON", "InceptionExtractor", "quantize_uint8"]

CONVENTIONS = ("Inception-v3 pool3 (2048-d, torch-fidelity 'inception-v3-compat'); images in "
               "[-1, 1] quantised to uint8 as round((x+1)*127.5), grey repeated to RGB, resized "
               "to 299x299 by torch-fidelity's TF1-compatible bilinear interpolation")
TRAINED_ON = ("ImageNet-1k (ILSVRC-2012 train split, Szegedy et al. 2016 / the TF FID weights), "
              "independent of every fewstep data set")


def quantize_uint8(images: Tensor) -> Tensor:
    """``(N, C, H, W)`` in [-1, 1] -> uint8 RGB, as FID tools expect."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images; got {tuple(images.shape)}")
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionExtractor:
    """The FID Inception network loaded from ``weights_path`` (e.g. torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``), optionally hash-checked."""

    name = "inception-v3-compat"
    dim = 2048
    trained_on = TRAINED_ON

    def __init__(self, weights_path: str | Path, sha256: str | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}: FID/KID in Inception space need the "
                "local weights file of torch-fidelity's inception-v3-compat (fewstep never "
                "downloads it); without it the bench reports FID/KID as not computed")
        if sha256 is not None and file_sha256(path) != sha256.lower():
            raise ChecksumError(f"SHA-256 mismatch for Inception weights {path}: expected "
                                f"{sha256.lower()}, got {file_sha256(path)}")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            if isinstance(e, ModuleNotFoundError) and e.name == "torch_fidelity":
                raise ImportError("Inception FID needs torch-fidelity: pip install "
                                  "torch-fidelity") from e
            raise ImportError("torch-fidelity is installed but failed to import (Inception FID "
                              f"needs it): {type(e).__name__}: {e}") from e
        self.net = FeatureExtractorInceptionV3(self.name, ["2048"],
                                               feature_extractor_weights_path=str(path))
        self.net = self.net.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    def __call__(self, images: Tensor) -> Tensor:
        """2048-d features (float64) of ``(N, C, H, W)`` images in [-1, 1]."""
        x = quantize_uint8(images)
        out = []
        with torch.no_grad():
            for chunk in x.split(self.batch_size):
                (feats,) = self.net(chunk.to(self.device))
                out.append(feats.double().cpu())
        return torch.cat(out)
