"""Training a teacher: the EDM denoising loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..data.registry import NULL_LABEL
from ..denoiser import append_dims
from .base import Batch, LossContext, MethodBase, edm_weight, register_method, split_batch

__all__ = ["EDMLoss", "lognormal_sigma"]


def lognormal_sigma(x0: Tensor, ctx: LossContext, P_mean: float, P_std: float) -> Tensor:
    """EDM's training noise levels ``ln sigma ~ N(P_mean, P_std^2)`` (Karras et al. 2022,
    Sec. 5), one per row of ``x0``, shape ``(batch,)``, from the loop's generator."""
    n = ctx.randn_like(x0[:, :1].flatten(1)[:, 0])
    return (P_mean + P_std * n).exp()


@register_method
@dataclass(frozen=True)
class EDMLoss(MethodBase):
    """Denoising score matching with ``ln sigma ~ N(P_mean, P_std^2)`` and weight
    ``(sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, Eq. 2 and Table 1).

    ``label_dropout`` p > 0 trains a class-conditional teacher for classifier-free guidance:
    each row's label (batch key ``cond``) becomes the null label -1 with probability p (Ho &
    Salimans 2022, Alg. 1), so one network gives both ``D(x, sigma, cond=c)`` and
    ``D(x, sigma, cond=-1)``. Raises ValueError for p outside [0, 1) and, at the first
    step, for a batch without labels."""

    name: ClassVar[str] = "edm"
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1); got {self.label_dropout}")

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        if self.label_dropout > 0:
            if "cond" not in cond:
                raise ValueError("label_dropout needs class labels in the batch (key 'cond', "
                                 "e.g. Dataset.load_labelled)")
            drop = ctx.rand(len(x0), like=x0) < self.label_dropout
            cond = {**cond, "cond": cond["cond"].masked_fill(drop.to(cond["cond"].device),
                                                             NULL_LABEL)}
        sigma = lognormal_sigma(x0, ctx, self.P_mean, self.P_std)
        x = x0 + append_dims(sigma, x0.ndim) * ctx.randn_like(x0)
        err = (student(x, sigma, **cond) - x0).flatten(1).pow(2).mean(1)
        return (edm_weight(sigma, self.sigma_data) * err).mean()
