"""Adaptive reverse-SDE sampling: "Gotta Go Fast" (Jolicoeur-Martineau et al. 2021, Alg. 1).

The reverse SDE is taken in the VE form of Song et al. 2021b with
``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``t`` from 1 down to 0, so
``g(t)^2 = d sigma^2 / dt = 2 L sigma^2`` with ``L = log(sigma_max / sigma_min)``, and the score
is ``(D(x, sigma) - x) / sigma^2``. A step of size ``h`` from ``t`` pairs Euler-Maruyama with
the stochastic improved Euler method (Roberts 2012) on the same noise ``z``:

    K1 = 2 L h (D(x, sigma(t)) - x)        + sigma(t)   sqrt(2 L h) z      x'  = x + K1
    K2 = 2 L h (D(x', sigma(t-h)) - x')    + sigma(t-h) sqrt(2 L h) z      x'' = x + (K1 + K2) / 2

The local error ``E = x'' - x' = (K2 - K1) / 2`` is measured in the scaled q-norm
``E_q = ||E / delta||_q / n^(1/q)`` with the mixed tolerance
``delta = max(eps_abs, eps_rel max(|x'|, |x'_prev|))`` (Eq. 8-9); the step is accepted when
``E_q <= 1``, the next step is ``h = min(t, theta h E_q^-r)`` (Eq. 10), and with extrapolation
the accepted sample is the higher-order ``x''``. Every sample has its own step size (as the
authors' code): each round evaluates every running sample once, in one call with one sigma
per row, so results do not depend on the batch. A rejected step reuses ``D(x, sigma(t))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .adaptive import _range
from .common import Callback, Generator, prepare, randn_like
from .driver import SolverFunction, Steps
from .registry import register

__all__ = ["ggf_steps", "sample_ggf"]

_EVAL_X, _EVAL_X1, _DENOISE, _DONE = 0, 1, 2, 3  # what each sample asks for next


def _noise(x: Tensor, rows: Tensor, generator: Generator) -> Tensor:
    """Fresh noise for ``rows`` of x, each row from its own generator when given a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return randn_like(x[rows], generator)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return randn_like(x[rows], [generator[int(i)] for i in rows])


def _scaled_norm(v: Tensor, q: float) -> Tensor:
    """Per-row ``||v||_q / n^(1/q)`` (the paper's scaled norm; q = inf is the max norm)."""
    v = v.flatten(1).abs()
    return v.amax(1) if math.isinf(q) else v.pow(q).mean(1).pow(1 / q)


