"""Operator learning of the PF-ODE solution trajectory (Zheng et al. 2023, DSNO / DFNO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..nets.operator import TrajectoryOperator
from .base import Batch, LossContext, register_method
from .knowledge import KnowledgeDistillation

__all__ = ["OperatorDistillation"]


@register_method
@dataclass(frozen=True)
class OperatorDistillation(KnowledgeDistillation):
    """A :class:`~fewstep.nets.operator.TrajectoryOperator` regressed onto the teacher's whole
    PF-ODE trajectory from noise (Zheng et al. 2023, Eq. 10 with squared error, averaged over
    the ``slots`` time points): ``num_pairs`` trajectories are drawn once with ``solver`` at
    ``nfe`` evaluations (as :class:`KnowledgeDistillation` draws its pairs, cached in the
    checkpointed state), and the states after ``slots`` evenly spaced solver steps, the last
    one the sample, are the targets. One evaluation of the student gives the trajectory and its
    endpoint; the bench samples it at NFE 1 like a KD student.

    The student must be a ``TrajectoryOperator`` with ``sigma_max`` equal to the method's; its
    sigma grid is set to :meth:`slot_sigmas` (weights kept)."""

    name: ClassVar[str] = "dfno"

    sampler: ClassVar[str | None] = "one_step"
    network: ClassVar[str | None] = "operator"
    slots: int = 8

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"dfno needs slots >= 1; got {self.slots}")

    def slot_steps(self) -> list[int]:
        """The solver steps (1-based step ends into the teacher plan's sigmas) whose states
        are the targets: ``round(n j / slots)`` for ``j = 1..slots``, ``n`` the plan's steps."""
        n = len(self.teacher_plan().sigmas) - 1
        if self.slots > n:
            raise ValueError(f"dfno slots={self.slots} exceeds the {n} steps of the teacher's "
                             f"{self.solver!r} plan at nfe={self.nfe}; lower slots or raise nfe")
        return [round(n * j / self.slots) for j in range(1, self.slots + 1)]

    def slot_sigmas(self) -> list[float]:
        """The noise levels of the target states, decreasing to 0."""
        sigmas = self.teacher_plan().sigmas
        return [float(sigmas[k]) for k in self.slot_steps()]

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        if not isinstance(template, TrajectoryOperator):
            raise ValueError(f"dfno trains a fewstep.nets.TrajectoryOperator; got a "
                             f"{type(template).__name__} (build the student as "
                             "TrajectoryOperator(shape, sigma_max=...))")
        if template.sigma_max != self.sigma_max:
            raise ValueError(f"the TrajectoryOperator starts at sigma_max="
                             f"{template.sigma_max:g}, the method at {self.sigma_max:g}")
        sigmas = self.slot_sigmas()
        if template.sigmas is not None and list(template.sigmas) == sigmas:
            return template
        return template.with_sigmas(sigmas)

    def make_pairs(self, shape: tuple[int, ...], like: Tensor, ctx: LossContext) -> None:
        """Draw ``z`` and store it with the teacher's states at :meth:`slot_sigmas`."""
        ctx.state["z"], ctx.state["trajectory"] = self.draw_trajectories(
            shape, like, ctx, self.slot_steps())

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        z, target = self.pairs(batch, ctx, "trajectory")
        u = student(z)
        if u.shape != target.shape:
            raise ValueError(f"the student's trajectory has shape {list(u.shape)}, the "
                             f"teacher's {list(target.shape)}: build it with init_student")
        return (u - target).pow(2).mean()

