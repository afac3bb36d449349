"""Training a teacher: the EDM denoising loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..denoiser import append_dims
from .base import Batch, LossContext, MethodBase, edm_weight, register_method, split_batch

__all__ = ["EDMLoss"]


@register_method
@dataclass(frozen=True)
class EDMLoss(MethodBase):
    """Denoising score matching with ``ln sigma ~ N(P_mean, P_std^2)`` and weight
    ``(sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, Eq. 2 and Table 1)."""

    name: ClassVar[str] = "edm"
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        n = ctx.randn_like(x0[:, :1].flatten(1)[:, 0])
        sigma = (self.P_mean + self.P_std * n).exp()
        x = x0 + append_dims(sigma, x0.ndim) * ctx.randn_like(x0)
        err = (student(x, sigma, **cond) - x0).flatten(1).pow(2).mean(1)
        return (edm_weight(sigma, self.sigma_data) * err).mean()
