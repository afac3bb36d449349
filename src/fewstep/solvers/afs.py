"""The analytic first step (AFS): answer a solver's first evaluation without the network.

At the start of sampling ``x = x0 + sigma_max * eps`` is almost pure noise, so the denoiser's
answer there is almost the data's statistics alone. Zhou et al. 2024 (AMED-Solver, "Fast
ODE-based Sampling for Diffusion Models in Around 5 Steps", Sec. 4.2) replace the first
network evaluation by the analytic direction ``d = x / sqrt(1 + sigma^2)``, saving one NFE.
With known data mean ``mu`` and covariance ``Sigma`` the exact answer for Gaussian data is the
posterior mean

    D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu),

which is the true denoiser of a single Gaussian (so AFS is then exact) and the best linear
estimate for any data with those moments.

:func:`analytic_first_step` wraps any solver generator; :func:`with_afs` makes any registered
solver an AFS solver. A solver planned for ``nfe + 1`` evaluations then spends ``nfe``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .driver import SolverFunction, Steps
from .registry import SolverSpec, get

__all__ = ["Estimate", "analytic_first_step", "gaussian_estimate", "with_afs", "zhou_estimate"]

Estimate = Callable[[Tensor, float | Tensor], Tensor]  # (x, sigma) -> x0_hat


def _row_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """sigma (a float, or one value per row of a batched request) broadcastable against x."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return s.reshape(-1, *[1] * (x.ndim - 1)) if s.ndim else s


def zhou_estimate(x: Tensor, sigma: float | Tensor) -> Tensor:
    """AMED-Solver's analytic first step (Zhou et al. 2024, Sec. 4.2): the ODE direction
    ``d = (x - D) / sigma`` is taken to be ``x / sqrt(1 + sigma^2)``; returned as the
    denoised estimate ``D = x - sigma d``."""
    s = _row_sigma(sigma, x)
    return x - s * x / torch.sqrt(1 + s**2)


def gaussian_estimate(mean: Tensor, cov: Tensor) -> Estimate:
    """The posterior mean of data with ``mean`` (one sample's shape) and covariance ``cov``:
    a ``(d, d)`` matrix over the ``d`` flattened features, or per-feature variances shaped
    like ``mean`` (a diagonal covariance). Exact for a single Gaussian.

    Raises ``ValueError`` when the shapes disagree or ``cov`` is not symmetric positive
    semi-definite."""
    mu = mean.reshape(-1)
    d = mu.numel()
    if cov.shape == mean.shape:  # per-feature variances
        lam, U = cov.reshape(-1), None
        if (lam < 0).any():
            raise ValueError("cov (per-feature variances) must be >= 0")
    elif cov.shape == (d, d):
        if not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-8):
            raise ValueError("cov must be symmetric")
        lam, U = torch.linalg.eigh(cov.double())
        if lam.min() < -1e-8 * max(float(lam.abs().max()), 1.0):
            raise ValueError(f"cov must be positive semi-definite; smallest eigenvalue "
                             f"{float(lam.min()):g}")
        lam = lam.clamp_min(0)
    else:
        raise ValueError(f"cov must have shape {tuple(mean.shape)} (variances) or ({d}, {d}); "
                         f"got {tuple(cov.shape)}")

    def estimate(x: Tensor, sigma: float | Tensor) -> Tensor:
        if x[0].numel() != d:
            raise ValueError(f"AFS statistics are for {d} features; the sample has "
                             f"{x[0].numel()}")
        r = x.reshape(x.shape[0], d) - mu.to(x)
        s2 = _row_sigma(sigma, r) ** 2
        if U is None:
            out = lam.to(x) / (lam.to(x) + s2) * r
        else:  # Sigma (Sigma + s^2 I)^-1 r in Sigma's eigenbasis
            u = U.to(x)
            out = ((r @ u) * (lam.to(x) / (lam.to(x) + s2))) @ u.T
        return (mu.to(x) + out).reshape(x.shape)

    return estimate


def analytic_first_step(steps: Steps, estimate: Estimate = zhou_estimate) -> Steps:
    """Run the solver generator ``steps`` with its first request answered by ``estimate``
    instead of the network; every later request is passed through. Spends one evaluation
    fewer than ``steps`` alone."""
    try:
        x, sigma = next(steps)
        reply = estimate(x, sigma)
        while True:
            try:
                request = steps.send(reply)
            except StopIteration as done:
                return done.value
            reply = yield request
    finally:
        steps.close()


def with_afs(solver: str | SolverSpec, *, mean: Tensor | None = None,
             cov: Tensor | None = None) -> SolverSpec:
    """``solver`` (a registered name or spec) with the analytic first step: the paper's
    estimate without statistics, the Gaussian posterior mean with ``mean`` and ``cov``
    (:func:`gaussian_estimate`). The result runs like any spec (function face and
    ``.steps``), named ``NAME+afs``; plan it as the base solver with one evaluation more::

        p = plan("ipndm", nfe + 1)
        x0 = with_afs("ipndm")(denoiser, x, p.sigmas, **p.knobs)   # nfe evaluations
    """
    spec = get(solver) if isinstance(solver, str) else solver
    if (mean is None) != (cov is None):
        raise ValueError("give both mean= and cov= (or neither, for Zhou et al.'s estimate)")
    estimate = zhou_estimate if mean is None or cov is None else gaussian_estimate(mean, cov)
    base = spec.fn.steps_fn

    @functools.wraps(base)
    def steps_fn(x: Tensor, sigmas: Any, **knobs: Any) -> Steps:
        return (yield from analytic_first_step(base(x, sigmas, **knobs), estimate))

    fn = SolverFunction(steps_fn, f"{spec.fn.__name__}_afs")
    return dataclasses.replace(spec, name=f"{spec.name}+afs", fn=fn,
                               min_nfe=max(spec.min_nfe - 1, 1), alias_of=None,
                               reference=f"{spec.reference}; analytic first step (Zhou et "
                                         "al. 2024)")
