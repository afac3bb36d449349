"""Progressive distillation: halve the number of sampling steps each round."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser, append_dims
from ..schedules import karras
from .base import (
    Batch,
    LossContext,
    MethodBase,
    edm_weight,
    register_method,
    split_batch,
    warm_start,
)
from .guided import guidance_range, sample_w

__all__ = ["ProgressiveDistillation"]


@register_method
@dataclass(frozen=True)
class ProgressiveDistillation(MethodBase):
    """One student DDIM step matches two teacher DDIM steps through the x-target
    ``x~ = (x'' - (s'/s) x) / (1 - s'/s)`` (Salimans & Ho 2022, Alg. 2, in sigma-space), with
    SNR+1-type weighting ``(s^2 + sd^2) / (s sd)^2``.

    Round ``r`` (``steps_per_round`` optimiser steps each) trains a student of
    ``teacher_steps / 2^(r+1)`` steps; at each round boundary the student becomes the teacher.
    All grids are nested subsets of ``karras(teacher_steps)``; sample a ``k``-step student with
    ``solvers.get("ddim")(student, x, method.sigmas(k))``.

    ``base_steps`` (default ``teacher_steps``) sets the base grid ``karras(base_steps)`` when a
    chain of runs continues one distillation (e.g. 16 -> 8, then 8 -> 4 from that student):
    every run of the chain then uses the same nested grids.

    ``guidance = (w_min, w_max)`` is stage 2 of guided distillation (Meng et al. 2023, Sec.
    3.2; :mod:`fewstep.distill.guided`): the teacher is a w-conditioned student, each row's
    ``w ~ U[w_min, w_max]`` is passed as ``w=`` to the student and to its teacher, and a
    ``k``-step student is sampled with ``w=`` in ``cond``.
    """

    name: ClassVar[str] = "pd"

    sampler: ClassVar[str | None] = "own_grid"
    teacher_steps: int = 64
    final_steps: int = 1
    steps_per_round: int = 1000
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    guidance: tuple[float, float] | None = None
    base_steps: int | None = None

    def __post_init__(self) -> None:
        if self.guidance is not None:
            guidance_range(self.guidance)
        ratio = self.teacher_steps // max(self.final_steps, 1)
        if self.final_steps < 1 or ratio < 2 or ratio * self.final_steps != self.teacher_steps \
                or ratio & (ratio - 1):
            raise ValueError(f"teacher_steps / final_steps must be a power of two >= 2; got "
                             f"{self.teacher_steps} / {self.final_steps}")
        base = self.grid_steps
        ratio = base // self.teacher_steps
        if base % self.teacher_steps or ratio & (ratio - 1):
            raise ValueError(f"base_steps / teacher_steps must be a power of two; got {base} / "
                             f"{self.teacher_steps}")

    @property
    def rounds(self) -> int:
        return int(math.log2(self.teacher_steps // self.final_steps))

    @property
    def total_steps(self) -> int:
        """Optimiser steps of all rounds (the ``TrainConfig.steps`` to use)."""
        return self.rounds * self.steps_per_round

    def round_at(self, step: int) -> int:
        return min(step // self.steps_per_round, self.rounds - 1)

    def student_steps(self, round_: int) -> int:
        return self.teacher_steps // 2 ** (round_ + 1)

    @property
    def grid_steps(self) -> int:
        """Steps of the base grid ``karras(grid_steps)``: ``base_steps``, else
        ``teacher_steps``."""
        return self.teacher_steps if self.base_steps is None else self.base_steps

    def sigmas(self, steps: int) -> Tensor:
        """The ``steps``-step grid: every ``grid_steps/steps``-th value of the base grid."""
        if steps < 1 or self.grid_steps % steps:
            raise ValueError(f"steps must divide the base grid's {self.grid_steps}; got {steps}")
        base = karras(self.grid_steps, self.sigma_min, self.sigma_max, self.rho)
        return base[:: self.grid_steps // steps]

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return warm_start(template, teacher_model)

    def on_step(self, step: int, student: nn.Module, ctx: LossContext) -> None:
        """At a round boundary, freeze a copy of the student as the next round's teacher."""
        r = self.round_at(step)
        if r > 0 and step == r * self.steps_per_round:
            ctx.state["teacher"] = copy.deepcopy(student).eval().requires_grad_(False)

    def target(self, teacher: Denoiser, x: Tensor, i: Tensor, n: int, ctx: LossContext,
               cond: dict[str, Tensor]) -> Tensor:
        """The x-target of step ``i`` of an ``n``-step student from ``x`` at its sigma: two
        teacher DDIM steps ``x''``, then ``(x'' - (s'/s) x) / (1 - s'/s)``."""
        fine = self.sigmas(2 * n).to(x)
        paths = torch.stack([fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]], dim=1)
        x_teacher = ctx.teacher_solve_rows("ddim", x, paths, teacher=teacher, row_cond=cond)
        ratio = append_dims(fine[2 * i + 2] / fine[2 * i], x.ndim)
        return (x_teacher - ratio * x) / (1 - ratio)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        teacher = ctx.state.get("teacher")
        teacher = ctx.require_teacher() if teacher is None else teacher
        x0, cond = split_batch(batch)
        if self.guidance is not None:
            cond = {**cond, "w": sample_w(ctx, x0, self.guidance)}
        n = self.student_steps(self.round_at(ctx.step))
        i = ctx.randint(n, x0.shape[0], device=x0.device)
        sigma = self.sigmas(n).to(x0)[i]
        x = x0 + append_dims(sigma, x0.ndim) * ctx.randn_like(x0)
        err = (student(x, sigma, **cond) - self.target(teacher, x, i, n, ctx, cond))
        return (edm_weight(sigma, self.sigma_data) * err.flatten(1).pow(2).mean(1)).mean()
