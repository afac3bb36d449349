"""Schedule search for a registered multistep solver against the teacher's own trajectories.

- :func:`gits`: Geometry-Inspired Time Scheduling (Chen et al. 2024): the teacher's trajectories
  on a fine grid, the local error of a first-order jump between every two grid points measured
  on them, and dynamic programming for the ``nfe``-jump path of least total error.
- :func:`ays`: Align-Your-Steps-style iterative refinement (Sabour et al. 2024): each interior
  sigma in turn is moved to minimise the objective with the others fixed, sweep after sweep.
  The objective is the distance to the teacher's ODE endpoint on the calibration set (the
  quantity the KL upper bound of AYS stands in for, measured directly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ..solvers.registry import get as get_solver
from ..solvers.registry import plan

__all__ = ["ays", "base_plan", "cheapest_path", "endpoint_loss", "gits", "gits_costs",
           "teacher_trajectories"]


def endpoint_loss(D: Any, x: Tensor, ref: Tensor, base: str, sigmas: Tensor | list[float],
                  knobs: Mapping[str, Any] | None = None) -> float:
    """ode_rmse, ``sqrt(mean((solver(x) - ref)^2))`` over every element, of solver ``base`` on
    ``sigmas`` (the bench's ode_rmse)."""
    with torch.no_grad():
        out = get_solver(base)(D, x, sigmas, **(knobs or {}))
    return float((out.double() - ref).pow(2).mean().sqrt())


def teacher_trajectories(D: Any, x: Tensor, grid: Tensor, substeps: int = 4
                         ) -> tuple[Tensor, Tensor]:
    """The teacher's PF-ODE states ``X`` (M, N, ...) at the M grid sigmas (decreasing, all
    positive) from ``x`` at ``grid[0]``, and its denoised estimates ``D(X[m], grid[m])``, by
    Heun (Karras et al. 2022, Alg. 1) with ``substeps`` log-uniform steps per grid interval."""
    log_g = grid.double().log()
    t = torch.linspace(0, 1, substeps + 1, dtype=torch.float64)[:-1]
    fine = torch.cat([(log_g[:-1, None] + t * (log_g[1:, None] - log_g[:-1, None])).flatten(),
                      log_g[-1:]]).exp()
    states, denoised = [x], []

    def keep(info: dict[str, Any]) -> None:
        if info["i"] % substeps == 0:
            denoised.append(info["denoised"])
        if (info["i"] + 1) % substeps == 0:
            states.append(info["x"])

    with torch.no_grad():
        last = get_solver("heun")(D, x, fine, callback=keep)
        denoised.append(D(last, last.new_full((last.shape[0],), float(grid[-1]))))
    return torch.stack(states), torch.stack(denoised)


def gits_costs(D: Any, x: Tensor, ref: Tensor, grid: Tensor, substeps: int = 4) -> Tensor:
    """GITS's jump costs (M, M + 1) on the M grid sigmas: ``C[i, j]`` (i < j < M) is the RMS
    distance between the teacher's state at ``grid[j]`` and a DDIM step to it from the
    teacher's state at ``grid[i]`` (over the calibration samples ``x``); ``C[i, M]`` is the
    distance of the jump to 0, ``D(X_i, grid[i])``, from the reference endpoints ``ref``;
    impossible jumps cost inf."""
    X, Dx = teacher_trajectories(D, x.double(), grid, substeps)
    M = len(grid)
    cost = torch.full((M, M + 1), math.inf, dtype=torch.float64)
    for i in range(M - 1):
        r = (grid[i + 1:] / grid[i]).view(-1, *[1] * (X.ndim - 1))
        step = r * X[i] + (1 - r) * Dx[i]  # DDIM from grid i to every later grid point
        cost[i, i + 1:M] = (step - X[i + 1:]).flatten(1).pow(2).mean(1).sqrt()
    cost[:, M] = (Dx - ref.double()).flatten(1).pow(2).mean(1).sqrt()
    return cost


def cheapest_path(cost: Tensor, jumps: int) -> tuple[list[int], float]:
    """Dynamic programming (GITS, Alg. 1): the grid indices ``[0, i_1, ..., i_{jumps-1}]`` of
    the path from node 0 that reaches the end node (column M of ``cost``, sigma = 0) in
    exactly ``jumps`` jumps at least total cost, and that cost."""
    M = cost.shape[0]
    best = torch.full((jumps, M), math.inf, dtype=torch.float64)  # k jumps to node j
    arg = torch.zeros((jumps, M), dtype=torch.long)  # its predecessor
    best[0, 0] = 0.0
    for k in range(1, jumps):
        best[k], arg[k] = (best[k - 1][:, None] + cost[:, :M]).min(0)
    total = best[jumps - 1] + cost[:, M]
    j = int(torch.argmin(total))
    path, value = [j], float(total[j])
    for k in range(jumps - 1, 0, -1):
        j = int(arg[k, j])
        path.append(j)
    return path[::-1], value


def gits(D: Any, x: Tensor, ref: Tensor, nfe: int, sigma_min: float, sigma_max: float, *,
         grid_size: int = 100, substeps: int = 4) -> tuple[Tensor, dict[str, Any]]:
    """GITS (Chen et al. 2024): the ``nfe + 1`` sigmas (ending in 0) of least summed local
    error (:func:`gits_costs`, :func:`cheapest_path`) among ``grid_size`` log-uniform grid
    sigmas in ``[sigma_min, sigma_max]``."""
    if grid_size < nfe:
        raise ValueError(f"grid_size={grid_size} must be at least nfe={nfe}")
    grid = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), grid_size,
                          dtype=torch.float64)
    grid[0], grid[-1] = sigma_max, sigma_min  # exactly, whatever logspace rounds to
    path, total = cheapest_path(gits_costs(D, x, ref, grid, substeps), nfe)
    sigmas = torch.cat([grid[path], grid.new_zeros(1)])
    return sigmas, {"grid_size": grid_size, "substeps": substeps, "grid_path": path,
                    "dp_cost": total}