def ggf_steps(x: Tensor, sigmas: Tensor, *, rtol: float = 0.05, atol: float = 0.0078,
              h_init: float = 0.01, theta: float = 0.9, r: float = 0.9, q: float = 2.0,
              extrapolate: bool = True, info: dict[str, Any] | None = None,
              generator: Generator = None, callback: Callback = None) -> Steps:
    """Gotta Go Fast (Jolicoeur-Martineau et al. 2021, Alg. 1) from ``sigmas[0]`` to
    ``sigmas[1]`` (then ``x0 = D(x, sigma_min)`` when ``sigmas`` ends in 0). Knobs are the
    paper's: ``rtol``/``atol`` (eps_rel, eps_abs), ``h_init`` (in t in [0, 1]), ``theta``
    (safety), ``r`` (exponent), ``q`` (norm), ``extrapolate`` (keep ``x''``). ``info``
    receives ``nfe`` (mean evaluations per sample), ``nfe_max``, ``rounds`` (network calls),
    ``steps`` (mean accepted steps per sample) and ``rejected`` (all samples).

    Raises ``ValueError`` for non-positive tolerances, ``h_init``, ``theta``, ``r`` or
    ``q < 1``."""
    for name, v in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("theta", theta),
                    ("r", r)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0; got {v}")
    if not q >= 1:
        raise ValueError(f"q must be >= 1 (or inf); got {q}")
    s = prepare(x, sigmas)
    sigma_max, sigma_min, denoise = _range(s)
    L = math.log(sigma_max / sigma_min)
    x = x.clone()  # updated row by row in place
    B, dev, shape = x.shape[0], x.device, (-1,) + (1,) * (x.ndim - 1)
    t = torch.ones(B, dtype=torch.float64, device=dev)
    h = torch.full((B,), min(h_init, 1.0), dtype=torch.float64, device=dev)
    phase = torch.full((B,), _EVAL_X, dtype=torch.long, device=dev)
    evals = torch.zeros(B, dtype=torch.long, device=dev)
    x_prev, D0, K1, z = x.clone(), torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    rounds = steps = rejected = 0

    def sigma(t_: Tensor) -> Tensor:
        return sigma_min * torch.exp(L * t_)

    def col(v: Tensor) -> Tensor:  # per-row scalar broadcast against x
        return v.to(x.dtype).view(shape)

    def first_half(rows: Tensor) -> None:  # Euler-Maruyama: K1 and fresh noise z (line 3)
        z[rows] = _noise(x, rows, generator)
        hr, sr = h[rows], sigma(t[rows])
        K1[rows] = col(2 * L * hr) * (D0[rows] - x[rows]) + col(sr * (2 * L * hr).sqrt()) * z[rows]

    while bool((phase != _DONE).any()):
        act = torch.nonzero(phase != _DONE).flatten()
        p = phase[act]
        xs = torch.where((p == _EVAL_X1).view(shape), x[act] + K1[act], x[act])
        sig = torch.where(p == _EVAL_X, sigma(t[act]),
                          torch.where(p == _EVAL_X1, sigma(t[act] - h[act]),
                                      torch.full_like(t[act], sigma_min)))
        D = yield xs, sig
        rounds += 1
        evals[act] += 1
        fin = act[p == _DENOISE]  # the final denoising evaluation
        x[fin] = D[p == _DENOISE]
        phase[fin] = _DONE
        new = act[p == _EVAL_X]  # a step's first evaluation: D at x, then K1
        if new.numel():
            D0[new] = D[p == _EVAL_X]
            first_half(new)
            phase[new] = _EVAL_X1
        sec = act[p == _EVAL_X1]  # the improved-Euler evaluation and the error control
        if not sec.numel():
            continue
        hr, tr, x1 = h[sec], t[sec], x[sec] + K1[sec]
        K2 = col(2 * L * hr) * (D[p == _EVAL_X1] - x1) \
            + col(sigma(tr - hr) * (2 * L * hr).sqrt()) * z[sec]
        x2 = x[sec] + 0.5 * (K1[sec] + K2)  # improved Euler (line 5)
        x_new, x_check = (x2, x1) if extrapolate else (x1, x2)
        delta = torch.clamp(rtol * torch.maximum(x_check.abs(), x_prev[sec].abs()), min=atol)
        E = _scaled_norm(0.5 * (K2 - K1[sec]) / delta, q).double()  # lines 6-7
        ok = E <= 1
        acc, rej = sec[ok], sec[~ok]
        x[acc], x_prev[acc] = x_new[ok], x_check[ok]
        t[acc] = torch.where(h[acc] >= t[acc], torch.zeros_like(t[acc]), t[acc] - h[acc])
        steps, rejected = steps + int(ok.sum()), rejected + int((~ok).sum())
        h[sec] = torch.minimum(t[sec], theta * hr * E.clamp_min(1e-10) ** (-r))  # line 10
        ended = acc[t[acc] <= 0]
        phase[ended] = _DENOISE if denoise else _DONE
        phase[acc[t[acc] > 0]] = _EVAL_X
        if rej.numel():  # x and t unchanged: D(x, sigma(t)) is reused with the new h and z
            first_half(rej)
        if callback is not None:
            callback({"i": rounds - 1, "x": x, "sigma": sigma(tr), "sigma_next": sigma(t[sec]),
                      "denoised": D0})
    if info is not None:
        info.update(nfe=float(evals.double().mean()), nfe_max=int(evals.max()), rounds=rounds,
                    steps=steps / B, rejected=rejected)
    return x


sample_ggf = SolverFunction(ggf_steps, "sample_ggf")

register("ggf", sample_ggf, order=2, kind="adaptive", stochastic=True,
         reference="Jolicoeur-Martineau et al. 2021, Gotta Go Fast (Alg. 1): adaptive "
                   "Euler-Maruyama / improved-Euler pair on the reverse VE SDE")
