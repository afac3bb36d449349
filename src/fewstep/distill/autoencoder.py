"""Training the autoencoder of latent diffusion: reconstruction plus a KL term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..nets.autoencoder import kl_normal
from .base import Batch, LossContext, MethodBase, register_method, split_batch

__all__ = ["AutoencoderLoss"]


@register_method
@dataclass(frozen=True)
class AutoencoderLoss(MethodBase):
    """The (beta-)VAE objective of a :class:`~fewstep.nets.autoencoder.ConvAutoencoder`
    (Kingma & Welling 2014, Eq. 10; the KL-regularised autoencoder of latent diffusion,
    Rombach et al. 2022, Sec. 3):

        loss = mean_i [ ||x_i - dec(z_i)||^2 + kl_weight * KL(q(z | x_i) || N(0, I)) ]

    with ``z_i = mean_i + exp(logvar_i / 2) * eps`` (the reparameterisation trick, ``eps``
    from the loop's generator), both terms summed over each sample's dimensions. A small
    ``kl_weight`` (default 1e-3) keeps the posterior close to deterministic, so the latent
    carries the image, while bounding the latent's scale and smoothing it for a diffusion model
    (the latent teacher rescales it to unit std anyway); ``kl_weight = 0`` with
    ``sample=False`` is a plain deterministic autoencoder. Class labels in a dict batch are
    ignored."""

    name: ClassVar[str] = "autoencoder"
    network: ClassVar[str | None] = "autoencoder"
    kl_weight: float = 1e-3
    sample: bool = True  # decode a posterior sample (VAE) or the posterior mean (AE)

    def __post_init__(self) -> None:
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0; got {self.kl_weight}")

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x, _ = split_batch(batch)
        ae: Any = getattr(student, "module", student)  # a ConvAutoencoder (encode / decode)
        mean, logvar = ae.encode(x)
        z = mean + (logvar / 2).exp() * ctx.randn_like(mean) if self.sample else mean
        recon = (ae.decode(z) - x).flatten(1).pow(2).sum(1)
        return (recon + self.kl_weight * kl_normal(mean, logvar)).mean()
