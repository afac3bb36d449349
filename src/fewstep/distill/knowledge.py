"""Knowledge distillation of the PF-ODE into a one-step student."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import solvers
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start

__all__ = ["KnowledgeDistillation"]


@register_method
@dataclass(frozen=True)
class KnowledgeDistillation(MethodBase):
    """One-step student ``D_s(z, sigma_max)`` regressed onto the teacher's PF-ODE endpoint
    ``ODE(z)`` over a fixed set of ``num_pairs`` noise/sample pairs (Luhman & Luhman 2021,
    Eq. 6, with squared error), the pairs made once with ``solver`` at ``nfe`` evaluations."""

    name: ClassVar[str] = "kd"

    sampler: ClassVar[str | None] = "one_step"
    num_pairs: int = 4096
    solver: str = "ipndm"
    nfe: int = 35
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    chunk: int = 1024

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return warm_start(template, teacher_model)

    def teacher_plan(self) -> solvers.Plan:
        """The teacher's solver plan: ``nfe`` evaluations of ``solver`` on the Karras schedule
        from ``sigma_max`` to ``sigma_min`` (then 0)."""
        return solvers.plan(self.solver, self.nfe, "karras", sigma_min=self.sigma_min,
                            sigma_max=self.sigma_max)

    def draw_trajectories(self, shape: tuple[int, ...], like: Tensor, ctx: LossContext,
                          keep: list[int]) -> tuple[Tensor, Tensor]:
        """``num_pairs`` start noises ``z ~ N(0, sigma_max^2 I)`` and the teacher's states
        after the solver steps ``keep`` (1-based step ends; the last step's end is the sample),
        shapes ``(num_pairs, *shape)`` and ``(num_pairs, len(keep), *shape)``; every teacher
        evaluation is counted in ``ctx``."""
        plan = self.teacher_plan()
        z = self.sigma_max * ctx.randn_like(like.new_empty((self.num_pairs, *shape)))
        parts = []
        for chunk in z.split(self.chunk):
            states: dict[int, Tensor] = {}

            def record(info: dict, states: dict[int, Tensor] = states) -> None:
                states[info["i"] + 1] = info["x"]

            end = ctx.teacher_solve(self.solver, chunk, plan.sigmas, callback=record,
                                    **plan.knobs)
            states[len(plan.sigmas) - 1] = end
            parts.append(torch.stack([states[k] for k in keep], dim=1))
        return z, torch.cat(parts)

    def make_pairs(self, shape: tuple[int, ...], like: Tensor, ctx: LossContext) -> None:
        """Draw ``z ~ N(0, sigma_max^2 I)`` and store ``(z, ODE(z))`` in ``ctx.state``."""
        last = len(self.teacher_plan().sigmas) - 1
        z, x = self.draw_trajectories(shape, like, ctx, [last])
        ctx.state["z"], ctx.state["x0"] = z, x[:, 0]

    def pairs(self, batch: Batch, ctx: LossContext, key: str) -> tuple[Tensor, Tensor]:
        """A random batch of cached ``(z, ctx.state[key])`` rows (drawn on first use with
        :meth:`make_pairs`, the batch's size); refuses a conditional batch."""
        x_data, cond = split_batch(batch)
        if cond:
            raise ValueError(f"{self.name} distils an unconditional teacher; the batch has "
                             f"conditioning {sorted(cond)}")
        if "z" not in ctx.state:
            self.make_pairs(tuple(x_data.shape[1:]), x_data, ctx)
        idx = ctx.randint(self.num_pairs, x_data.shape[0], device=x_data.device)
        return ctx.state["z"][idx], ctx.state[key][idx]

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        z, target = self.pairs(batch, ctx, "x0")
        sigma = z.new_full((z.shape[0],), self.sigma_max)
        return (student(z, sigma) - target).pow(2).mean()
