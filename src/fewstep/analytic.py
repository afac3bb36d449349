"""Exact denoisers: ground truth without training.

For data ``p(x0)`` noised as ``x = x0 + sigma eps`` the optimal denoiser is the posterior
mean ``D(x, sigma) = E[x0 | x]`` and the score is ``(D - x) / sigma^2`` (Tweedie; Karras
et al. 2022, Eq. 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .denoiser import append_dims, as_batch_sigma

__all__ = ["EmpiricalDenoiser", "GaussianMixture", "working_dtype"]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype exact denoisers compute in: float32 or better (fp16 overflows ``sigma^2``
    above sigma = 256 and both half formats lose the softmax's digits)."""
    return torch.promote_types(dtype, torch.float32)


def _working(x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """``x`` and the ``(batch,)`` sigma in :func:`working_dtype`."""
    xw = x.to(working_dtype(x.dtype))
    return xw, as_batch_sigma(sigma, xw)


class GaussianMixture(nn.Module):
    """Mixture of Gaussians with isotropic ``(K,)`` or diagonal ``(K, d)`` variances.

    The noised marginal at sigma is the mixture with variances ``var + sigma^2``, so the
    denoiser, score, log-density and samples are closed-form at every sigma. Inputs in float16
    or bfloat16 are computed in float32 and returned in their own dtype.
    """

    means: Tensor
    variances: Tensor
    log_weights: Tensor

    def __init__(self, means: Tensor, variances: Tensor | float, weights: Tensor | None = None):
        super().__init__()
        means = torch.as_tensor(means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got {tuple(means.shape)}")
        K, d = means.shape
        var = torch.as_tensor(variances, dtype=means.dtype)
        if var.ndim == 0:
            var = var.expand(K)
        if var.ndim == 1:
            var = var[:, None].expand(K, d)
        if var.shape != (K, d) or not (var > 0).all():
            raise ValueError(f"variances must be positive with shape (), (K,) or (K, d); "
                             f"got {tuple(torch.as_tensor(variances).shape)}")
        w = torch.full((K,), 1.0 / K, dtype=means.dtype) if weights is None else torch.as_tensor(
            weights, dtype=means.dtype)
        if w.shape != (K,) or not (w > 0).all():
            raise ValueError(f"weights must be positive with shape ({K},)")
        self.register_buffer("means", means.clone())
        self.register_buffer("variances", var.clone().contiguous())
        self.register_buffer("log_weights", (w / w.sum()).log())

    @classmethod
    def random(cls, dim: int, components: int, *, spread: float = 3.0, std: float = 0.3,
               seed: int = 0, dtype: torch.dtype = torch.float64) -> GaussianMixture:
        """A reproducible random mixture: means ~ N(0, spread^2), diagonal stds around ``std``."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(components, dim, generator=g, dtype=dtype)
        stds = std * torch.exp(0.3 * torch.randn(components, dim, generator=g, dtype=dtype))
        weights = torch.rand(components, generator=g, dtype=dtype) + 0.5
        return cls(means, stds**2, weights)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, {self.dim})")
        return x

    def _posterior(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Log responsibilities (B, K) and total variances (B, K, d) of the noised marginal."""
        mu, var = self.means.to(x), self.variances.to(x)
        tot = var[None] + sigma[:, None, None] ** 2
        diff = x[:, None, :] - mu[None]
        log_n = -0.5 * ((diff**2 / tot) + tot.log() + math.log(2 * math.pi)).sum(-1)
        log_joint = self.log_weights.to(x)[None] + log_n
        return log_joint, tot

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact posterior mean ``E[x0 | x]`` (the optimal denoiser), in x's dtype."""
        xw, sigma = _working(self._check(x), sigma)
        log_joint, tot = self._posterior(xw, sigma)
        r = torch.softmax(log_joint, dim=1)
        mu, var = self.means.to(xw), self.variances.to(xw)
        comp = mu[None] + var[None] / tot * (xw[:, None, :] - mu[None])
        return (r[..., None] * comp).sum(1).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Log-density of the noised marginal at ``sigma`` (0 gives the data density)."""
        xw, sigma = _working(self._check(x), sigma)
        log_joint, _ = self._posterior(xw, sigma)
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie)."""
        xw, s = _working(x, sigma)
        return ((self(xw, s) - xw) / append_dims(s, x.ndim) ** 2).to(x.dtype)

    def sample(self, n: int, sigma: float = 0.0, *, generator: torch.Generator | None = None,
               return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples of the noised marginal at ``sigma``."""
        mu, var = self.means, self.variances
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=mu.dtype, device=mu.device)
        x = mu[k] + (var[k] + sigma**2) ** 0.5 * z
        return (x, k) if return_labels else x

    def flow(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Closed-form PF-ODE map for a single Gaussian:
        ``x(s) = mu + (x - mu) sqrt(var + s^2) / sqrt(var + s_from^2)``."""
        if self.means.shape[0] != 1:
            raise ValueError("the closed-form flow exists for a single Gaussian (K=1) only")
        xw = x.to(working_dtype(x.dtype))
        mu, var = self.means.to(xw), self.variances.to(xw)
        return (mu + (xw - mu) * ((var + sigma_to**2) / (var + sigma_from**2)).sqrt()).to(x.dtype)


class EmpiricalDenoiser(nn.Module):
    """Optimal denoiser of a finite data set: a softmax-weighted average of the points,
    ``D(x, sigma) = sum_i softmax_i(-|x - y_i|^2 / 2 sigma^2) y_i`` (Karras et al. 2022, Eq. 57),
    streamed over chunks of the data so memory stays ``O(batch * chunk)``; computed in float32
    or better and returned in x's dtype."""

    data: Tensor

    def __init__(self, data: Tensor, chunk_size: int = 2048):
        super().__init__()
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (N, ...) with N >= 1; got {tuple(data.shape)}")
        self.register_buffer("data", data.reshape(data.shape[0], -1).clone())
        self.sample_shape = tuple(data.shape[1:])
        self.chunk_size = int(chunk_size)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, "
                             f"{', '.join(map(str, self.sample_shape))})")
        xw, sigma = _working(x, sigma)
        xf = xw.reshape(x.shape[0], -1)
        inv = 1.0 / (2 * sigma[:, None] ** 2)
        m = torch.full((x.shape[0], 1), -math.inf, dtype=xw.dtype, device=x.device)
        den = torch.zeros_like(m)
        num = torch.zeros_like(xf)
        for y in self.data.to(xw).split(self.chunk_size):
            logits = -torch.cdist(xf, y).pow(2) * inv
            m_new = torch.maximum(m, logits.max(1, keepdim=True).values)
            scale = torch.exp(m - m_new)
            p = torch.exp(logits - m_new)
            den = den * scale + p.sum(1, keepdim=True)
            num = num * scale + p @ y
            m = m_new
        return (num / den).reshape(x.shape).to(x.dtype)
