"""Discriminators built on a denoiser backbone's features (``net.features(x_in, c_noise)``, a
list of ``(batch, C)`` vectors or ``(batch, C, H, W)`` maps, as :class:`MLPDenoiserNet` and
:class:`UNet` provide):

- :class:`NoisyDiscriminator` ``D(x_s, s)``: the backbone at the sample's own noise level with
  EDM's input scalings, trainable, usually initialised from the teacher's backbone (UFOGen, Xu et
  al. 2023, Sec. 4.2);
- :class:`FrozenFeatureDiscriminator` ``D(x)``: a frozen backbone read at one fixed noise level,
  only the heads train (ADD, Sauer et al. 2023, Sec. 3.2, with the teacher's backbone in place of
  DINOv2).

Both sum the logits of one small head per feature tensor (:class:`FeatureHeads`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import as_batch_sigma
from .precond import edm_scalings
from .spec import buildable

__all__ = ["FeatureHeads", "FrozenFeatureDiscriminator", "NoisyDiscriminator", "backbone_of"]


def backbone_of(model: Any) -> nn.Module | None:
    """The backbone ``model.net`` of a preconditioned denoiser when it exposes ``features``
    (None otherwise, e.g. an analytic teacher)."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) and hasattr(net, "features") else None


@buildable
class FeatureHeads(nn.Module):
    """One head per feature tensor: ``Linear(C, hidden) - SiLU - Linear(hidden, 1)`` over the
    channels (at every position of a map), averaged over positions; the heads' logits are
    summed, ``(batch,)``."""

    def __init__(self, channels: Sequence[int], hidden: int = 64):
        super().__init__()
        if not channels:
            raise ValueError("FeatureHeads needs at least one feature tensor's channel count")
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(int(c), hidden), nn.SiLU(),
                                                 nn.Linear(hidden, 1)) for c in channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(self.heads)} heads, {len(features)} feature tensors")
        return sum(head(f.movedim(1, -1)).flatten(1).mean(1)
                   for head, f in zip(self.heads, features, strict=True))


def _check_backbone(net: nn.Module) -> None:
    if not hasattr(net, "features") or not hasattr(net, "feature_channels"):
        raise TypeError(f"a {type(net).__name__} has no features(); use a fewstep backbone "
                        "(MLPDenoiserNet, UNet)")


def _channels(net: nn.Module) -> list[int]:
    return list(net.feature_channels)  # type: ignore[arg-type]  # checked by _check_backbone


def _features(net: nn.Module, x: Tensor, c_noise: Tensor, **cond: Any) -> list[Tensor]:
    return net.features(x, c_noise, **cond)  # type: ignore[operator]  # a backbone method


@buildable
class NoisyDiscriminator(nn.Module):
    """``D(x_s, s) = heads(net.features(c_in(s) x_s, c_noise(s)))`` with EDM's ``c_in``,
    ``c_noise`` (Karras et al. 2022, Table 1): a time-conditional discriminator of noisy
    samples whose backbone trains with the heads (UFOGen's, initialised from the teacher's
    backbone). ``x_s``: ``(batch, ...)``, ``s``: scalar or ``(batch,)`` -> ``(batch,)`` logits."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, hidden: int = 64):
        super().__init__()
        _check_backbone(net)
        self.net, self.sigma_data = net, float(sigma_data)
        self.heads = FeatureHeads(_channels(net), hidden)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_batch_sigma(sigma, x).to(x.dtype)
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        c_in = c_in.reshape(-1, *[1] * (x.ndim - 1))
        return self.heads(_features(self.net, c_in * x, c_noise, **cond))


@buildable
class FrozenFeatureDiscriminator(nn.Module):
    """``D(x) = heads(F(x))`` with ``F`` a frozen backbone read at the fixed noise level
    ``feature_sigma`` (``F(x) = net.features(c_in x, c_noise)``, EDM scalings): only the heads
    train (ADD's discriminator, Sauer et al. 2023, Sec. 3.2). The backbone's parameters never
    require gradients (gradients still flow to ``x``). ``x``: ``(batch, ...)`` -> ``(batch,)``."""

    def __init__(self, net: nn.Module, feature_sigma: float = 0.5, sigma_data: float = 0.5,
                 hidden: int = 64):
        super().__init__()
        _check_backbone(net)
        if not (math.isfinite(feature_sigma) and feature_sigma > 0):
            raise ValueError(f"feature_sigma must be a positive number; got {feature_sigma}")
        self.net = net.requires_grad_(False)
        self.feature_sigma, self.sigma_data = float(feature_sigma), float(sigma_data)
        self.heads = FeatureHeads(_channels(net), hidden)

    def train(self, mode: bool = True) -> FrozenFeatureDiscriminator:
        super().train(mode)
        self.net.eval()  # frozen: no dropout, whatever the mode
        return self

    def forward(self, x: Tensor, **cond: Any) -> Tensor:
        sigma = torch.full((x.shape[0],), self.feature_sigma, dtype=x.dtype, device=x.device)
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        return self.heads(_features(self.net, c_in.reshape(-1, *[1] * (x.ndim - 1)) * x,
                                    c_noise, **cond))

