"""A small convolutional (variational) autoencoder for latent diffusion on small images."""

from __future__ import annotations

from torch import Tensor, nn

from .spec import buildable

__all__ = ["ConvAutoencoder", "kl_normal"]

LOGVAR_RANGE = (-30.0, 20.0)  # as the LDM autoencoder's DiagonalGaussianDistribution


def kl_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per sample, summed over the latent dimensions:
    ``0.5 sum(mean^2 + exp(logvar) - 1 - logvar)`` (Kingma & Welling 2014, App. B).
    ``(batch, ...)`` -> ``(batch,)``."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in "
                         "shape")
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU())


@buildable
class ConvAutoencoder(nn.Module):
    """Encoder ``x -> (mean, logvar)`` of a diagonal Gaussian posterior over a
    ``(latent_channels, H / 2^levels, W / 2^levels)`` latent, and a decoder ``z -> x``
    (Kingma & Welling 2014; the LDM autoencoder of Rombach et al. 2022 in miniature: strided
    3x3 convolutions down, nearest upsampling and 3x3 convolutions up, SiLU). ``forward(x)`` is
    the deterministic round trip ``decode(mean)``."""

    def __init__(self, in_channels: int = 1, latent_channels: int = 2, channels: int = 32,
                 levels: int = 1):
        super().__init__()
        if levels < 1 or latent_channels < 1 or channels < 1:
            raise ValueError(f"levels, latent_channels and channels must be >= 1; got {levels}, "
                             f"{latent_channels}, {channels}")
        self.in_channels, self.latent_channels, self.levels = in_channels, latent_channels, levels
        self.encoder = nn.Sequential(_block(in_channels, channels),
                                     *(_block(channels, channels, 2) for _ in range(levels)),
                                     _block(channels, channels),
                                     nn.Conv2d(channels, 2 * latent_channels, 3, padding=1))
        up = [nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _block(channels, channels))
              for _ in range(levels)]
        self.decoder = nn.Sequential(_block(latent_channels, channels), _block(channels, channels),
                                     *up, nn.Conv2d(channels, in_channels, 3, padding=1))

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The latent shape of one ``(C, H, W)`` image; ValueError if H or W is not divisible
        by ``2 ** levels`` or C is not ``in_channels``."""
        c, h, w = shape
        f = 2**self.levels
        if c != self.in_channels or h % f or w % f:
            raise ValueError(f"image shape {tuple(shape)}: need {self.in_channels} channels and "
                             f"a size divisible by {f}")
        return self.latent_channels, h // f, w // f

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, C, H, W)`` images -> posterior ``(mean, logvar)``, each
        ``(batch, latent_channels, H / 2^levels, W / 2^levels)``."""
        self.latent_shape(tuple(x.shape[1:]))
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """``(batch, latent_channels, h, w)`` latents -> ``(batch, C, h 2^levels, w 2^levels)``
        images."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (batch, {self.latent_channels}, h, w); got "
                             f"{tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])
