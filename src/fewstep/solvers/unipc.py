"""UniPC: unified predictor (UniP) and corrector (UniC), data prediction, B(h) variants bh1
and bh2 (Zhao et al. 2023, Alg. 2-3 and App. C). The corrector reuses the evaluation at the
new point, so every step costs one network evaluation."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .common import Callback, emit, lincomb, multistep_order, prepare
from .driver import SolverFunction, Steps
from .registry import register

VARIANTS = ("bh1", "bh2")


def _lam(sigma: float) -> float:
    return -math.log(sigma)


def _unipc_rhs(rks: list[float], h: float, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The Vandermonde system ``R rho = b`` and ``B(h)`` of Zhao et al. 2023, Eq. 9-10,
    in data-prediction form (``hh = -h``)."""
    hh = -h
    B_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    R, b = [], []
    for k in range(1, len(rks) + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(R), np.array(b), B_h


@functools.lru_cache(maxsize=4096)
def _unipc_rhos(rks: tuple[float, ...], h: float, variant: str,
                corrector: bool) -> tuple[tuple[float, ...], float]:
    """(rho, B(h)): the predictor's ``rho_p`` (the first ``len(rks) - 1`` equations) or the
    corrector's ``rho_c`` (all of them); cached, since a schedule's steps repeat."""
    R, b, B_h = _unipc_rhs(list(rks), h, variant)
    k = len(rks)
    if not corrector:
        rhos = [0.5] if k == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    else:
        rhos = [0.5] if k == 1 else np.linalg.solve(R, b)
    return tuple(float(r) for r in rhos), B_h


def _unipc_update(x_s: Tensor, hist: list[tuple[float, Tensor]], sigma_t: float, order: int,
                  variant: str, model_t: Tensor | None = None) -> Tensor:
    """UniP (``model_t`` None) or UniC step from the newest history point to ``sigma_t``:
    ``x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) m0 - B(h) sum_i rho_i D_i`` with
    ``D_i = (m_i - m0) / r_i`` (and ``D = model_t - m0`` for the corrector), gathered into
    one linear combination of x_s and the model outputs."""
    sigma_s, m0 = hist[-1]
    if sigma_t == 0:  # the final step to sigma = 0 is the first-order denoise
        return m0
    h = _lam(sigma_t) - _lam(sigma_s)
    older = list(reversed(hist[-order:-1]))
    rks = (*((_lam(sigma_i) - _lam(sigma_s)) / h for sigma_i, _ in older), 1.0)
    terms = [(sigma_t / sigma_s, x_s)]
    c_m0 = -math.expm1(-h)
    if model_t is not None or older:
        rhos, B_h = _unipc_rhos(rks, h, variant, model_t is not None)
        for rho, rk, (_, m_i) in zip(rhos, rks, older, strict=False):
            terms.append((-B_h * rho / rk, m_i))
            c_m0 += B_h * rho / rk
        if model_t is not None:
            terms.append((-B_h * rhos[-1], model_t))
            c_m0 += B_h * rhos[-1]
    return lincomb(*terms, (c_m0, m0))


def unipc_steps(x: Tensor, sigmas: Tensor, *, order: int = 3, variant: str = "bh2",
                corrector: bool = True, lower_order_final: bool = True,
                disable_corrector: Sequence[int] = (), callback: Callback = None) -> Steps:
    """UniPC-p multistep sampler (Zhao et al. 2023, Alg. 2/3): UniP-p predictor and, with
    ``corrector``, the UniC corrector (never at the final step, which has no evaluation)."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3; got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; expected one of {VARIANTS}")
    s = prepare(x, sigmas)
    n = len(s) - 1
    hist: list[tuple[float, Tensor]] = []
    x_prev, k_prev = None, 1
    for i in range(n):
        denoised = yield x, s[i]
        if corrector and x_prev is not None and (i - 1) not in disable_corrector:
            x = _unipc_update(x_prev, hist, s[i], k_prev, variant, model_t=denoised)
        hist = [*hist[-(order - 1):], (s[i], denoised)] if order > 1 else [(s[i], denoised)]
        k = multistep_order(i, n, order, lower_order_final)
        x_prev, k_prev = x, k
        x = _unipc_update(x, hist, s[i + 1], k, variant)
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


sample_unipc = SolverFunction(unipc_steps, "sample_unipc")

# UniPC-p combines p evaluations; the corrector raises the order to p + 1 (Zhao et al. 2023,
# Thm. 3.1; measured 3.9 for UniPC-3 on the Gaussian), the predictor alone is order p.
register("unipc_bh1", sample_unipc, order=4, history=3, knobs={"order": 3, "variant": "bh1"},
         reference="Zhao et al. 2023, UniPC-3 with B(h) = h")
register("unipc_bh2", sample_unipc, order=4, history=3, knobs={"order": 3, "variant": "bh2"},
         reference="Zhao et al. 2023, UniPC-3 with B(h) = e^h - 1")
register("unipc_2", sample_unipc, order=3, history=2, knobs={"order": 2, "variant": "bh2"},
         reference="Zhao et al. 2023, UniPC-2 bh2 (diffusers' default)")
register("unip_bh2", sample_unipc, order=3, history=3,
         knobs={"order": 3, "variant": "bh2", "corrector": False},
         reference="Zhao et al. 2023, UniP-3 predictor only")

__all__ = ["sample_unipc", "unipc_steps"]
