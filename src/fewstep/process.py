"""Noise processes and their maps onto the sigma-space ("VE"/EDM) form.

Every process writes a noised sample as ``x_t = alpha(t) * x0 + std(t) * eps``.
Dividing by ``alpha`` gives the sigma-space sample ``x = x0 + sigma * eps`` with
``sigma = std / alpha`` (Karras et al. 2022, Eq. 4-6), and ``lambda_ = -log(sigma)``
is the half-log-SNR used by DPM-Solver and UniPC (Lu et al. 2022, Sec. 3.1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "EDM",
    "VE",
    "NoiseProcess",
    "RectifiedFlow",
    "VPContinuous",
    "VPDiscrete",
    "ddpm_betas",
]


def _as_tensor(value: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(value, dtype=dtype, device=device)


class NoiseProcess(ABC):
    """A forward process ``x_t = alpha(t) x0 + std(t) eps`` on ``t in [t_min, t_max]``."""

    t_min: float
    t_max: float

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t)."""

    @abstractmethod
    def std(self, t: Tensor) -> Tensor:
        """Noise standard deviation of the process itself."""

    @abstractmethod
    def t(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`: the time at which sigma-space noise is ``sigma``."""

    def sigma(self, t: Tensor | float) -> Tensor:
        """Sigma-space noise level ``std(t) / alpha(t)``."""
        t = _as_tensor(t)
        return self.std(t) / self.alpha(t)

    def lambda_(self, t: Tensor | float) -> Tensor:
        """Half-log-SNR ``log(alpha/std) = -log(sigma)`` (Lu et al. 2022, Eq. 3.4)."""
        return -torch.log(self.sigma(t))

    def t_of_lambda(self, lambda_: Tensor) -> Tensor:
        """Inverse of :meth:`lambda_`."""
        return self.t(torch.exp(-lambda_))

    def alpha_of_sigma(self, sigma: Tensor) -> Tensor:
        """Signal scale at the time whose sigma-space noise is ``sigma``."""
        return self.alpha(self.t(sigma))

    def to_sigma_space(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Map a process sample ``x_t`` to ``x = x_t / alpha(t)``."""
        return x_t / _bcast(self.alpha(_as_tensor(t, x_t)), x_t)

    def from_sigma_space(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Map a sigma-space sample back to the process: ``x_t = alpha * x``."""
        return x * _bcast(self.alpha_of_sigma(_as_tensor(sigma, x)), x)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def d_alpha_dt(self, t: Tensor) -> Tensor:
        """Time derivative of alpha (by autograd unless a subclass knows it)."""
        return _grad(self.alpha, t)

    def d_std_dt(self, t: Tensor) -> Tensor:
        """Time derivative of std (by autograd unless a subclass knows it)."""
        return _grad(self.std, t)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def _grad(fn, t: Tensor) -> Tensor:
    with torch.enable_grad():
        t_ = t.detach().clone().requires_grad_(True)
        out = fn(t_)
        if not out.requires_grad:  # constant in t (e.g. alpha = 1)
            return torch.zeros_like(t)
        (g,) = torch.autograd.grad(out.sum(), t_)
    return g


def ddpm_betas(kind: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               s: float = 0.008) -> Tensor:
    """DDPM beta schedules: "linear" (Ho et al. 2020), "scaled_linear" (LDM), "cosine"
    (Nichol & Dhariwal 2021, Eq. 17, betas clipped at 0.999)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if kind in ("cosine", "squaredcos_cap_v2", "squaredcos"):
        def f(u: Tensor) -> Tensor:
            return torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        i = torch.arange(T, dtype=torch.float64)
        return torch.clamp(1 - f(i + 1) / f(i), max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; expected linear, scaled_linear or cosine")


class VPDiscrete(NoiseProcess):
    """Discrete-time VP (DDPM): ``alpha_bar_t = prod(1 - beta)``, t in {0..T-1}; fractional t
    interpolates log-sigma linearly (as k-diffusion's DiscreteSchedule)."""

    def __init__(self, betas: Tensor | str = "linear", T: int = 1000, **beta_kwargs: float):
        if isinstance(betas, str):
            betas = ddpm_betas(betas, T, **beta_kwargs)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.t_min, self.t_max = 0.0, float(len(betas) - 1)

    def _log_sigma(self, t: Tensor) -> Tensor:
        t = t.to(torch.float64).clamp(self.t_min, self.t_max)
        lo = t.floor().long().clamp(max=len(self.betas) - 2)
        w = t - lo
        ls = self.log_sigmas.to(t.device)
        return (1 - w) * ls[lo] + w * ls[lo + 1]

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return self._log_sigma(t).exp().to(t.dtype if t.is_floating_point() else torch.float64)

    def alpha(self, t: Tensor) -> Tensor:
        return (1 + self.sigma(t) ** 2).rsqrt()

    def std(self, t: Tensor) -> Tensor:
        s = self.sigma(t)
        return s * (1 + s**2).rsqrt()

    def t(self, sigma: Tensor) -> Tensor:
        sigma = _as_tensor(sigma)
        ls = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).log()
        hi = torch.searchsorted(ls, log_sigma.contiguous()).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return (lo + w).to(sigma.dtype)


class VPContinuous(NoiseProcess):
    """Continuous VP SDE: "linear" beta(t) (Song et al. 2021, Eq. 33) or "cosine"
    alpha(t) (Nichol & Dhariwal 2021), t in [t_min, 1]."""

    def __init__(self, kind: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 s: float = 0.008, t_min: float = 1e-3):
        if kind not in ("linear", "cosine"):
            raise ValueError(f"unknown VP kind {kind!r}; expected 'linear' or 'cosine'")
        self.kind, self.beta_min, self.beta_max, self.s = kind, beta_min, beta_max, s
        self.t_min, self.t_max = t_min, 1.0 if kind == "linear" else 0.9946

    def _log_alpha(self, t: Tensor) -> Tensor:
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.s
        return torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2)) - math.log(
            math.cos(s / (1 + s) * math.pi / 2))

    def alpha(self, t: Tensor) -> Tensor:
        return self._log_alpha(_as_tensor(t)).exp()

    def std(self, t: Tensor) -> Tensor:
        return (-torch.expm1(2 * self._log_alpha(_as_tensor(t)))).sqrt()

    def t(self, sigma: Tensor) -> Tensor:
        sigma = _as_tensor(sigma)
        log_alpha = -0.5 * torch.log1p(sigma**2)
        if self.kind == "linear":
            a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
            return (-b + torch.sqrt(b**2 - 4 * a * log_alpha)) / (2 * a)
        s = self.s
        c = log_alpha + math.log(math.cos(s / (1 + s) * math.pi / 2))
        return torch.arccos(c.exp()) * 2 * (1 + s) / math.pi - s


class VE(NoiseProcess):
    """Variance exploding SDE: ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``, alpha = 1
    (Song et al. 2021, Eq. 31)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self._smin, self._smax = sigma_min, sigma_max
        self.t_min, self.t_max = 0.0, 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def std(self, t: Tensor) -> Tensor:
        return self._smin * (self._smax / self._smin) ** _as_tensor(t)

    def t(self, sigma: Tensor) -> Tensor:
        return torch.log(_as_tensor(sigma) / self._smin) / math.log(self._smax / self._smin)


class EDM(NoiseProcess):
    """EDM: ``t = sigma``, alpha = 1 (Karras et al. 2022, Table 1)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min, self.t_max = sigma_min, sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def std(self, t: Tensor) -> Tensor:
        return _as_tensor(t)

    def t(self, sigma: Tensor) -> Tensor:
        return _as_tensor(sigma)


class RectifiedFlow(NoiseProcess):
    """Linear interpolant ``x_t = (1-t) x0 + t eps``: sigma = t/(1-t) (Liu et al. 2023)."""

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999):
        self.t_min, self.t_max = t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - _as_tensor(t)

    def std(self, t: Tensor) -> Tensor:
        return _as_tensor(t)

    def t(self, sigma: Tensor) -> Tensor:
        sigma = _as_tensor(sigma)
        return sigma / (1 + sigma)

    def d_alpha_dt(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_std_dt(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)
