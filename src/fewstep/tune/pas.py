"""PAS coordinates (Wang et al. 2024, Alg. 1-2): learned step by step on the calibration
trajectories, kept where they help on the validation ones.

For each step ``i`` in turn, the teacher's own state at ``sigma_{i+1}`` (Heun with fine
substeps; the reference endpoint at 0) is the target; the corrected step of
:mod:`fewstep.solvers.pas` is linear in the coordinates ``c_i``, so the least-squares ``c_i``
over every calibration sample is one ``lstsq``. It is kept only if it lowers the validation
samples' distance to their targets at that step by more than ``tol`` (relative; the paper's
adaptive search), and the whole set only if the endpoint loss is no worse than the base's on
calibration and on validation; otherwise that step (or every step) stays the base solver's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..solvers.common import eps_of
from ..solvers.pas import BASES, basis, corrected, direction
from .schedule import teacher_trajectories

__all__ = ["fit_pas"]


class _Run:
    """One set's PAS state, stepped in lockstep with the fit."""

    def __init__(self, x: Tensor, base: str, k: int):
        self.x0, self.x, self.k, self.m = x, x, k, BASES[base]
        self.eps: list[Tensor] = []
        self.taken: list[Tensor] = []

    def step(self, D: Any, s: float, s_next: float) -> tuple[Tensor, Tensor]:
        """Evaluate; return the base direction and its PCA basis (not yet stepped)."""
        with torch.no_grad():
            denoised = D(self.x, self.x.new_full((self.x.shape[0],), s))
        self.eps = [eps_of(self.x, denoised, s), *self.eps[: self.m - 1]]
        d = direction(self.eps)
        return d, basis(self.x0, self.taken, d, self.k)

    def take(self, d: Tensor, h: float) -> None:
        self.taken.append(d)
        self.x = self.x + h * d


def _mse(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean())


def fit_pas(D: Any, x: Tensor, ref: Tensor, x_val: Tensor, ref_val: Tensor, sigmas: Tensor, *,
            base: str = "ddim", k: int = 4, tol: float = 1e-3, substeps: int = 8
            ) -> tuple[Tensor, dict[str, Any]]:
    """PAS coordinates (n, k) for ``base`` on ``sigmas`` (n + 1, ending in 0) from calibration
    (``x``, ``ref``) and validation (``x_val``, ``ref_val``) start samples and reference
    endpoints; returns them and a log (per-step losses, kept steps, endpoint losses)."""
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    pos = torch.tensor(s[:-1], dtype=torch.float64)
    targets = []
    for xs, r in ((x, ref), (x_val, ref_val)):
        X, _ = teacher_trajectories(D, xs.double(), pos, substeps)
        targets.append([*X[1:], r.double()])  # the teacher's state at sigma_1 .. sigma_n = 0
    runs = [_Run(x.double(), base, k), _Run(x_val.double(), base, k)]
    coords = torch.zeros(n, k, dtype=torch.float64)
    log: dict[str, Any] = {"kept": [], "step_val_mse": [], "step_val_mse_base": []}
    for i in range(n):
        h = s[i + 1] - s[i]
        (d, U), (dv, Uv) = (r.step(D, s[i], s[i + 1]) for r in runs)
        kk = U.shape[1]
        norm = d.flatten(1).norm(dim=1)[:, None, None]
        A = (h * norm * U.flatten(2)).transpose(1, 2).reshape(-1, kk)  # (N dim, k')
        resid = (targets[0][i] - runs[0].x - h * d).flatten()
        c = torch.linalg.lstsq(A, resid[:, None]).solution[:, 0]
        trial = torch.zeros(k, dtype=torch.float64)
        trial[:kk] = c
        base_val = _mse(runs[1].x + h * dv, targets[1][i])
        new_val = _mse(runs[1].x + h * corrected(dv, Uv, trial), targets[1][i])
        keep = bool(torch.isfinite(c).all()) and new_val < (1 - tol) * base_val
        log["step_val_mse_base"].append(base_val)
        log["step_val_mse"].append(new_val if keep else base_val)
        if keep:
            coords[i] = trial
            log["kept"].append(i)
            d, dv = corrected(d, U, trial), corrected(dv, Uv, trial)
        runs[0].take(d, h)
        runs[1].take(dv, h)
    log["calibration_rmse"] = _mse(runs[0].x, ref.double()) ** 0.5
    log["validation_rmse"] = _mse(runs[1].x, ref_val.double()) ** 0.5
    return coords, log
