"""ParaDiGMS: parallel sampling by Picard iteration over a sliding window of steps (Shih et
al. 2023, "Parallel Sampling of Diffusion Models", Alg. 1).

A sequential first-order sampler is ``x_{i+1} = x_i + u_i(x_i, D(x_i, s_i))`` with DDIM's
update ``u_i = (s_down/s_i - 1)(x_i - D) + s_up z_i`` (Euler on the PF-ODE for eta = 0; DDPM
for eta = 1 with its noise ``z_i`` drawn up front, in the sequential order). Its trajectory is
the fixed point of the Picard map ``x_{i+1} = x_0 + sum_{j <= i} u_j(x_j, D(x_j, s_j))``. Each
round evaluates the denoiser at every point of a window of ``p`` steps in ONE batched call
(``p x batch`` rows, one sigma per row), updates the window by cumulative sums of the
increments, and slides the window past the points whose update moved them less than the
tolerance (Alg. 1, lines 7-10). The answer is the sequential sampler's, to within ``tol``; the
price is more evaluations (NFE) for fewer sequential rounds (network calls in a row).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import Callback, Generator, emit, prepare, randn_like
from .driver import SolverFunction, Steps
from .euler import ancestral_split
from .registry import register

__all__ = ["paradigms_steps", "sample_paradigms"]


def paradigms_steps(x: Tensor, sigmas: Tensor, *, window: int = 8, tol: float = 0.1,
                    eta: float = 0.0, info: dict[str, Any] | None = None,
                    generator: Generator = None, callback: Callback = None) -> Steps:
    """ParaDiGMS (Shih et al. 2023, Alg. 1) parallelising DDIM(eta) on ``sigmas`` (the
    sequential sampler's full grid). Point ``i`` of the window counts as converged when its
    last update moved it by ``max_batch mean((x^{k+1}_i - x^k_i)^2) <= tol^2 (s_{i-1}^2 -
    s_i^2)``, the paper's tolerance scaled by the variance a DDPM step adds there (Sec. 3.2).
    ``info`` receives ``nfe`` (evaluations per sample), ``rounds`` (batched network calls in
    sequence) and ``steps`` (the sequential sampler's evaluations).

    Raises ``ValueError`` for ``window < 1``, ``tol < 0`` or ``eta < 0``."""
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0; got {tol}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    s = prepare(x, sigmas)
    n, batch = len(s) - 1, x.shape[0]
    splits = [ancestral_split(s[i], s[i + 1], eta) for i in range(n)]
    # the sequential sampler's noise, drawn in its order (so tol -> 0 gives its answer)
    z = [randn_like(x, generator) if up > 0 else None for _, up in splits]
    scale = [s[i] ** 2 - s[i + 1] ** 2 for i in range(n)]  # the variance step i adds
    traj = [x] * (n + 1)  # the current Picard iterate x^k_0 .. x^k_n; x_0 is fixed
    t = rounds = evals = 0
    while t < n:
        p = min(int(window), n - t)
        rows = torch.tensor([s[t + j] for j in range(p) for _ in range(batch)],
                            dtype=torch.float64)
        D = (yield torch.cat(traj[t:t + p]), rows).split(batch)  # one batched call (line 6)
        rounds, evals = rounds + 1, evals + p
        new, acc = [], traj[t]
        for j in range(p):  # cumulative sums of the increments (line 7)
            i = t + j
            down, up = splits[i]
            acc = acc + (down / s[i] - 1) * (traj[i] - D[j])
            z_i = z[i]
            if z_i is not None:
                acc = acc + up * z_i
            new.append(acc)
        # first point whose update exceeded the tolerance; the window slides up to it
        stride = p
        for j in range(p):
            err = float((new[j] - traj[t + j + 1]).flatten(1).pow(2).mean(1).max())
            if err > tol**2 * scale[t + j]:
                stride = j + 1
                break
        traj[t + 1:t + p + 1] = new
        for j in range(stride):
            emit(callback, t + j, traj[t + j + 1], s[t + j], s[t + j + 1], D[j])
        # points entering the window start from the window's last point (line 10)
        for i in range(t + p + 1, min(t + stride + int(window), n) + 1):
            traj[i] = new[-1]
        t += stride
    if info is not None:
        info.update(nfe=evals, rounds=rounds, steps=n)
    return traj[n]


sample_paradigms = SolverFunction(paradigms_steps, "sample_paradigms")

register("paradigms", sample_paradigms, order=1, kind="parallel",
         reference="Shih et al. 2023, ParaDiGMS (Alg. 1) over DDIM: Picard iterations on a "
                   "sliding window, one batched call per round")
register("paradigms_ddpm", sample_paradigms, order=1, kind="parallel", stochastic=True,
         knobs={"eta": 1.0},
         reference="Shih et al. 2023, ParaDiGMS (Alg. 1) over DDPM (noise drawn up front)")
