"""Adaptive-step solvers: DPM-Solver-12/23 with an error controller, a Dormand-Prince RK45
sampler, and the tight-tolerance reference PF-ODE solution used as ground truth.

``sigmas`` gives the range: ``[sigma_max, sigma_min]`` or ``[sigma_max, sigma_min, 0]``; a
trailing 0 adds one final denoising evaluation ``x0 = D(x, sigma_min)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Model, prepare
from .dpm import _dpm_solver_step, _eps
from .registry import register


def _range(s: list[float]) -> tuple[float, float, bool]:
    if len(s) > 3 or (len(s) == 3 and s[-1] != 0) or s[-1 if len(s) == 2 else -2] == 0:
        raise ValueError(f"adaptive solvers take sigmas=[sigma_max, sigma_min] or "
                         f"[sigma_max, sigma_min, 0] with sigma_min > 0; got {s}")
    return s[0], s[1], len(s) == 3


def _error_norm(x_hi: Tensor, x_lo: Tensor, x_prev: Tensor, atol: float, rtol: float) -> float:
    """Largest per-sample RMS of the scaled difference (Lu et al. 2022, Alg. 4, line 8)."""
    delta = torch.maximum(torch.full_like(x_lo, atol), rtol * torch.maximum(x_lo.abs(),
                                                                             x_prev.abs()))
    e = ((x_hi - x_lo) / delta).flatten(1).pow(2).mean(1).sqrt()
    return float(e.max())


def sample_dpm_solver_adaptive(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, order: int = 3,
                               rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                               theta: float = 0.9, info: dict[str, Any] | None = None,
                               **cond) -> Tensor:
    """Adaptive DPM-Solver-12 / 23 (Lu et al. 2022, Alg. 4-5): a lower- and a higher-order step
    sharing evaluations give the local error estimate that sets the next step in lambda."""
    if order not in (2, 3):
        raise ValueError(f"adaptive DPM-Solver order must be 2 or 3; got {order}")
    D, s = prepare(denoiser, x, sigmas, cond)
    sigma_max, sigma_min, denoise = _range(s)
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    h, nfe, steps, rejected = h_init, 0, 0, 0
    eps_s = None
    while lam_end - lam > 1e-9:
        sigma, sigma_next = math.exp(-lam), math.exp(-(lam + h))
        if eps_s is None:
            eps_s, nfe = _eps(x, D(x, sigma), sigma), nfe + 1
        x_lo, x_hi, used = _embedded_pair(D, x, sigma, sigma_next, order, eps_s)
        nfe += used
        err = _error_norm(x_hi, x_lo, x, atol, rtol)
        if err <= 1.0:
            x, lam, eps_s, steps = x_hi, lam + h, None, steps + 1
        else:
            rejected += 1
        h = min(theta * h * max(err, 1e-10) ** (-1.0 / order), lam_end - lam)
    if denoise:
        x, nfe = D(x, sigma_min), nfe + 1
    if info is not None:
        info.update(nfe=nfe, steps=steps, rejected=rejected)
    return x


def _embedded_pair(D: Model, x: Tensor, s: float, t: float, order: int,
                   eps_s: Tensor) -> tuple[Tensor, Tensor, int]:
    """(lower, higher, evaluations): DPM-Solver-1 & -2 (order 2) or -2 & -3 (order 3, r1=1/3)."""
    if order == 2:
        x_hi, _ = _dpm_solver_step(D, x, s, t, 2, eps_s)
        return x - (s - t) * eps_s, x_hi, 1
    x_hi, (eps_1, _) = _dpm_solver_step(D, x, s, t, 3, eps_s)
    x_lo = x - (s - t) * eps_s - (s - t) * 1.5 * (eps_1 - eps_s)  # DPM-Solver-2, r1 = 1/3
    return x_lo, x_hi, 2


def sample_rk45(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, rtol: float = 1e-3,
                atol: float = 1e-3, method: str = "dopri5", info: dict[str, Any] | None = None,
                **cond) -> Tensor:
    """Adaptive Dormand-Prince RK45 (torchdiffeq) on ``dx/dlog(sigma) = x - D(x, sigma)``
    (Song et al. 2021b, Sec. 4.3 PF-ODE with a black-box solver)."""
    from torchdiffeq import odeint

    D, s = prepare(denoiser, x, sigmas, cond)
    sigma_max, sigma_min, denoise = _range(s)
    nfe = 0

    def f(u: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return y - D(y, math.exp(float(u.detach())))

    u = torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=torch.float64,
                     device=x.device)
    x = odeint(f, x, u.to(x.dtype) if x.dtype == torch.float64 else u.float(), rtol=rtol,
               atol=atol, method=method)[-1]
    if denoise:
        x, nfe = D(x, sigma_min), nfe + 1
    if info is not None:
        info.update(nfe=nfe)
    return x


def reference_solution(denoiser: Denoiser, x: Tensor, sigma_max: float, *,
                       sigma_min: float = 1e-5, rtol: float = 1e-8, atol: float = 1e-8,
                       dtype: torch.dtype | None = torch.float64, **cond) -> Tensor:
    """The PF-ODE endpoint from ``x`` at ``sigma_max``, by RK45 at tight tolerances (in
    float64 by default) from ``sigma_max`` to ``sigma_min``, then ``D(x, sigma_min)``."""
    x_in = x if dtype is None else x.to(dtype)
    with torch.no_grad():  # ground truth needs no graph (and a large model would keep one)
        out = sample_rk45(denoiser, x_in, torch.tensor([sigma_max, sigma_min, 0.0]),
                          rtol=rtol, atol=atol, **cond)
    return out.to(x.dtype)


register("dpm_solver_adaptive", sample_dpm_solver_adaptive, order=3, kind="adaptive",
         knobs={"order": 3}, reference="Lu et al. 2022, Alg. 5 (DPM-Solver-23, adaptive)")
register("rk45", sample_rk45, order=5, kind="adaptive",
         reference="Dormand & Prince 1980 via torchdiffeq (Song et al. 2021b)")

__all__ = ["reference_solution", "sample_dpm_solver_adaptive", "sample_rk45"]
