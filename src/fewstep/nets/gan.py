"""Networks of the diffusion-GAN hybrids: a latent-conditioned generator in sigma-space and
time-conditional discriminators for vectors (MLP) and images (a small conv net).

All three take the noise level as ``c_noise = ln(sigma) / 4`` (EDM's), so they share
:class:`~fewstep.nets.mlp.NoiseEmbedding` with the denoiser backbones, and see samples at VP
scale ``x / sqrt(1 + sigma^2)`` (unit variance for unit-variance data), never the sigma-space
sample itself, whose scale grows with sigma.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import append_dims, as_batch_sigma
from .mlp import NoiseEmbedding, _Block
from .spec import buildable
from .unet import _norm, _ResBlock

__all__ = ["ConvDiscriminator", "LatentPrecond", "MLPDiscriminator", "vp_scale"]


def vp_scale(sigma: Tensor) -> Tensor:
    """``alpha = 1 / sqrt(1 + sigma^2)``: a sigma-space sample times alpha is the VP sample
    ``alpha x0 + sqrt(1 - alpha^2) eps`` (Karras et al. 2022, Eq. 4-6 with s = alpha)."""
    return (1 + sigma**2).rsqrt()


@buildable
class LatentPrecond(nn.Module):
    """A generator ``G(x_t, z, t) -> x0_hat`` with the sigma-space denoiser's call signature:
    ``G(x, sigma, z=z)`` runs ``net(cat([alpha x, z]), ln(sigma) / 4)`` and keeps the first
    ``channels`` output channels (DDGAN's x0-predicting generator, Xiao et al. 2022, Sec. 3.2;
    the latent ``z`` has x's shape and ``net`` maps ``channels + z channels`` to as many).

    ``z`` is required: the generator is a conditional *sampler* of ``p(x0 | x_t)``, so each call
    needs fresh latent noise (a deterministic denoiser would be its ``z = 0`` slice)."""

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels}")
        self.net, self.channels = net, int(channels)

    def forward(self, x: Tensor, sigma: Tensor | float, z: Tensor | None = None,
                **cond: Any) -> Tensor:
        """``(batch, channels, ...)`` x, ``()`` or ``(batch,)`` sigma, z of x's shape ->
        ``x0_hat`` of x's shape. Raises ValueError without ``z``."""
        if z is None:
            raise ValueError("a diffusion-GAN generator needs its latent noise: call "
                             "G(x, sigma, z=torch.randn_like(x))")
        if z.shape != x.shape:
            raise ValueError(f"z has shape {tuple(z.shape)}; expected x's {tuple(x.shape)}")
        sigma = as_batch_sigma(sigma, x).to(torch.promote_types(x.dtype, torch.float32))
        alpha = append_dims(vp_scale(sigma), x.ndim)
        dtype = next(self.net.parameters()).dtype
        out = self.net(torch.cat([alpha * x, z], 1).to(dtype), (sigma.log() / 4).to(dtype),
                       **cond)
        return out[:, :self.channels].to(x.dtype)


@buildable
class MLPDiscriminator(nn.Module):
    """Time-conditional discriminator ``D(x, c_noise, y=None) -> logits (batch,)`` for vectors
    of dimension ``dim``: a residual MLP (the denoiser MLP's blocks) on ``cat([x, y])``, where
    ``y`` (dimension ``cond_dim``, 0 for none) is the conditioning sample: DDGAN's ``x_t``
    beside ``x_{t-1}``; SIDDM's and UFOGen's marginal discriminators take none."""

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 128, depth: int = 2,
                 emb_dim: int = 64):
        super().__init__()
        self.cond_dim = int(cond_dim)
        self.embed = NoiseEmbedding(emb_dim)
        self.inp = nn.Linear(dim + cond_dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(_join(x, y, self.cond_dim))
        e = self.embed(c_noise)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h).squeeze(1)


@buildable
class ConvDiscriminator(nn.Module):
    """Time-conditional discriminator ``D(x, c_noise, y=None) -> logits (batch,)`` for images:
    residual conv blocks (the UNet's, with the noise embedding added per channel) at halving
    resolutions, global average pooling and a linear head; ``y`` (``cond_channels``, 0 for
    none) is concatenated to ``x`` along channels."""

    def __init__(self, channels: int = 1, cond_channels: int = 0, width: int = 32,
                 levels: int = 2, emb_dim: int = 64):
        super().__init__()
        self.cond_dim = int(cond_channels)
        self.embed = NoiseEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(channels + cond_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(_ResBlock(width * 2**i, width * 2 ** (i + 1), emb_dim, 0.0)
                                    for i in range(levels))
        self.down = nn.AvgPool2d(2, ceil_mode=True)
        c = width * 2**levels
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Flatten(2))
        self.head = nn.Linear(c, 1)

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.conv_in(_join(x, y, self.cond_dim))
        e = self.embed(c_noise)
        for block in self.blocks:
            h = self.down(block(h, e))
        return self.head(self.out(h).mean(2)).squeeze(1)


def _join(x: Tensor, y: Tensor | None, cond_dim: int) -> Tensor:
    """``cat([x, y])`` along dim 1, checking that y is given exactly when the net takes one."""
    if (y is None) != (cond_dim == 0):
        raise ValueError("this discriminator takes a conditioning sample y" if cond_dim else
                         "this discriminator is marginal: it takes no conditioning sample y")
    return x if y is None else torch.cat([x, y], 1)
