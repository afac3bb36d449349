"""Preconditioned denoisers ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import append_dims, as_batch_sigma
from .spec import buildable

__all__ = ["ConsistencyPrecond", "EDMPrecond", "FlowPrecond", "consistency_scalings",
           "edm_scalings", "flow_scalings"]


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 (EDM column)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(sigma: Tensor, sigma_min: float = 0.002,
                         sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """Consistency boundary scalings (Song et al. 2023, App. C), 1 and 0 at sigma_min:
    ``c_skip = sd^2 / ((s - smin)^2 + sd^2)``, ``c_out = (s - smin) sd / sqrt(s^2 + sd^2)``."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def flow_scalings(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of a rectified-flow velocity network ``F(x_t, c_noise)``
    as a sigma-space denoiser: with ``t = sigma / (1 + sigma)`` and ``x_t = x / (1 + sigma)``
    (the interpolant ``x_t = (1 - t) x0 + t z``), ``D = x_t - t F`` (Liu et al. 2022, Eq. 1),
    so ``c_skip = c_in = 1 / (1 + sigma)``, ``c_out = -t``; ``c_noise = ln(sigma) / 4`` as EDM's,
    so any backbone (and its teacher's weights) fits."""
    c_in = 1 / (1 + sigma)
    return c_in, -sigma * c_in, c_in, sigma.log() / 4


class _Precond(nn.Module):
    """Shared forward: scale, call ``net`` in its own dtype, recombine in x's dtype."""

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        """``(batch, ...)`` x and a scalar or ``(batch,)`` sigma -> ``D(x, sigma)`` in x's dtype.
        The scalings are computed in at least float32 (sigma^2 overflows float16 above 255)."""
        sigma = as_batch_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(
            sigma.to(torch.promote_types(sigma.dtype, torch.float32)))
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        dtype = next(self.net.parameters()).dtype
        F = self.net((c_in * x).to(dtype), c_noise.to(dtype), **cond)
        return (c_skip * x + c_out * F.to(c_out.dtype)).to(x.dtype)


@buildable
class EDMPrecond(_Precond):
    """EDM denoiser ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022,
    Eq. 7 and Table 1)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__(net, sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return edm_scalings(sigma, self.sigma_data)


@buildable
class ConsistencyPrecond(_Precond):
    """Consistency function ``f(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the
    boundary condition ``f(x, sigma_min) = x`` (Song et al. 2023, Eq. 5 and App. C); c_in and
    c_noise as in EDM."""

    def __init__(self, net: nn.Module, sigma_min: float = 0.002, sigma_data: float = 0.5):
        super().__init__(net, sigma_data)
        self.sigma_min = float(sigma_min)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c_skip, c_out = consistency_scalings(sigma, self.sigma_min, self.sigma_data)
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        return c_skip, c_out, c_in, c_noise


@buildable
class FlowPrecond(_Precond):
    """Rectified-flow velocity field ``v(x_t, t) = F(x_t, c_noise)`` exposed as a sigma-space
    denoiser ``D(x, sigma) = x_t - t F`` (:func:`flow_scalings`), so every solver samples it; an
    Euler (DDIM) step of ``D`` is exactly an Euler step of ``dx_t/dt = v`` in ``t``.
    ``sigma_data`` is unused by the scalings and kept for the common interface."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__(net, sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return flow_scalings(sigma)
