"""DPM-Solver family in sigma-space, stepping in ``lambda_ = -log(sigma)``.

With alpha = 1 the exponential integrators of Lu et al. need only sigma ratios:
``exp(-h) = sigma_next / sigma`` for ``h = lambda_next - lambda_``. The VP and sigma-space
forms are the same ODE under ``x = x_vp / alpha``, so these steps equal the VP ones exactly.
"""

from __future__ import annotations

import math
from collections.abc import Generator as Generator_
from collections.abc import Sequence

import torch
from torch import Tensor

from . import euler as _euler  # noqa: F401  (registers ddim before the alias)
from .common import (
    Callback,
    Generator,
    check_orders,
    emit,
    eps_of,
    lerp,
    lincomb,
    multistep_order,
    prepare,
    randn_like,
)
from .driver import Request, SolverFunction, Steps
from .registry import alias, register


def _h(sigma: float, sigma_next: float) -> float:
    """Step in lambda_ = -log sigma (inf when stepping to sigma = 0)."""
    return math.inf if sigma_next == 0 else math.log(sigma / sigma_next)


def dpm_solver_step(x: Tensor, s: float, t: float, order: int,
                    eps_s: Tensor) -> Generator_[Request, Tensor, tuple[Tensor, list[Tensor]]]:
    """One DPM-Solver-k step with noise prediction (Lu et al. 2022, Alg. 1 and 2; r1 = 1/3,
    r2 = 2/3 for k = 3, r1 = 1/2 for k = 2), a sub-generator of its k - 1 intermediate
    evaluations. Returns x_t and the intermediate eps values."""
    h = _h(s, t)
    if order == 1:
        return torch.add(x, eps_s, alpha=t - s), []
    r1 = 0.5 if order == 2 else 1 / 3
    s1 = s * math.exp(-r1 * h)
    u1 = torch.add(x, eps_s, alpha=s1 - s)
    eps_1 = eps_of(u1, (yield u1, s1), s1)
    if order == 2:
        c = (s - t) / (2 * r1)
        return lincomb((1.0, x), (c - (s - t), eps_s), (-c, eps_1)), [eps_1]
    r2 = 2 / 3
    s2 = s * math.exp(-r2 * h)
    c = s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)  # times D1 = eps_1 - eps_s
    u2 = lincomb((1.0, x), (c - (s - s2), eps_s), (-c, eps_1))
    eps_2 = eps_of(u2, (yield u2, s2), s2)
    c = ((s - t) / h - t) / r2  # sigma_t ((e^h - 1)/h - 1) / r2, times eps_2 - eps_s
    return lincomb((1.0, x), (c - (s - t), eps_s), (-c, eps_2)), [eps_1, eps_2]


def dpm_solver_steps(x: Tensor, sigmas: Tensor, *, order: int = 3,
                     orders: Sequence[int] | None = None, callback: Callback = None) -> Steps:
    """Singlestep DPM-Solver-1/2/3 with noise prediction (Lu et al. 2022, Alg. 1-2); the
    per-step ``orders`` follow DPM-Solver-fast (Sec. 3.4) when planned."""
    s = prepare(x, sigmas)
    orders = check_orders(orders, s, order)
    for i, k in enumerate(orders):
        denoised = yield x, s[i]
        x, _ = yield from dpm_solver_step(x, s[i], s[i + 1], k, eps_of(x, denoised, s[i]))
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


def dpmpp_2s_steps(x: Tensor, sigmas: Tensor, *, orders: Sequence[int] | None = None,
                   r: float = 0.5, callback: Callback = None) -> Steps:
    """DPM-Solver++(2S), singlestep data prediction (Lu et al. 2022b, Alg. 1)."""
    s = prepare(x, sigmas)
    orders = check_orders(orders, s, 2)
    for i, k in enumerate(orders):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = yield x, sigma
        if k == 1:
            x_next = lerp(denoised, x, sigma_next / sigma)
        else:
            s1 = sigma * (sigma_next / sigma) ** r  # lambda_s1 = lambda_s + r h
            u = lerp(denoised, x, s1 / sigma)
            d_mix = lerp(denoised, (yield u, s1), 1 / (2 * r))
            x_next = lerp(d_mix, x, sigma_next / sigma)
        x = x_next
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


