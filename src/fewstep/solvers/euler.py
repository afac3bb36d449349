"""First-order steps (Euler = DDIM, ancestral DDIM/DDPM) and EDM's Heun sampler.

In sigma-space the PF-ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022,
Eq. 4 with s = 1), so an Euler step is exactly a deterministic DDIM step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .common import Callback, Generator, check_orders, emit, lerp, prepare, randn_like
from .driver import SolverFunction, Steps
from .registry import alias, register


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """DDIM's eta noise in sigma-space: ``sigma_up = eta * sqrt(s'^2 (s^2 - s'^2) / s^2)``,
    ``sigma_down = sqrt(s'^2 - sigma_up^2)`` (Song et al. 2021a, Eq. 16, divided by alpha)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def ddim_steps(x: Tensor, sigmas: Tensor, *, eta: float = 0.0, generator: Generator = None,
               callback: Callback = None) -> Steps:
    """DDIM with noise level eta (Song et al. 2021a, Eq. 12): eta = 0 is the Euler step of the
    PF-ODE, eta = 1 is DDPM ancestral sampling (Ho et al. 2020, Alg. 2)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    s = prepare(x, sigmas)
    for i in range(len(s) - 1):
        denoised = yield x, s[i]
        down, up = ancestral_split(s[i], s[i + 1], eta)
        x = lerp(denoised, x, down / s[i])  # denoised + (down / sigma) (x - denoised)
        if up > 0:
            x = torch.add(x, randn_like(x, generator), alpha=up)
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


def heun_steps(x: Tensor, sigmas: Tensor, *, orders: Sequence[int] | None = None,
               S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf,
               S_noise: float = 1.0, generator: Generator = None,
               callback: Callback = None) -> Steps:
    """EDM's 2nd-order Heun sampler with optional churn (Karras et al. 2022, Alg. 2); steps of
    order 1 (``orders``) and the step to sigma = 0 are Euler steps."""
    s = prepare(x, sigmas)
    orders = check_orders(orders, s, 2)
    n = len(s) - 1
    for i in range(n):
        sigma = s[i]
        # Churn: raise the noise level to sigma_hat by adding fresh noise (Alg. 2, lines 4-6).
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            x = torch.add(x, randn_like(x, generator),
                          alpha=math.sqrt(sigma_hat**2 - sigma**2) * S_noise)
            sigma = sigma_hat
        denoised = yield x, sigma
        sigma_next = s[i + 1]
        # Euler step x + (sigma' - sigma) d with d = (x - D) / sigma (line 8)
        x_next = lerp(denoised, x, sigma_next / sigma)
        if orders[i] == 2:  # second-order correction (lines 9-11)
            # x + (sigma' - sigma) (d + d') / 2 with d' = (x_next - D') / sigma' is
            # x / 2 + (1/2 - g) x_next + g D' for g = (sigma - sigma') / (2 sigma'): two lerps
            g = (sigma - sigma_next) / (2 * sigma_next)
            x_next = lerp(x, lerp(x_next, (yield x_next, sigma_next), 2 * g), 0.5)
        x = x_next
        emit(callback, i, x, sigma, s[i + 1], denoised)
    return x


sample_ddim = SolverFunction(ddim_steps, "sample_ddim")
sample_heun = SolverFunction(heun_steps, "sample_heun")

register("ddim", sample_ddim, order=1, knobs={"eta": 0.0},
         reference="Song et al. 2021a, Eq. 12 (eta=0: Euler on the PF-ODE)")
alias("euler", "ddim")
register("ddim_eta", sample_ddim, order=1, stochastic=True, knobs={"eta": 0.5},
         reference="Song et al. 2021a, Eq. 12 with eta = 0.5")
register("ddpm", sample_ddim, order=1, stochastic=True, knobs={"eta": 1.0},
         reference="Ho et al. 2020, Alg. 2 (= DDIM eta=1)")
alias("euler_ancestral", "ddpm")
register("heun", sample_heun, order=2, kind="singlestep",
         reference="Karras et al. 2022, Alg. 1 (deterministic)")
register("heun_churn", sample_heun, order=2, kind="singlestep", stochastic=True,
         knobs={"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003},
         reference="Karras et al. 2022, Alg. 2 (stochastic, ImageNet settings)")

__all__ = ["ancestral_split", "ddim_steps", "heun_steps", "sample_ddim", "sample_heun"]
