"""Latent diffusion (Rombach et al. 2022): a diffusion model in the latent space of a small
autoencoder, its samples decoded to images.

The pieces, each small:

- :class:`LatentSpace` -- a trained :class:`~fewstep.nets.autoencoder.ConvAutoencoder` with the
  scale factor of its latents: ``encode(x) = scale * mean(x)`` (the posterior mean, so encoding
  is deterministic), ``decode(z) = dec(z / scale)``. ``scale`` is ``1 / std`` of the train
  split's latents (:func:`fit_scale`; Stable Diffusion's 0.18215 is the same idea), so a latent
  teacher is an ordinary EDM teacher with ``sigma_data = 1``;
- :func:`encode_data` -- a built-in data set's split encoded, labels kept: the training data of
  a latent teacher (or of a latent student: LCM);
- :func:`space` -- the :class:`LatentSpace` of a built zoo latent teacher (its autoencoder
  entry and recorded scale);
- :class:`NullLabel` -- a class-conditional denoiser sampled unconditionally (the null label of
  classifier-free guidance), as the bench samples a teacher.

A latent teacher's samples are scored in pixel (or feature) space: the bench's teacher
``zoo:NAME`` of a latent zoo entry carries ``decode`` and applies it before every distribution
metric (:class:`fewstep.bench.teachers.Teacher`). A method's NFE counts only the latent
denoiser's evaluations; one decoder pass per sample comes on top and is reported apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import data as datasets
from .data import NULL_LABEL
from .denoiser import Denoiser, as_batch_sigma
from .nets.autoencoder import ConvAutoencoder

__all__ = ["LatentSpace", "NullLabel", "encode_data", "fit_scale", "reconstruction_error",
           "space"]


class LatentSpace(nn.Module):
    """``encode(x) = scale * mean(x)``, ``decode(z) = dec(z / scale)`` of a trained
    autoencoder (frozen, eval mode). ``image_shape`` is one image's ``(C, H, W)``."""

    def __init__(self, autoencoder: ConvAutoencoder, scale: float,
                 image_shape: tuple[int, int, int]):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0; got {scale}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale, self.image_shape = float(scale), tuple(image_shape)
        self.shape = autoencoder.latent_shape(self.image_shape)  # one latent's shape

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """``(batch, C, H, W)`` images -> ``(batch, *self.shape)`` scaled posterior means."""
        return self.scale * self.autoencoder.encode(x)[0]

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """``(batch, *self.shape)`` scaled latents -> ``(batch, C, H, W)`` images, in z's
        dtype."""
        dtype = next(self.autoencoder.parameters()).dtype
        return self.autoencoder.decode((z / self.scale).to(dtype)).to(z.dtype)


@torch.no_grad()
def fit_scale(autoencoder: ConvAutoencoder, x: Tensor) -> float:
    """``1 / std`` of the posterior means of the images ``x`` (all latent entries pooled):
    the factor that gives the latents unit variance (Rombach et al. 2022, Sec. 4.3.2)."""
    return float(1 / autoencoder.eval().encode(x)[0].double().std())


def encode_data(latent: LatentSpace, name: str, split: str = "train", n: int | None = None,
                seed: int = 0) -> dict[str, Tensor]:
    """The split of built-in data set ``name`` encoded: ``{"x": latents}``, plus ``"cond"``
    (the class labels, row-aligned) for a labelled set -- a training batch for a latent
    (class-conditional) teacher. Encoded in chunks of 1024 rows."""
    ds = datasets.get(name)
    batch = ds.load_labelled(split, n, seed) if ds.num_classes else {"x": ds.load(split, n, seed)}
    batch["x"] = torch.cat([latent.encode(c) for c in batch["x"].split(1024)])
    return batch


@torch.no_grad()
def reconstruction_error(autoencoder: ConvAutoencoder, x: Tensor) -> Tensor:
    """Per-image root-mean-square error of the deterministic round trip ``dec(mean(x))``:
    ``(batch, C, H, W)`` -> ``(batch,)``, in the images' units."""
    return (autoencoder.eval()(x) - x).flatten(1).pow(2).mean(1).sqrt()


class NullLabel(nn.Module):
    """``D(x, sigma, cond=-1)``: a class-conditional denoiser (trained with label dropout)
    sampled unconditionally; a ``cond`` given by the caller is passed through."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        if "cond" not in cond:
            cond["cond"] = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long,
                                      device=x.device)
        return self.denoiser(x, as_batch_sigma(sigma, x), **cond)


def space(entry: str, root: Any = None) -> LatentSpace:
    """The :class:`LatentSpace` of the zoo entry ``entry``: a latent teacher (its recorded
    autoencoder and scale) or an autoencoder (scale fitted on its data's train split).
    ValueError for an entry that is neither."""
    from . import zoo

    e = zoo.entry(entry, root)
    if e.recipe.role == "autoencoder":
        ae = _autoencoder(zoo.load(entry, root))
        x = datasets.get(e.recipe.data).load("train")
        return LatentSpace(ae, fit_scale(ae, x), _image_shape(tuple(x.shape[1:])))
    if e.latent is None:
        raise ValueError(f"zoo entry {entry!r} is neither a latent teacher nor an autoencoder")
    ae = _autoencoder(zoo.load(e.latent["autoencoder"], root))
    return LatentSpace(ae, e.latent["scale"], _image_shape(datasets.get(e.recipe.data).shape))


def _autoencoder(model: nn.Module) -> ConvAutoencoder:
    if not isinstance(model, ConvAutoencoder):
        raise ValueError(f"expected a ConvAutoencoder; the zoo entry holds {type(model).__name__}")
    return model


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"a latent space needs (C, H, W) images; got shape {shape}")
    return (shape[0], shape[1], shape[2])