def dpmpp_multistep_steps(x: Tensor, sigmas: Tensor, *, order: int = 2,
                          lower_order_final: bool = True, callback: Callback = None) -> Steps:
    """Multistep DPM-Solver++(2M/3M), data prediction (Lu et al. 2022b, Alg. 2 and App. B)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3; got {order}")
    s = prepare(x, sigmas)
    n = len(s) - 1
    hist: list[Tensor] = []  # previous denoised values, newest last
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = yield x, sigma
        hist = [*hist[-2:], denoised]
        # the step to sigma = 0 is the first-order denoise
        k = 1 if sigma_next == 0 else multistep_order(i, n, order, lower_order_final)
        # x' = (sigma'/sigma) x + (1 - sigma'/sigma) mix  (e^{-h} = sigma'/sigma)
        x = lerp(_dpmpp_mix(hist, s, i, k), x, sigma_next / sigma)
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


def _dpmpp_mix(hist: list[Tensor], s: list[float], i: int, k: int) -> Tensor:
    """The data estimate that multiplies ``(1 - e^{-h})`` in a k-th order DPM-Solver++ step."""
    m0 = hist[-1]
    if k == 1:
        return m0
    h = _h(s[i], s[i + 1])
    r0 = _h(s[i - 1], s[i]) / h
    if k == 2:  # m0 + D1_0 / 2 with D1_0 = (m0 - m1) / r0
        return lerp(hist[-2], m0, 1 + 0.5 / r0)
    r1 = _h(s[i - 2], s[i - 1]) / h
    em1 = math.expm1(-h)  # e^{-h} - 1
    c1 = (em1 / h + 1) / -em1
    c2 = ((em1 + h) / h**2 - 0.5) / -em1
    # m0 + c1 D1 - c2 D2 with D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
    # D1 = D1_0 + r0 (D1_0 - D1_1) / (r0 + r1), D2 = (D1_0 - D1_1) / (r0 + r1): the weights
    # of D1_0 and D1_1, then of m0, m1, m2
    w0 = c1 * (1 + r0 / (r0 + r1)) - c2 / (r0 + r1)
    w1 = -c1 * r0 / (r0 + r1) + c2 / (r0 + r1)
    return lincomb((1 + w0 / r0, m0), (-w0 / r0 + w1 / r1, hist[-2]), (-w1 / r1, hist[-3]))


def dpmpp_2m_sde_steps(x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                       generator: Generator = None, callback: Callback = None) -> Steps:
    """DPM-Solver++(2M) SDE, midpoint form (Lu et al. 2022b, App. B; diffusers
    ``sde-dpmsolver++``); eta = 0 recovers the ODE solver."""
    s = prepare(x, sigmas)
    prev: Tensor | None = None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
        else:
            h = _h(sigma, sigma_next)
            decay = -math.expm1(-h * (1 + eta))  # 1 - e^{-(1+eta) h}
            terms = [((sigma_next / sigma) * math.exp(-eta * h), x), (decay, denoised)]
            if prev is not None:  # + decay (denoised - prev) / (2 r)
                c = 0.5 * decay / (_h(s[i - 1], sigma) / h)
                terms = [terms[0], (decay + c, denoised), (-c, prev)]
            if eta > 0:
                terms.append((sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise,
                              randn_like(x, generator)))
            x = lincomb(*terms)
        prev = denoised
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


sample_dpm_solver = SolverFunction(dpm_solver_steps, "sample_dpm_solver")
sample_dpmpp_2s = SolverFunction(dpmpp_2s_steps, "sample_dpmpp_2s")
sample_dpmpp_multistep = SolverFunction(dpmpp_multistep_steps, "sample_dpmpp_multistep")
sample_dpmpp_2m_sde = SolverFunction(dpmpp_2m_sde_steps, "sample_dpmpp_2m_sde")

alias("dpm_solver_1", "ddim")  # Lu et al. 2022, Eq. 3.7: DPM-Solver-1 is DDIM
register("dpm_solver_2", sample_dpm_solver, order=2, kind="singlestep", knobs={"order": 2},
         reference="Lu et al. 2022, Alg. 1 (DPM-Solver-2)")
register("dpm_solver_3", sample_dpm_solver, order=3, kind="singlestep", knobs={"order": 3},
         reference="Lu et al. 2022, Alg. 2 (DPM-Solver-3)")
register("dpmpp_2s", sample_dpmpp_2s, order=2, kind="singlestep",
         reference="Lu et al. 2022b, Alg. 1 (DPM-Solver++(2S))")
register("dpmpp_2m", sample_dpmpp_multistep, order=2, history=2, knobs={"order": 2},
         reference="Lu et al. 2022b, Alg. 2 (DPM-Solver++(2M))")
register("dpmpp_3m", sample_dpmpp_multistep, order=3, history=3, knobs={"order": 3},
         reference="Lu et al. 2022b, App. B (DPM-Solver++(3M))")
register("dpmpp_2m_sde", sample_dpmpp_2m_sde, order=2, history=2, stochastic=True,
         reference="Lu et al. 2022b, App. B (SDE-DPM-Solver++(2M))")

__all__ = ["dpm_solver_step", "dpm_solver_steps", "dpmpp_2m_sde_steps", "dpmpp_2s_steps",
           "dpmpp_multistep_steps", "sample_dpm_solver", "sample_dpmpp_2m_sde",
           "sample_dpmpp_2s", "sample_dpmpp_multistep"]
