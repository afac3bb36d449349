"""Helpers shared by every solver: input checks, per-sample noise, the order plan of
singlestep solvers and the step report to the callback."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoiser import NonFiniteError
from ..schedules import validate_sigmas
from .driver import all_finite

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None

__all__ = ["LOWER_ORDER_FINAL_BELOW", "Generator", "eps_of", "generators", "lerp", "lincomb",
           "multistep_order", "prepare", "randn_like", "sample_generators", "singlestep_orders"]


def prepare(x: Tensor, sigmas: Tensor | Sequence[float]) -> list[float]:
    """Validate a solver's start sample and sigmas; return the sigmas as Python floats
    (float64, whatever the tensor's dtype)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.ndim < 2:
        raise ValueError(f"x must have shape (batch, ...); got {tuple(x.shape)}")
    if not all_finite(x):
        raise NonFiniteError("x (the start noise) contains NaN/inf")
    if isinstance(sigmas, Tensor) and sigmas.ndim == 1 and sigmas.is_floating_point():
        s = sigmas.tolist()  # the common case, checked in Python (validate_sigmas explains)
        if len(s) >= 2 and s[-1] >= 0 and all(a > b for a, b in itertools.pairwise(s)) \
                and math.isfinite(s[0]):
            return s
    return [float(v) for v in validate_sigmas(sigmas).tolist()]


_FINITE_MAX = {dt: torch.finfo(dt).max for dt in
               (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _fits(c: float, t: Tensor) -> bool:
    """Whether the step coefficient ``c`` is representable in ``t``'s dtype (a fused op
    refuses one that is not; the unfused form overflows to inf and the final check names
    it)."""
    return abs(c) <= _FINITE_MAX.get(t.dtype, math.inf)


def lincomb(*terms: tuple[float, Tensor]) -> Tensor:
    """``sum_i c_i t_i`` in ``len(terms)`` fused operations (a scaled copy of the first term,
    then in-place scaled adds): the steps' linear updates without a temporary per term."""
    (c0, t0), *rest = terms
    out = t0 * c0
    for c, t in rest:
        out = out.add_(t, alpha=c) if _fits(c, t) else out + t * c
    return out


def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """``start + weight (end - start)`` in one fused operation (``torch.lerp``)."""
    if _fits(weight, start):
        return torch.lerp(start, end, weight)
    return start + (end - start) * weight


def eps_of(x: Tensor, denoised: Tensor, sigma: float) -> Tensor:
    """The noise estimate ``(x - D) / sigma``, the PF-ODE's ``dx/dsigma`` (Karras et al.
    2022, Eq. 3 with s = 1)."""
    return lincomb((1 / sigma, x), (-1 / sigma, denoised))



def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample, so noise does not depend on batch size."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def sample_generators(seed: int, n: int,
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """Per-sample generators for sample ``i`` of run ``seed`` (seeded ``10^6 seed + i``)."""
    return generators([1_000_000 * seed + i for i in range(n)], device)


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like x; a list of generators draws row i from the i-th."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device,
                           dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype)
                        for g in generator]).to(x.device)


def singlestep_orders(nfe: int, order: int, denoise_to_zero: bool = True) -> list[int]:
    """Per-step orders spending exactly ``nfe`` evaluations: steps of ``order``, one lower-order
    step for the remainder (Lu et al. 2022, Sec. 3.4), and (``denoise_to_zero``) a final
    first-order step to 0."""
    m, r = divmod(nfe - 1 if denoise_to_zero else nfe, order)
    return [order] * m + ([r] if r else []) + ([1] if denoise_to_zero else [])


LOWER_ORDER_FINAL_BELOW = 15  # steps; diffusers' rule for DPM-Solver++ and DEIS


def multistep_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Order of step ``i`` of ``n`` of a multistep method of nominal ``order``: warm-up from
    order 1 (step i has i + 1 evaluations), and with ``lower_order_final`` a run of fewer than
    15 steps lowers its last steps so that step i uses at most n - i evaluations (diffusers'
    ``lower_order_final``: short runs are unstable at high order near sigma = 0). One meaning
    for every solver with the knob."""
    k = min(order, i + 1)
    if lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
        k = min(k, n - i)
    return k


def check_orders(orders: Sequence[int] | None, sigmas: list[float], order: int) -> list[int]:
    """Default or validate the per-step orders of a singlestep solver."""
    n = len(sigmas) - 1
    if orders is None:
        return [order] * (n - 1) + [1 if sigmas[-1] == 0 else order]
    orders = [int(o) for o in orders]
    if len(orders) != n:
        raise ValueError(f"orders has {len(orders)} entries for {n} steps")
    if any(not 1 <= o <= order for o in orders):
        raise ValueError(f"orders must lie in 1..{order}; got {orders}")
    if sigmas[-1] == 0 and orders[-1] != 1:
        raise ValueError(f"the step to sigma=0 must be first order; got orders={orders}")
    return orders


def emit(callback: Callback, i: int, x: Tensor, sigma: float, sigma_next: float,
         denoised: Tensor) -> None:
    """Report a finished step to the user's callback (k-diffusion's dict convention)."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
