"""Adaptive-step solvers: DPM-Solver-12/23 with an error controller, a Dormand-Prince RK45
sampler, and the tight-tolerance reference PF-ODE solution used as ground truth.

``sigmas`` gives the range: ``[sigma_max, sigma_min]`` or ``[sigma_max, sigma_min, 0]``; a
trailing 0 adds one final denoising evaluation ``x0 = D(x, sigma_min)``.
"""

from __future__ import annotations

import math
from collections.abc import Generator as Generator_
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, emit, eps_of, prepare
from .dpm import dpm_solver_step
from .driver import Request, SolverFunction, Steps
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


def dpm_solver_adaptive_steps(x: Tensor, sigmas: Tensor, *, order: int = 3, rtol: float = 0.05,
                              atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9,
                              info: dict[str, Any] | None = None,
                              callback: Callback = None) -> Steps:
    """Adaptive DPM-Solver-12 / 23 (Lu et al. 2022, Alg. 4-5): a lower- and a higher-order step
    sharing evaluations give the local error estimate that sets the next step in lambda."""
    if order not in (2, 3):
        raise ValueError(f"adaptive DPM-Solver order must be 2 or 3; got {order}")
    s = prepare(x, sigmas)
    sigma_max, sigma_min, denoise = _range(s)
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    h, nfe, steps, rejected = h_init, 0, 0, 0
    eps_s = denoised = None
    while lam_end - lam > 1e-9:
        sigma, sigma_next = math.exp(-lam), math.exp(-(lam + h))
        if eps_s is None:
            denoised = yield x, sigma
            eps_s, nfe = eps_of(x, denoised, sigma), nfe + 1
        x_lo, x_hi = yield from _embedded_pair(x, sigma, sigma_next, order, eps_s)
        nfe += order - 1
        err = _error_norm(x_hi, x_lo, x, atol, rtol)
        if err <= 1.0:
            x, lam, eps_s, steps = x_hi, lam + h, None, steps + 1
            assert denoised is not None  # set with eps_s at the step's first evaluation
            emit(callback, steps - 1, x, sigma, sigma_next, denoised)
        else:
            rejected += 1
        h = min(theta * h * max(err, 1e-10) ** (-1.0 / order), lam_end - lam)
    x, nfe = (yield from _denoise(x, sigma_min, steps, denoise, callback)), nfe + denoise
    if info is not None:
        info.update(nfe=nfe, steps=steps, rejected=rejected)
    return x


def _denoise(x: Tensor, sigma_min: float, i: int, denoise: bool,
             callback: Callback) -> Generator_[Request, Tensor, Tensor]:
    """The optional final evaluation ``x0 = D(x, sigma_min)`` of an adaptive run."""
    if not denoise:
        return x
    x0 = yield x, sigma_min
    emit(callback, i, x0, sigma_min, 0.0, x0)
    return x0


def _embedded_pair(x: Tensor, s: float, t: float, order: int,
                   eps_s: Tensor) -> Generator_[Request, Tensor, tuple[Tensor, Tensor]]:
    """(lower, higher): DPM-Solver-1 & -2 (order 2) or -2 & -3 (order 3, r1 = 1/3), sharing
    their ``order - 1`` intermediate evaluations."""
    if order == 2:
        x_hi, _ = yield from dpm_solver_step(x, s, t, 2, eps_s)
        return x - (s - t) * eps_s, x_hi
    x_hi, (eps_1, _) = yield from dpm_solver_step(x, s, t, 3, eps_s)
    x_lo = x - (s - t) * eps_s - (s - t) * 1.5 * (eps_1 - eps_s)  # DPM-Solver-2, r1 = 1/3
    return x_lo, x_hi


