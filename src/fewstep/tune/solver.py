"""The learned multistep solver that tuned coefficients and decoupled evaluation sigmas run in.

A data-prediction linear multistep exponential integrator in sigma-space (alpha = 1):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) sum_j W[i, j] D_{i-j},
    D_m = D(x_m, xi_m)

with per-step weights ``W`` (newest evaluation first; learned solvers may also add
``x_weights[i]`` to the coefficient of ``x_i``) and evaluation sigmas ``xi`` that may differ
from the step sigmas (LD3's decoupling, Tong et al. 2025). DDIM is ``W = [[1]]``; DPM-Solver++(2M)
(Lu et al. 2022b, Alg. 2) is :func:`dpmpp_2m_weights`, so an untrained S4S/GS-style solver
(Frankel et al. 2025) equals it. One generator serves sampling (float sigmas, through the
registry's driver) and tuning (tensor sigmas with gradients, through :func:`drive_differentiable`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..solvers.common import Callback, emit, prepare
from ..solvers.driver import Steps

__all__ = ["dpmpp_2m_weights", "drive_differentiable", "lms_core", "lms_steps",
           "monotone_logits", "monotone_sigmas", "rollout"]

Scalar = float | Tensor
AnySteps = Generator[tuple[Tensor, Any], Tensor, Tensor]  # Steps whose sigmas may be tensors


def lms_core(x: Tensor, sigmas: Sequence[Scalar], eval_sigmas: Sequence[Scalar],
             weights: Tensor, x_weights: Tensor | None = None,
             callback: Callback = None) -> AnySteps:
    """The update above as a generator (``denoised = yield x, xi_i``); ``sigmas`` (n + 1, ending
    in 0), ``eval_sigmas`` (n), ``weights`` (n, K) and ``x_weights`` (n; added to the
    coefficient of ``x_i``, default 0) may be floats or tensors with gradients. Step i uses
    the first ``min(i + 1, K)`` weights of its row."""
    n = len(sigmas) - 1
    K = weights.shape[1]
    hist: list[Tensor] = []  # newest first
    for i in range(n):
        denoised = yield x, eval_sigmas[i]
        hist = [denoised, *hist[: K - 1]]
        mix = sum(weights[i, j] * hist[j] for j in range(len(hist)))
        ratio = sigmas[i + 1] / sigmas[i]
        a = ratio if x_weights is None else ratio + x_weights[i]
        x = a * x + (1 - ratio) * mix
        if callback is not None:
            emit(callback, i, x, float(sigmas[i]), float(sigmas[i + 1]), denoised)
    return x


def lms_steps(x: Tensor, sigmas: Tensor, *, weights: Tensor | Sequence[Sequence[float]],
              eval_sigmas: Tensor | Sequence[float] | None = None,
              x_weights: Tensor | Sequence[float] | None = None,
              callback: Callback = None) -> Steps:
    """The learned multistep solver's generator for the registry's driver: ``weights`` (n, K)
    per-step multistep weights on the data estimates, newest first; ``eval_sigmas`` (n) the
    sigma each evaluation is made at (default: the step sigmas); ``x_weights`` (n) added to
    the coefficient of ``x_i`` (default 0). Raises ``ValueError`` on shapes that do not match
    ``sigmas``."""
    s = prepare(x, sigmas)
    n = len(s) - 1
    W = torch.as_tensor(weights, dtype=torch.float64)
    if W.ndim != 2 or W.shape[0] != n:
        raise ValueError(f"weights must have shape ({n}, K) for {n} steps; got "
                         f"{tuple(W.shape)}")
    xi = s[:-1] if eval_sigmas is None else [float(v) for v in eval_sigmas]
    if len(xi) != n or any(not v > 0 for v in xi):
        raise ValueError(f"eval_sigmas must hold {n} positive values; got {xi}")
    a = None if x_weights is None else torch.as_tensor(x_weights, dtype=torch.float64)
    if a is not None and a.shape != (n,):
        raise ValueError(f"x_weights must have shape ({n},); got {tuple(a.shape)}")
    return (yield from lms_core(x, s, xi, W, a, callback))


def drive_differentiable(steps: AnySteps, denoiser: Callable[..., Tensor]) -> Tensor:
    """Answer every request of ``steps`` with ``denoiser(x, sigma)``, ``sigma`` a per-row
    tensor that keeps the graph to the requested (tensor) sigma; returns the final sample."""
    try:
        request = next(steps)
        while True:
            x, sigma = request
            s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
            request = steps.send(denoiser(x, s))
    except StopIteration as done:
        out: Tensor = done.value
        return out


def dpmpp_2m_weights(sigmas: Tensor, K: int = 2) -> Tensor:
    """DPM-Solver++(2M)'s weights on the newest data estimates, (n, K), differentiable in the
    n + 1 ``sigmas`` (ending in 0): ``[1 + 1/(2 r), -1/(2 r)]`` with ``r = h_{i-1} / h_i``,
    ``h_i = log(sigma_i / sigma_{i+1})`` (Lu et al. 2022b, Alg. 2); first order at the first
    step and at the step to 0."""
    if K < 2:
        raise ValueError(f"K must be at least 2 to hold DPM-Solver++(2M); got {K}")
    n = len(sigmas) - 1
    rows = []
    zero, one = sigmas.new_zeros(()), sigmas.new_ones(())
    for i in range(n):
        if i == 0 or sigmas[i + 1] == 0:
            w = [one, zero]
        else:
            r = torch.log(sigmas[i - 1] / sigmas[i]) / torch.log(sigmas[i] / sigmas[i + 1])
            w = [1 + 1 / (2 * r), -1 / (2 * r)]
        rows.append(torch.stack(w + [zero] * (K - 2)))
    return torch.stack(rows)


def monotone_sigmas(theta: Tensor, sigma_max: float, sigma_min: float) -> Tensor:
    """n + 1 decreasing sigmas ``[sigma_max, ..., s_{n-1}, 0]`` with ``s_{n-1} > sigma_min``
    from n unconstrained logits: the softmax of ``theta`` gives the fractions of
    ``log(sigma_max / sigma_min)`` each gap takes (the last fraction is the room left above
    sigma_min), so every schedule is strictly decreasing."""
    f = torch.softmax(theta, 0)
    L = torch.log(torch.as_tensor(sigma_max / sigma_min, dtype=theta.dtype))
    drop = torch.cat([theta.new_zeros(1), torch.cumsum(f, 0)[:-1]])
    return torch.cat([sigma_max * torch.exp(-L * drop), theta.new_zeros(1)])


def monotone_logits(sigmas: Tensor, sigma_min: float, floor: float = 1e-6) -> Tensor:
    """The logits that :func:`monotone_sigmas` maps back to ``sigmas`` (n + 1, ending in 0); a
    last nonzero sigma at ``sigma_min`` is given the fraction ``floor``."""
    s = sigmas[:-1].double()
    L = torch.log(s[0] / sigma_min)
    gaps = torch.cat([torch.log(s[:-1] / s[1:]), torch.log(s[-1:] / sigma_min)]) / L
    return torch.log(gaps.clamp_min(floor))


def rollout(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, eval_sigmas: Tensor,
            weights: Tensor, x_weights: Tensor | None = None) -> Tensor:
    """The learned solver's endpoint from ``x`` (at ``sigmas[0]``), differentiable in every
    parameter tensor."""
    return drive_differentiable(lms_core(x, list(sigmas), list(eval_sigmas), weights,
                                         x_weights), denoiser)

