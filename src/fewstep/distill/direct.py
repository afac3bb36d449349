"""Direct consistency models: regress onto the teacher's full PF-ODE solution."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import solvers
from ..denoiser import append_dims
from ..schedules import karras
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start
from .consistency import check_consistency_student

__all__ = ["DirectCM"]


@functools.cache
def _paths(num_scales: int, solver: str, nfe: int, sigma_min: float, sigma_max: float,
           rho: float) -> tuple[Tensor, Tensor, dict]:
    levels = karras(num_scales, sigma_min, sigma_max, rho, final_zero=False)[:-1]
    plans = [solvers.plan(solver, nfe, "karras", sigma_min=sigma_min, sigma_max=float(s),
                          rho=rho) for s in levels]
    return levels, torch.stack([p.sigmas for p in plans]), plans[0].knobs


@register_method
@dataclass(frozen=True)
class DirectCM(MethodBase):
    """Consistency function ``f(x_sigma, sigma)`` regressed directly onto the teacher's PF-ODE
    solution ``ODE(x_sigma, sigma -> 0)`` for ``sigma`` uniform over the CD discretisation
    ``karras(num_scales)`` (Vouitsis et al. 2024, "Direct CMs", Sec. 4; Song et al. 2023,
    Eq. 7 with the target replaced by the full solve). Use a ``ConsistencyPrecond`` student;
    the solve uses ``solver`` at ``nfe`` evaluations on a Karras grid from sigma."""

    name: ClassVar[str] = "direct_cm"

    sampler: ClassVar[str | None] = "consistency"
    num_scales: int = 18
    solver: str = "ipndm"
    nfe: int = 17
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        check_consistency_student(template, self.sigma_min, "Direct CM")
        return warm_start(template, teacher_model)

    def paths(self) -> tuple[Tensor, Tensor, dict]:
        """The sigma levels (excluding sigma_min) and, per level, the solver's sigmas to 0."""
        return _paths(self.num_scales, self.solver, self.nfe, self.sigma_min, self.sigma_max,
                      self.rho)

    def target(self, x: Tensor, i: Tensor, ctx: LossContext, cond: dict[str, Tensor]) -> Tensor:
        """The teacher's PF-ODE solution from ``x`` at level ``i`` (per row) down to 0."""
        _, paths, knobs = self.paths()
        return ctx.teacher_solve_rows(self.solver, x, paths[i.cpu()], row_cond=cond, **knobs)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        levels, _, _ = self.paths()
        i = ctx.randint(len(levels), x0.shape[0])
        sigma = levels[i].to(x0)
        x = x0 + append_dims(sigma, x0.ndim) * ctx.randn_like(x0)
        return (student(x, sigma, **cond) - self.target(x, i, ctx, cond)).pow(2).mean()