# Dormand & Prince (1980) RK5(4)7M: nodes c, stages a, 5th-order weights b (= the last stage,
# "first same as last") and the error weights e = b - b* against the embedded 4th order.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = ((),
         (1 / 5,),
         (3 / 40, 9 / 40),
         (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _rms(v: Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


def _velocity(y: Tensor, lam: float) -> Generator_[Request, Tensor, Tensor]:
    """``dx/dlambda = D(x, sigma) - x`` at ``sigma = e^-lambda`` (the PF-ODE in lambda)."""
    return (yield y, math.exp(-lam)) - y


def rk45_steps(x: Tensor, sigmas: Tensor, *, rtol: float = 1e-3, atol: float = 1e-3,
               info: dict[str, Any] | None = None, callback: Callback = None) -> Steps:
    """Adaptive Dormand-Prince RK5(4) on the PF-ODE in ``lambda = -log sigma``,
    ``dx/dlambda = D(x, sigma) - x`` (Song et al. 2021b, Sec. 4.3, with a black-box RK45).
    Step control as torchdiffeq's ``dopri5`` (Hairer et al. 1993, Sec. II.4: RMS error norm
    over all elements, safety 0.9, growth in [0.2, 10], their initial-step choice); the last
    step is shortened to end exactly at sigma_min."""
    s = prepare(x, sigmas)
    sigma_max, sigma_min, denoise = _range(s)
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    k1 = yield from _velocity(x, lam)
    # initial step (Hairer et al. 1993, Sec. II.4, "starting step size")
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    k_probe = yield from _velocity(x + h0 * k1, lam + h0)
    d2 = _rms((k_probe - k1) / scale) / h0
    h1 = (max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15
          else (0.01 / max(d1, d2)) ** (1 / 5))
    h, nfe, steps, rejected = min(100 * h0, h1), 2, 0, 0
    while lam < lam_end:
        last = h >= lam_end - lam
        h = lam_end - lam if last else h
        k = [k1]
        for c_i, a_i in zip(_DP_C[1:], _DP_A[1:], strict=True):
            y_i = x + h * sum(a * k_j for a, k_j in zip(a_i, k, strict=False) if a)
            k.append((yield from _velocity(y_i, lam + c_i * h)))
        nfe += 6
        x_new = y_i  # the last stage's input is the 5th-order solution
        err = h * sum(e * k_j for e, k_j in zip(_DP_E, k, strict=True) if e)
        ratio = _rms(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if ratio <= 1:
            emit(callback, steps, x_new, math.exp(-lam), math.exp(-(lam + h)), x + k1)
            x, k1, steps = x_new, k[-1], steps + 1
            lam = lam_end if last else lam + h
        else:
            rejected += 1
        h *= 10.0 if ratio == 0 else min(10.0, max(0.9 * ratio ** -0.2, 1.0 if ratio < 1 else 0.2))
    x, nfe = (yield from _denoise(x, sigma_min, steps, denoise, callback)), nfe + denoise
    if info is not None:
        info.update(nfe=nfe, steps=steps, rejected=rejected)
    return x


def reference_solution(denoiser: Denoiser, x: Tensor, sigma_max: float, *,
                       sigma_min: float = 1e-5, rtol: float = 1e-8, atol: float = 1e-8,
                       dtype: torch.dtype | None = torch.float64,
                       cond: Mapping[str, Any] | None = None) -> Tensor:
    """The PF-ODE endpoint from ``x`` at ``sigma_max``, by RK45 at tight tolerances (in
    float64 by default) from ``sigma_max`` to ``sigma_min``, then ``D(x, sigma_min)``."""
    x_in = x if dtype is None else x.to(dtype)
    with torch.no_grad():  # ground truth needs no graph (and a large model would keep one)
        out = sample_rk45(denoiser, x_in, [sigma_max, sigma_min, 0.0],
                          rtol=rtol, atol=atol, cond=cond)
    return out.to(x.dtype)


sample_dpm_solver_adaptive = SolverFunction(dpm_solver_adaptive_steps,
                                            "sample_dpm_solver_adaptive")
sample_rk45 = SolverFunction(rk45_steps, "sample_rk45")

register("dpm_solver_adaptive", sample_dpm_solver_adaptive, order=3, kind="adaptive",
         knobs={"order": 3}, reference="Lu et al. 2022, Alg. 5 (DPM-Solver-23, adaptive)")
register("rk45", sample_rk45, order=5, kind="adaptive",
         reference="Dormand & Prince 1980 (Song et al. 2021b)")

__all__ = ["dpm_solver_adaptive_steps", "reference_solution", "rk45_steps",
           "sample_dpm_solver_adaptive", "sample_rk45"]