def ays(D: Any, x: Tensor, ref: Tensor, base: str, init: Tensor, sigma_min: float, *,
        sweeps: int = 3, tol: float = 1e-3, maxiter: int = 20) -> tuple[Tensor, dict[str, Any]]:
    """Coordinate refinement of the interior sigmas of ``init`` (n + 1, ending in 0): each
    ``s_i`` (i = 1..n-1) in turn minimises the calibration ode_rmse of solver ``base`` over
    ``log s_i`` in ``(log s_{i+1}, log s_{i-1})`` (``s_n`` read as ``sigma_min``) by bounded
    Brent search, for up to ``sweeps`` sweeps or until a sweep gains less than ``tol``
    (relative)."""
    s = init.double().clone()
    n = len(s) - 1

    def loss(v: Tensor) -> float:
        return endpoint_loss(D, x, ref, base, v)

    history = [loss(s)]
    current = history[0]
    for _ in range(sweeps):
        for i in range(1, n):
            lo = math.log(sigma_min if i == n - 1 else float(s[i + 1]))
            hi = math.log(float(s[i - 1]))
            pad = 1e-6 * (hi - lo)

            def f(u: float, i: int = i) -> float:
                trial = s.clone()
                trial[i] = math.exp(u)
                return loss(trial)

            res = minimize_scalar(f, bounds=(lo + pad, hi - pad), method="bounded",
                                  options={"xatol": 1e-3, "maxiter": maxiter})
            if res.fun < current:
                s[i], current = math.exp(float(res.x)), float(res.fun)
        history.append(current)
        if history[-2] - history[-1] < tol * history[-2]:
            break
    return s, {"sweeps_run": len(history) - 1, "calibration_loss": history}


def base_plan(base: str, nfe: int, sigma_min: float, sigma_max: float) -> Tensor:
    """The untuned starting point: ``base``'s Karras plan at ``nfe``."""
    return plan(base, nfe, "karras", sigma_min=sigma_min, sigma_max=sigma_max).sigmas.double()
