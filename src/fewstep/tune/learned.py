"""Gradient-fitted solvers: the learned multistep solver of :mod:`fewstep.tune.solver` fitted by
backpropagation through the whole solve to the teacher's reference endpoints.

- LD3 (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs"): the step sigmas and
  decoupled evaluation sigmas are learned; the update is DPM-Solver++(2M) on the learned sigmas.
- S4S / GS-style (Frankel et al. 2025, "S4S: Solving for a diffusion model solver"; Kim et al.
  "Distilling ODE solvers" GS): per-step multistep weights on the last ``K`` data estimates
  are learned as well, initialised at DPM-Solver++(2M)'s so that the untrained solver is it.

Parametrisation: sigmas through :func:`~fewstep.tune.solver.monotone_sigmas` (strictly
decreasing by construction, last nonzero sigma above ``sigma_min / 2``), evaluation sigmas
``xi_i = s_i exp(c tanh(delta_i))`` (within a factor ``e^c`` of the step sigma), weights ``W =
W_2M(sigmas) + dW`` (``dW`` zero at the start and on entries without history), and ``x_weights``
(zero at the start) added to the coefficient of ``x_i``. Loss: mean squared distance to the
reference endpoints.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .solver import dpmpp_2m_weights, monotone_logits, monotone_sigmas, rollout

__all__ = ["GROUPS", "LearnedSolver", "fit"]

GROUPS = ("sigmas", "eval", "weights", "x")


@dataclass(frozen=True)
class LearnedSolver:
    """Fitted parameters of the learned multistep solver (float64, detached)."""

    sigmas: Tensor  # (n + 1,), ending in 0
    eval_sigmas: Tensor  # (n,)
    weights: Tensor  # (n, K)
    x_weights: Tensor  # (n,), added to the coefficient of x_i


class _Params(torch.nn.Module):
    mask: Tensor

    def __init__(self, init: Tensor, sigma_min: float, K: int, slack: float):
        super().__init__()
        n = len(init) - 1
        self.sigma_max, self.sigma_min, self.K, self.slack = float(init[0]), sigma_min, K, slack
        # the schedule may end up to a factor 2 below sigma_min; the init maps back exactly
        self.sigma_min = sigma_min / 2
        self.theta = torch.nn.Parameter(monotone_logits(init, self.sigma_min))
        self.delta = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.dW = torch.nn.Parameter(torch.zeros(n, K, dtype=torch.float64))
        self.dA = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        rows = torch.arange(n)[:, None]
        mask = torch.arange(K)[None, :] <= rows  # step i has i + 1 estimates
        mask[-1] = False  # the step to 0 stays first order (x0 = D)
        mask[-1, 0] = True
        self.register_buffer("mask", mask.double())

    def forward(self) -> LearnedSolver:
        s = monotone_sigmas(self.theta, self.sigma_max, self.sigma_min)
        xi = s[:-1] * torch.exp(self.slack * torch.tanh(self.delta))
        W = dpmpp_2m_weights(s, self.K) + self.dW * self.mask
        return LearnedSolver(s, xi, W, self.dA)


def fit(D: Any, x: Tensor, ref: Tensor, init: Tensor, sigma_min: float, *,
        learn: Collection[str], K: int = 3, iters: int = 200, lr: float = 0.02,
        slack: float = 0.5, x_val: Tensor | None = None,
        ref_val: Tensor | None = None, val_every: int = 10
        ) -> tuple[LearnedSolver, dict[str, Any]]:
    """Fit the parameter groups ``learn`` (a subset of :data:`GROUPS`) from the schedule
    ``init`` (n + 1 sigmas ending in 0, ``init[-2] >= sigma_min``) by Adam on the full
    calibration batch ``x`` (N, ...) against ``ref``; returns the parameters of least
    calibration loss and a log. Given a validation batch (``x_val``, ``ref_val``), the
    parameters are instead chosen on it, among the start and every ``val_every``-th iterate,
    so an overfitted fit falls back towards its start. With nothing learned the result is
    DPM-Solver++(2M) on ``init``. Raises ``ValueError`` on an unknown group."""
    bad = sorted(set(learn) - set(GROUPS))
    if bad:
        raise ValueError(f"unknown parameter group(s) {bad}; expected a subset of {GROUPS}")
    params = _Params(init.double(), sigma_min, K, slack)
    names = {"sigmas": "theta", "eval": "delta", "weights": "dW", "x": "dA"}
    trainable = [getattr(params, names[g]) for g in GROUPS if g in learn]
    x, ref = x.double(), ref.double()

    def loss_of(p: LearnedSolver, x: Tensor, ref: Tensor) -> Tensor:
        return (rollout(D, x, p.sigmas, p.eval_sigmas, p.weights, p.x_weights)
                - ref).pow(2).mean()

    validate = x_val is not None and ref_val is not None

    def score(p: LearnedSolver) -> float:  # the selection criterion
        with torch.no_grad():
            if validate:
                return float(loss_of(p, x_val.double(), ref_val.double()))  # type: ignore[union-attr]
            return float(loss_of(p, x, ref))

    with torch.no_grad():
        # detached: the start's x_weights is the parameter itself, which Adam moves in place
        # (the start kept on validation came back with the last iterate's x_weights)
        best = _detached(params())
        best_loss = float(loss_of(best, x, ref))
    log: dict[str, Any] = {"calibration_mse": [best_loss]}
    if validate:
        best_loss = score(best)
        log["validation_mse"] = [best_loss]
    if trainable and iters > 0:
        opt = torch.optim.Adam(trainable, lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            p = params()
            loss = loss_of(p, x, ref)
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            value = float(loss.detach())
            log["calibration_mse"].append(value)
            if validate:
                if (len(log["calibration_mse"]) - 1) % val_every == 0:
                    current = params()
                    value = score(current)
                    log["validation_mse"].append(value)
                    if value < best_loss:
                        best, best_loss = _detached(current), value
            elif value < best_loss:
                best, best_loss = _detached(p), value
    log["best_validation_mse" if validate else "best_calibration_mse"] = best_loss
    return _detached(best), log


def _detached(p: LearnedSolver) -> LearnedSolver:
    return LearnedSolver(*(t.detach().clone() for t in (p.sigmas, p.eval_sigmas, p.weights,
                                                         p.x_weights)))
