"""PNDM as published (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds"): pseudo Runge-Kutta warm-up steps, then pseudo linear multistep steps.

Both phases move with the DDIM transfer ``phi(x, e, s, s')`` (Liu et al., Eq. 11), which in
sigma-space is the Euler step ``x + (s' - s) e`` of ``dx/dsigma = eps``; only the noise
estimate ``e`` fed to it differs:

- pseudo Runge-Kutta (Eq. 13), 4 evaluations per step, at ``s``, twice at the midpoint
  ``m`` and at ``s'``: ``e' = (e1 + 2 e2 + 2 e3 + e4) / 6``;
- pseudo linear multistep (Eq. 12), 1 evaluation per step:
  ``e' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24`` over the noise estimates at the starts of
  the last four steps (lower-order Adams-Bashforth weights while fewer exist).

F-PNDM (the paper's main method) takes three pseudo Runge-Kutta steps (12 evaluations) before
the multistep phase, so ``n`` steps cost ``n + 9`` evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .common import Callback, emit, prepare
from .driver import SolverFunction, Steps
from .multistep import _AB
from .registry import register

__all__ = ["pndm_orders", "pndm_steps", "sample_pndm"]

WARMUP_STEPS = 3  # F-PNDM: three pseudo Runge-Kutta steps before the multistep phase


def pndm_orders(nfe: int, order: int = 4, denoise_to_zero: bool = True) -> list[int]:
    """Evaluations per step of F-PNDM spending exactly ``nfe``: up to three pseudo
    Runge-Kutta steps (4 each; fewer when the budget is short, none below 5 evaluations with
    the final step to 0) then pseudo linear multistep steps (1 each). The step to sigma = 0
    is always a multistep step (its midpoint would be sigma = 0). ``order`` is the
    registry's (4) and is not a choice."""
    if order != 4:
        raise ValueError(f"PNDM's pseudo Runge-Kutta steps are of order 4; got {order}")
    warm = min(WARMUP_STEPS, (nfe - 1 if denoise_to_zero else nfe) // 4)
    return [4] * warm + [1] * (nfe - 4 * warm)


def pndm_steps(x: Tensor, sigmas: Tensor, *, orders: Sequence[int] | None = None,
               mid_sigmas: Sequence[float] | None = None,
               callback: Callback = None) -> Steps:
    """F-PNDM (Liu et al. 2022, Alg. 2 with Eq. 12-13). ``orders[i]`` is 4 for a pseudo
    Runge-Kutta step and 1 for a pseudo linear multistep step; by default the published
    three warm-up steps, then multistep steps. ``mid_sigmas`` are the midpoints of the
    pseudo Runge-Kutta steps, in order (default the sigma midpoint ``(s + s') / 2``, which
    makes the warm-up classical RK4 on ``dx/dsigma = eps``; a discrete-time model's
    ``sigma(t - delta/2)`` reproduces the paper's half time step)."""
    s = prepare(x, sigmas)
    n = len(s) - 1
    if orders is None:
        warm = min(WARMUP_STEPS, n - 1 if s[-1] == 0 else n)
        orders = [4] * warm + [1] * (n - warm)
    orders = [int(o) for o in orders]
    if len(orders) != n:
        raise ValueError(f"orders has {len(orders)} entries for {n} steps")
    if any(o not in (1, 4) for o in orders):
        raise ValueError(f"PNDM step orders must be 4 (pseudo Runge-Kutta) or 1 (pseudo "
                         f"linear multistep); got {orders}")
    if s[-1] == 0 and orders[-1] != 1:
        raise ValueError(f"the step to sigma=0 must be a multistep step (order 1); got "
                         f"orders={orders}")
    n_rk = orders.count(4)
    mids = [0.5 * (s[i] + s[i + 1]) for i in range(n) if orders[i] == 4] \
        if mid_sigmas is None else [float(m) for m in mid_sigmas]
    if len(mids) != n_rk:
        raise ValueError(f"mid_sigmas has {len(mids)} entries for {n_rk} pseudo Runge-Kutta "
                         "steps")
    eps: list[Tensor] = []  # noise estimates at the steps' starts, newest first
    for i, k in enumerate(orders):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = yield x, sigma
        e1 = (x - denoised) / sigma
        eps = [e1, *eps[:3]]
        if k == 4:  # pseudo Runge-Kutta (Eq. 13)
            m = mids.pop(0)
            if not sigma_next < m < sigma:
                raise ValueError(f"mid sigma {m:g} is not inside step ({sigma:g}, "
                                 f"{sigma_next:g})")
            x1 = x + (m - sigma) * e1
            e2 = (x1 - (yield x1, m)) / m
            x2 = x + (m - sigma) * e2
            e3 = (x2 - (yield x2, m)) / m
            x3 = x + (sigma_next - sigma) * e3
            e4 = (x3 - (yield x3, sigma_next)) / sigma_next
            e_prime = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:  # pseudo linear multistep (Eq. 12)
            w = _AB[len(eps) - 1]
            e_prime = sum((wj * e for wj, e in zip(w, eps, strict=True)), start=0 * e1)
        x = x + (sigma_next - sigma) * e_prime  # the transfer phi (Eq. 11)
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


# ``plan`` asks the generator function for the published step structure of a budget.
pndm_steps.plan_orders = pndm_orders  # type: ignore[attr-defined]

sample_pndm = SolverFunction(pndm_steps, "sample_pndm")

# Below the published structure (3 warm-up steps, 12 evaluations, plus the multistep step to 0)
# the plan degenerates to orders like (4, 1) and is far worse than DDIM (RMSE 12 vs 1 at NFE 5
# on a 16-d mixture), so ``plan`` refuses it.
register("pndm", sample_pndm, order=4, kind="singlestep", min_nfe=4 * WARMUP_STEPS + 1,
         reference="Liu et al. 2022, F-PNDM: 3 pseudo Runge-Kutta steps (Eq. 13) then pseudo "
                   "linear multistep (Eq. 12)")
