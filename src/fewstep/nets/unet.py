"""A compact UNet backbone ``F(x_in, c_noise, cond)`` for small images (8x8, 16x16, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import NoiseEmbedding
from .spec import buildable

__all__ = ["UNet"]


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added per channel in between (Ho et al. 2020)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Linear(emb_dim, c_out)
        self.conv2 = nn.Sequential(_norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                   nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        z = self.conv1(h) + self.emb(e)[:, :, None, None]
        return self.skip(h) + self.conv2(z)


class _Attention(nn.Module):
    """Single-head self-attention over pixels with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, 1, batch_first=True)

    def forward(self, h: Tensor) -> Tensor:
        b, c, hh, ww = h.shape
        z = self.norm(h).flatten(2).transpose(1, 2)
        z = self.attn(z, z, z, need_weights=False)[0]
        return h + z.transpose(1, 2).reshape(b, c, hh, ww)


@buildable
class UNet(nn.Module):
    """Compact UNet (Ronneberger et al. 2015; Ho et al. 2020 layout): ``num_res_blocks``
    residual blocks per level, a 2x down/up-sampling between the ``channel_mult`` levels, skip
    connections, and attention at the lowest resolution. Spatial size must be divisible by
    ``2 ** (len(channel_mult) - 1)``."""

    def __init__(self, in_channels: int = 1, channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 emb_dim: int = 128, cond_type: str = "none", num_classes: int = 0,
                 dropout: float = 0.0, w_embedding: bool = False):
        super().__init__()
        self.embed = NoiseEmbedding(emb_dim, cond_type, num_classes, w_embedding=w_embedding)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        self.down, skips, c = nn.ModuleList(), [channels], channels
        self.widths, self.level_ends = widths, []  # skips index of each level's last block
        for level, w in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(c, w, emb_dim, dropout))
                c = w
                skips.append(c)
            self.level_ends.append(len(skips) - 1)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([_ResBlock(c, c, emb_dim, dropout), _Attention(c),
                                  _ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), w, emb_dim, dropout))
                c = w
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        self.factor = 2 ** (len(widths) - 1)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the maps :meth:`features` returns."""
        return [*self.widths, self.widths[-1]]

    def _encode(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None,
                w: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """The down path and the middle: ``(h, skips, embedding)``."""
        if x_in.shape[-1] % self.factor or x_in.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x_in.shape[-2:])} is not divisible by "
                             f"{self.factor}")
        e = self.embed(c_noise, cond, w)
        h = self.conv_in(x_in)
        hs = [h]
        for layer in self.down:
            h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
        return h, hs, e

    def features(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                 w: Tensor | None = None) -> list[Tensor]:
        """The encoder's maps ``(batch, C, H', W')``: each level's last residual block, then the
        middle (for discriminators built on the backbone, e.g. UFOGen's and ADD's)."""
        h, hs, _ = self._encode(x_in, c_noise, cond, w)
        return [*(hs[i] for i in self.level_ends), h]

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                w: Tensor | None = None) -> Tensor:
        h, hs, e = self._encode(x_in, c_noise, cond, w)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), e) if isinstance(layer, _ResBlock) else layer(h)
        return self.out(h)
