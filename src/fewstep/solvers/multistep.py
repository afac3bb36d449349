"""Linear multistep solvers on the sigma-space ODE ``dx/dsigma = eps(x, sigma)``:
iPNDM (fixed Adams-Bashforth weights) and DEIS tAB / rhoAB (Lagrange extrapolation of eps in
a chosen time variable, integrated exactly over the step)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..process import VPContinuous
from .common import Callback, emit, eps_of, lincomb, multistep_order, prepare
from .driver import SolverFunction, Steps
from .registry import register

# Adams-Bashforth weights for orders 1-4, newest evaluation first (PNDM/iPNDM).
_AB = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


def ipndm_steps(x: Tensor, sigmas: Tensor, *, order: int = 4,
                callback: Callback = None) -> Steps:
    """iPNDM: Adams-Bashforth with fixed weights and lower-order warm-up from stored
    evaluations (Zhang & Chen 2023, DEIS App. B; Liu et al. 2022, PLMS)."""
    if order not in (1, 2, 3, 4):
        raise ValueError(f"iPNDM order must be 1..4; got {order}")
    s = prepare(x, sigmas)
    eps: list[Tensor] = []  # newest first
    for i in range(len(s) - 1):
        denoised = yield x, s[i]
        eps = [eps_of(x, denoised, s[i]), *eps[: order - 1]]
        h = s[i + 1] - s[i]
        x = lincomb((1.0, x), *((h * wj, e) for wj, e in zip(_AB[len(eps) - 1], eps, strict=True)))
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)

_VP_LINEAR = VPContinuous("linear")


def _vp_time(sigma: np.ndarray) -> np.ndarray:
    return _VP_LINEAR.t(torch.from_numpy(sigma)).numpy()


BASES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "t": _vp_time,            # DEIS tAB in the VP-linear time (Zhang & Chen 2023, Eq. 14)
    "log_sigma": np.log,      # DEIS in log(rho) (diffusers' "logrho")
    "sigma": lambda s: s,     # rhoAB: variable-step Adams-Bashforth in sigma
}


@functools.lru_cache(maxsize=4096)
def _deis_weights(sigmas_hist: tuple[float, ...], sigma: float, sigma_next: float,
                  basis: str) -> list[float]:
    """``C_j = int_sigma^sigma_next l_j(tau(s)) ds`` for the Lagrange basis on the history
    times (Zhang & Chen 2023, Eq. 15), by 16-point Gauss-Legendre quadrature; cached, since
    a schedule's steps repeat from run to run."""
    tau = BASES[basis]
    half = 0.5 * (sigma_next - sigma)
    s_q = sigma + half * (_GL_NODES + 1)
    t_q = tau(s_q)
    t_j = tau(np.array(sigmas_hist))
    weights = []
    for j in range(len(t_j)):
        ell = np.ones_like(t_q)
        for m in range(len(t_j)):
            if m != j:
                ell = ell * (t_q - t_j[m]) / (t_j[j] - t_j[m])
        weights.append(float(half * np.dot(_GL_WEIGHTS, ell)))
    return weights


def deis_steps(x: Tensor, sigmas: Tensor, *, order: int = 3, basis: str = "t",
               lower_order_final: bool = True, callback: Callback = None) -> Steps:
    """DEIS multistep exponential integrator (Zhang & Chen 2023, Alg. 1 "tAB"); ``basis``
    is the variable eps is extrapolated in ("t", "log_sigma", or "sigma" = rhoAB)."""
    if order not in (1, 2, 3, 4):
        raise ValueError(f"DEIS order must be 1..4; got {order}")
    if basis not in BASES:
        raise ValueError(f"unknown DEIS basis {basis!r}; expected one of {sorted(BASES)}")
    s = prepare(x, sigmas)
    n = len(s) - 1
    eps: list[Tensor] = []
    for i in range(n):
        denoised = yield x, s[i]
        eps = [eps_of(x, denoised, s[i]), *eps[: order - 1]]
        k = multistep_order(i, n, order, lower_order_final)
        if s[i + 1] == 0 and basis == "log_sigma":
            k = 1
        w = _deis_weights(tuple(s[i - j] for j in range(k)), s[i], s[i + 1], basis)
        x = lincomb((1.0, x), *zip(w, eps[:k], strict=True))
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


sample_ipndm = SolverFunction(ipndm_steps, "sample_ipndm")
sample_deis = SolverFunction(deis_steps, "sample_deis")

# iPNDM's fixed weights assume equal steps: on diffusion's non-uniform grids the 4-point
# step is second order (measured 2.0 on the Gaussian; tests/solvers/test_exact.py).
register("ipndm", sample_ipndm, order=2, history=4, knobs={"order": 4},
         reference="Zhang & Chen 2023, iPNDM (App. B)")
register("ipndm_v", sample_deis, order=4, history=4, knobs={"order": 4, "basis": "sigma"},
         reference="variable-step Adams-Bashforth in sigma (DEIS rhoAB)")
register("deis", sample_deis, order=3, history=3, knobs={"order": 3, "basis": "t"},
         reference="Zhang & Chen 2023, DEIS tAB-3 (VP-linear time)")
register("deis_logrho", sample_deis, order=3, history=3,
         knobs={"order": 3, "basis": "log_sigma"},
         reference="Zhang & Chen 2023, DEIS-3 with eps extrapolated in log(rho) (diffusers')")

__all__ = ["BASES", "deis_steps", "ipndm_steps", "sample_deis", "sample_ipndm"]
