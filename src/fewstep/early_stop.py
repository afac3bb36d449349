"""Early-stopped diffusion (ES-DDPM, Lyu et al. 2022): a cheap prior generator makes a sample,
which is noised to level ``sigma_s``; the diffusion teacher denoises it from ``sigma_s`` only.

In sigma-space the forward process to ``t_s`` is ``x_s = x_prior + sigma_s * eps`` (Lyu et al.
2022, Eq. 5 with ``sigma = s / alpha``), and the reverse process is any registered solver on the
sigmas of a schedule from ``sigma_s`` down to 0. ``sigma_s = 0`` returns the prior sample
(no denoiser evaluation); ``sigma_s = sigma_max`` with a prior that returns zeros is the
ordinary sampler on the same noise.

Priors are objects with ``sample(n, generator) -> (n, *shape)`` and ``evaluations``, the
network passes one sample costs (the denoiser NFE does not include it):

- :class:`GaussianPrior`: a Gaussian fit (mean and full covariance) of data; 0 network passes;
- :class:`DecodedPrior`: a prior in a latent space, decoded (the VAE prior of the paper: a
  decoder on Gaussian latents); 1 decoder pass;
- :class:`OneStepPrior`: a one-step generator ``x0 = G(sigma_max z, sigma_max)`` (the paper's
  GAN prior: any one-step student, UFOGen or a KD / rectified-flow / DFNO student); 1 pass.

The bench runs ES-DDPM as a method row ``early_stop:SOLVER:PRIOR@sigma_s=S``
(:mod:`fewstep.bench.early_stopped`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from . import solvers
from .denoiser import Denoiser

__all__ = ["DecodedPrior", "GaussianPrior", "OneStepPrior", "Prior", "sample_early_stopped"]


class Prior(Protocol):
    """A generator of starting samples: ``sample(n, generator) -> (n, *shape)``."""

    evaluations: int  # network passes per sample (a decoder: 1; a closed form: 0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True)
class GaussianPrior:
    """``N(mean, L L^T)`` over one sample's shape; :meth:`fit` takes a data set's mean and
    covariance (regularised by ``eps * I``)."""

    mean: Tensor  # one sample's shape
    chol: Tensor  # (d, d) lower-triangular, d = mean.numel()
    evaluations: int = 0

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-4) -> GaussianPrior:
        """The Gaussian with the sample mean and covariance of ``x`` ``(n, ...)``; ValueError
        for fewer than two samples."""
        if len(x) < 2:
            raise ValueError(f"fitting a Gaussian needs at least 2 samples; got {len(x)}")
        flat = x.double().flatten(1)
        cov = torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1])
        chol = torch.linalg.cholesky(cov + eps * torch.eye(len(cov), dtype=cov.dtype))
        return cls(flat.mean(0).reshape(x.shape[1:]), chol)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples (float64)."""
        z = torch.randn(n, len(self.chol), generator=generator, dtype=self.chol.dtype)
        return self.mean + (z @ self.chol.T).reshape(n, *self.mean.shape)


@dataclass(frozen=True)
class DecodedPrior:
    """``decode(z)`` with ``z`` from ``latent`` (e.g. a :class:`GaussianPrior` of the encoded
    data, or ``N(0, I)``): a VAE decoder as the prior generator (Lyu et al. 2022, Sec. 4)."""

    latent: Any  # a Prior over latents
    decode: Callable[[Tensor], Tensor]
    evaluations: int = 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.decode(self.latent.sample(n, generator).float()).double()


@dataclass(frozen=True)
class OneStepPrior:
    """``x0 = G(sigma_max z, sigma_max)`` with ``z ~ N(0, I)`` of shape ``shape``: a one-step
    generator as the prior (Lyu et al. 2022 use a GAN; any one-step student is one, e.g.
    UFOGen, Xu et al. 2023, or a KD student, Luhman & Luhman 2021). ``G`` is a denoiser-like
    ``G(x, sigma) -> x0``; ``sigma_max`` the level it was trained to start from."""

    G: Callable[..., Tensor]
    shape: tuple[int, ...]
    sigma_max: float
    evaluations: int = 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples (float64)."""
        z = torch.randn(n, *self.shape, generator=generator)
        sigma = torch.full((n,), float(self.sigma_max))
        with torch.no_grad():
            return self.G(self.sigma_max * z, sigma).double()


def sample_early_stopped(denoiser: Denoiser, x_prior: Tensor, noise: Tensor, sigma_s: float,
                         solver: str = "heun", nfe: int = 10, *, schedule: str = "karras",
                         sigma_min: float = 0.002, sigma_max: float = 80.0,
                         generator: Any = None,
                         cond: dict[str, Any] | None = None) -> Tensor:
    """ES-DDPM: ``x_s = x_prior + sigma_s * noise`` denoised by ``solver`` with ``nfe``
    evaluations on ``schedule`` from ``sigma_s`` to 0 (Lyu et al. 2022, Alg. 2). ``x_prior`` and
    ``noise`` have one shape ``(batch, ...)``; ``sigma_s = 0`` returns ``x_prior`` unchanged
    (no evaluation). ``generator`` feeds a stochastic solver. Raises ValueError for a negative
    ``sigma_s``, for ``0 < sigma_s <= sigma_min``, for ``sigma_s`` above the denoiser's
    ``sigma_max`` (it was never trained there), or for mismatched shapes."""
    if x_prior.shape != noise.shape:
        raise ValueError(f"x_prior {tuple(x_prior.shape)} and noise {tuple(noise.shape)} differ "
                         "in shape")
    if not sigma_s >= 0 or 0 < sigma_s <= sigma_min:
        raise ValueError(f"sigma_s must be 0 (the prior alone) or above sigma_min={sigma_min}; "
                         f"got {sigma_s}")
    if sigma_s > sigma_max:
        raise ValueError(f"sigma_s={sigma_s:g} is above the denoiser's sigma_max={sigma_max:g}")
    if sigma_s == 0:
        return x_prior
    p = solvers.plan(solver, nfe, schedule, sigma_min=sigma_min, sigma_max=sigma_s)
    knobs = dict(p.knobs)
    if solvers.get(solver).stochastic:
        knobs["generator"] = generator
    return solvers.get(solver)(denoiser, x_prior + sigma_s * noise, p.sigmas, cond=cond, **knobs)
