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
    num_pairs: int = 4096
    solver: str = "ipndm"
    nfe: int = 35
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    chunk: int = 1024

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return warm_start(template, teacher_model)

    def make_pairs(self, shape: tuple[int, ...], like: Tensor, ctx: LossContext) -> None:
        """Draw ``z ~ N(0, sigma_max^2 I)`` and store ``(z, ODE(z))`` in ``ctx.state``."""
        plan = solvers.plan(self.solver, self.nfe, "karras", sigma_min=self.sigma_min,
                            sigma_max=self.sigma_max)
        z = self.sigma_max * ctx.randn_like(like.new_empty((self.num_pairs, *shape)))
        x0 = torch.cat([ctx.teacher_solve(self.solver, c, plan.sigmas, **plan.knobs)
                        for c in z.split(self.chunk)])
        ctx.state["z"], ctx.state["x0"] = z, x0

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x_data, cond = split_batch(batch)
        if cond:
            raise ValueError("kd distils an unconditional teacher; the batch has conditioning "
                             f"{sorted(cond)}")
        if "z" not in ctx.state:
            self.make_pairs(tuple(x_data.shape[1:]), x_data, ctx)
        idx = ctx.randint(self.num_pairs, x_data.shape[0], device=x_data.device)
        z, target = ctx.state["z"][idx], ctx.state["x0"][idx]
        sigma = z.new_full((z.shape[0],), self.sigma_max)
        return (student(z, sigma) - target).pow(2).mean()
