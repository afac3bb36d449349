"""Empirical model statistics (EMS) of a teacher for DPM-Solver-v3 (Zheng et al. 2023, Sec. 3.2,
Eq. 10-11), computed once on calibration start noises.

On a lambda grid (``lambda = -log sigma``, uniform between the teacher's ``sigma_max`` and
``sigma_min``), along the teacher's own PF-ODE trajectories:

- ``l``: the least-squares ``l`` in ``sigma grad_x eps - l I``, i.e. ``l = 1 - tr(grad_x D) / d``
  (Hutchinson: Rademacher probes, central differences of the denoiser, so any denoiser works);
- ``s`` (scalar) and ``b`` (sample-shaped): the least-squares fit ``h' ~ s h + b`` of the
  model's nonlinear part ``h = (1 - l) x - D`` and its lambda-derivative along the
  trajectories (second-order finite differences on the grid): ``s = Cov(h', h) / Var(h)``,
  ``b = E h' - s E h``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..solvers.dpm_v3 import Statistics
from .schedule import teacher_trajectories

__all__ = ["estimate"]


def estimate(D: Any, x: Tensor, sigma_min: float, sigma_max: float, *, grid_size: int = 80,
             substeps: int = 3, probes: int = 1, seed: int = 0
             ) -> tuple[Statistics, dict[str, Any]]:
    """EMS of denoiser ``D`` from the start samples ``x`` (N, ...) at ``sigma_max`` on a
    ``grid_size``-point lambda grid (teacher trajectories by Heun with ``substeps`` steps per
    grid interval; ``probes`` Hutchinson probes per sample and grid point). Returns the
    :class:`~fewstep.solvers.dpm_v3.Statistics` and a summary. Raises ``ValueError`` on a grid
    below 3 points."""
    if grid_size < 3:
        raise ValueError(f"grid_size must be at least 3; got {grid_size}")
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), grid_size,
                         dtype=torch.float64)
    sig = torch.exp(-lam)
    sig[0], sig[-1] = sigma_max, sigma_min
    X, Dx = teacher_trajectories(D, x.double(), sig, substeps)  # (M, N, ...)
    M, N = X.shape[:2]
    d = X[0, 0].numel()
    g = torch.Generator().manual_seed(seed)
    trace = torch.zeros(M, dtype=torch.float64)
    with torch.no_grad():
        for m in range(M):
            delta = 1e-4 * (1 + float(sig[m]))
            s_m = X.new_full((N,), float(sig[m]))
            for _ in range(probes):
                v = torch.randint(0, 2, X[m].shape, generator=g).to(X) * 2 - 1
                dD = D(X[m] + delta * v, s_m) - D(X[m] - delta * v, s_m)
                trace[m] += (v * dD).flatten(1).sum(1).mean() / (2 * delta * probes)
    l = 1 - trace / d
    view = (M, *[1] * (X.ndim - 1))
    h = (1 - l).view(view) * X - Dx
    dh = torch.gradient(h, spacing=(lam,), dim=0)[0]
    hf, dhf = h.flatten(2), dh.flatten(2)  # (M, N, d)
    mh, mdh = hf.mean(1, keepdim=True), dhf.mean(1, keepdim=True)
    var = (hf - mh).pow(2).sum(2).mean(1)
    cov = ((dhf - mdh) * (hf - mh)).sum(2).mean(1)
    scale = mh.pow(2).sum(2).squeeze(1) + 1e-30
    s = torch.where(var > 1e-12 * scale, cov / var.clamp_min(1e-300), torch.zeros_like(var))
    b = (mdh - s.view(M, 1, 1) * mh).squeeze(1).view(M, *X.shape[2:])
    info = {"grid_size": grid_size, "substeps": substeps, "probes": probes, "n": N,
            "l_range": [float(l.min()), float(l.max())],
            "s_range": [float(s.min()), float(s.max())]}
    return Statistics(lam, l, s, b), info
