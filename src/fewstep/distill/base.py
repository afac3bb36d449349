"""The small-loss-object API shared by every training and distillation method.

A method is a frozen dataclass of hyper-parameters, registered by name, with

- ``init_student(teacher_model, template) -> nn.Module``: the model to train;
- ``loss(student, batch, ctx) -> Tensor``: a scalar loss for one batch;
- optionally ``on_step(step, student, ctx)``: called before each step's loss (schedules,
  rounds, lazily built state).

Everything a loss needs beyond its hyper-parameters comes in a :class:`LossContext`: the
(frozen) teacher, the EMA student, the loop's seeded generator, the step, a counter of teacher
evaluations and a ``state`` dict that is saved with every checkpoint. Teacher ODE steps are
always taken with a registered solver through :meth:`LossContext.teacher_solve`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .. import solvers
from .._registry import Registry
from ..denoiser import CountingDenoiser, Denoiser
from .lockstep import run_lockstep

__all__ = [
    "Batch",
    "LossContext",
    "Method",
    "MethodBase",
    "available_methods",
    "edm_weight",
    "ema_update_",
    "get_method",
    "network_kind",
    "register_method",
    "split_batch",
    "warm_start",
]

Batch = Tensor | Mapping[str, Tensor]


def split_batch(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """``(x0, cond)``: a tensor batch is unconditional; a dict batch has samples under ``"x"``
    and every other key is passed to the denoiser as conditioning (e.g. ``cond=labels``)."""
    if isinstance(batch, Tensor):
        return batch, {}
    cond = {k: v for k, v in batch.items() if k != "x"}
    return batch["x"], cond


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """Loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022,
    Table 1), which gives the preconditioned network a unit-variance target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@torch.no_grad()
def ema_update_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``theta_ema <- decay theta_ema + (1 - decay) theta`` in place, one fused ``lerp`` over
    all parameters (buffers are copied); ``ema`` and ``model`` share an architecture."""
    e: list[Tensor] = list(ema.parameters())
    p: list[Tensor] = list(model.parameters())
    if len(e) != len(p):
        raise ValueError(f"EMA has {len(e)} parameter tensors, the model {len(p)}")
    torch._foreach_lerp_(e, [t.detach() for t in p], 1 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)


@dataclass
class LossContext:
    """What a loss sees besides the student and the batch.

    ``teacher_nfe`` counts teacher evaluations in units of one evaluation of a full training
    batch: a loss that calls the teacher ``calls`` times on ``rows`` rows adds
    ``calls * rows / batch_size`` (use :meth:`count_teacher`, or the ``teacher_*`` helpers,
    which count for you). ``state`` holds method state (tensors, modules with the student's
    architecture, JSON-able values); the training loop checkpoints and restores it.
    """

    teacher: Denoiser | None
    ema: nn.Module | None
    generator: torch.Generator
    batch_size: int
    step: int = 0
    teacher_nfe: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    lockstep: bool = True  # batch per-row solves into one teacher call per solver step

    def count_teacher(self, calls: int, rows: int) -> None:
        """Record ``calls`` teacher evaluations of ``rows`` rows each."""
        self.teacher_nfe += calls * rows / self.batch_size

    def require_teacher(self) -> Denoiser:
        """The teacher, or a clear error for methods that need one."""
        if self.teacher is None:
            raise ValueError("this method needs a teacher: call train(..., teacher=denoiser)")
        return self.teacher

    @torch.no_grad()
    def teacher_denoise(self, x: Tensor, sigma: Tensor, *, teacher: Denoiser | None = None,
                        **cond: Any) -> Tensor:
        """One counted teacher evaluation ``D(x, sigma, **cond)``."""
        D = teacher if teacher is not None else self.require_teacher()
        self.count_teacher(1, x.shape[0])
        return D(x, sigma, **cond)

    @torch.no_grad()
    def teacher_solve(self, solver: str, x: Tensor, sigmas: Tensor | list[float], *,
                      teacher: Denoiser | None = None, cond: Mapping[str, Any] | None = None,
                      **knobs: Any) -> Tensor:
        """Run the registered ``solver`` on the teacher from ``x`` (at ``sigmas[0]``) along
        ``sigmas`` (shared by all rows), counting every evaluation. ``cond`` is the teacher's
        conditioning (e.g. ``{"cond": labels}``); knobs go to the solver."""
        counter = CountingDenoiser(teacher if teacher is not None else self.require_teacher())
        out = solvers.get(solver)(counter, x, sigmas, cond=cond, **knobs)
        self.teacher_nfe += counter.rows / self.batch_size
        return out

    def teacher_solve_rows(self, solver: str, x: Tensor, paths: Tensor, *,
                           teacher: Denoiser | None = None,
                           row_cond: Mapping[str, Tensor] | None = None, **knobs: Any) -> Tensor:
        """Like :meth:`teacher_solve` with a per-row sigma path ``paths`` of shape
        ``(batch, k)``: rows sharing a path are solved together, and the groups' teacher calls
        are batched into one call per solver step (:func:`~fewstep.distill.lockstep.run_lockstep`)
        unless ``lockstep`` is False. Stochastic solvers run group after group so their noise
        stays deterministic.
        ``row_cond`` is per-row conditioning, sliced with the rows."""
        D = teacher if teacher is not None else self.require_teacher()
        unique, inverse = torch.unique(paths, dim=0, return_inverse=True)
        groups = [(inverse == j).nonzero().flatten() for j in range(len(unique))]
        conds = [{k: v[rows] for k, v in (row_cond or {}).items()} for rows in groups]
        spec = solvers.get(solver)
        if spec.stochastic or not self.lockstep:
            parts = [self.teacher_solve(solver, x[rows], path, teacher=D, cond=cond, **knobs)
                     for rows, path, cond in zip(groups, unique, conds, strict=True)]
        else:
            counter = CountingDenoiser(D)
            with torch.no_grad():
                parts = run_lockstep(counter, [spec.steps(x[rows], path, **knobs)
                                               for rows, path in zip(groups, unique,
                                                                     strict=True)], conds)
            self.teacher_nfe += counter.rows / self.batch_size
        out = torch.empty_like(x)
        for rows, part in zip(groups, parts, strict=True):
            out[rows] = part
        return out

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like x from the loop's generator."""
        return solvers.randn_like(x, self.generator)

    def rand(self, n: int, *, like: Tensor) -> Tensor:
        """``n`` uniforms in [0, 1) from the loop's generator, on ``like``'s device/dtype."""
        g = self.generator
        return torch.rand(n, generator=g, device=g.device, dtype=like.dtype).to(like.device)

    def randint(self, high: int, n: int, *, device: torch.device | str = "cpu") -> Tensor:
        """``n`` integers in [0, high) from the loop's generator."""
        g = self.generator
        return torch.randint(high, (n,), generator=g, device=g.device).to(device)


@runtime_checkable
class Method(Protocol):
    """A training or distillation method: a frozen dataclass of hyper-parameters."""

    name: ClassVar[str]

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        ...

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        ...


STUDENT_SAMPLERS = ("consistency", "lcm", "one_step", "own_grid", "own_levels", "gan", "ddim")
"""How a method's student is sampled (by the bench and ``fewstep sample``); a method's
``sampler`` is one of these, or None for a method whose output is not a few-step student (a
teacher, a flow, an autoencoder):

- ``consistency``: the multistep consistency sampler at any NFE (Song et al. 2023, Alg. 1);
- ``lcm``: the same at a guidance scale ``w`` given to the student (Luo et al. 2023);
- ``one_step``: ``x0 = D(sigma_max z, sigma_max)``, NFE 1 only;
- ``own_grid``: DDIM on the student's own training grid, NFE = its step count only;
- ``own_levels``: the consistency sampler over k of the student's own levels;
- ``gan``: the method's own posterior sampler, NFE = its T only;
- ``ddim``: a denoiser at every sigma, DDIM at any NFE on the case's schedule.
"""
CONSISTENCY_SAMPLERS = ("consistency", "lcm")  # the student is f(x, sigma) with f(x, sigma_min) = x
OWN_SAMPLERS = ("own_grid", "one_step", "own_levels", "gan")  # never sampled by another solver


# What a method trains, so a caller can build its template: an EDM denoiser (EDMPrecond), a
# consistency function (ConsistencyPrecond), a rectified-flow velocity field (FlowPrecond), or
# a network of its own architecture with no preconditioning wrapper (WHOLE_NETWORKS: a
# trajectory operator, a generator/discriminator pair, an autoencoder).
NETWORK_KINDS = ("denoiser", "consistency", "velocity", "operator", "gan", "autoencoder")
WHOLE_NETWORKS = ("operator", "gan", "autoencoder")


class MethodBase:
    """Defaults for :class:`Method`: train ``template`` as given, no per-step hook, no
    few-step student (``sampler`` None, see :data:`STUDENT_SAMPLERS`), a network that
    :func:`network_kind` derives from the sampler (``network`` None)."""

    name: ClassVar[str] = ""
    sampler: ClassVar[str | None] = None
    network: ClassVar[str | None] = None

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return template

    def on_step(self, step: int, student: nn.Module, ctx: LossContext) -> None:
        return None


def warm_start(template: nn.Module, teacher_model: nn.Module | None, *,
               new: tuple[str, ...] = ()) -> nn.Module:
    """``template`` with the teacher's weights when their parameter names and shapes match
    (e.g. ``ConsistencyPrecond(net)`` from ``EDMPrecond(net)``); the template unchanged when the
    teacher has no parameters (an analytic teacher). Tensors whose names contain one of
    ``new`` (e.g. ``".embed.w."``, a guidance-scale embedding the teacher lacks) may be
    missing from the teacher and keep the template's initialisation. Other mismatches
    raise."""
    if teacher_model is None or not isinstance(teacher_model, nn.Module):
        return template
    source = teacher_model.state_dict()
    if not any(isinstance(v, nn.Parameter) for v in teacher_model.parameters()):
        return template
    target = template.state_dict()
    bad = [k for k, v in target.items() if (k not in source or source[k].shape != v.shape)
           and not (k not in source and any(part in k for part in new))]
    if bad:
        raise ValueError(f"cannot initialise the student from the teacher: {len(bad)} of its "
                         f"tensors are missing or differ in shape (first: {bad[0]!r}); pass a "
                         "template with the teacher's architecture")
    student = copy.deepcopy(template)
    student.load_state_dict({k: source[k] for k in target if k in source}, strict=not new)
    return student


_METHODS: Registry[type] = Registry("method")


def register_method(cls: type) -> type:
    """Class decorator: register a method under its ``name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute `name`")
    if (sampler := getattr(cls, "sampler", None)) is not None and sampler not in STUDENT_SAMPLERS:
        raise ValueError(f"{cls.__name__}.sampler={sampler!r}; expected one of "
                         f"{', '.join(STUDENT_SAMPLERS)} or None")
    if (network := getattr(cls, "network", None)) is not None \
            and network not in NETWORK_KINDS:
        raise ValueError(f"{cls.__name__}.network={network!r}; expected one of "
                         f"{', '.join(NETWORK_KINDS)} or None")
    return _METHODS.add(name, cls)


def get_method(name: str) -> type:
    """The method class registered as ``name`` (call it with hyper-parameters); raises
    :class:`~fewstep._registry.UnknownNameError` (a ValueError) listing the methods otherwise."""
    return _METHODS[name]


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return _METHODS.names()


def student_sampler(name: str) -> str | None:
    """How a student of the registered method ``name`` is sampled (one of
    :data:`STUDENT_SAMPLERS`), or None when the method makes no few-step student; ValueError
    for an unknown method."""
    return getattr(get_method(name), "sampler", None)


def network_kind(name: str) -> str:
    """What the registered method ``name`` trains, one of :data:`NETWORK_KINDS`: its
    declared ``network``, else a consistency function for consistency-type samplers
    (:data:`CONSISTENCY_SAMPLERS`), a generator/discriminator pair for ``gan``, an EDM
    denoiser otherwise. Raises ValueError for an unknown method."""
    cls = get_method(name)
    if (network := getattr(cls, "network", None)) is not None:
        return str(network)
    sampler = getattr(cls, "sampler", None)
    return ("consistency" if sampler in CONSISTENCY_SAMPLERS
            else "gan" if sampler == "gan" else "denoiser")


def student_methods(sampler: str | None = None) -> list[str]:
    """Registered methods whose students the bench and ``fewstep sample`` can sample (with
    ``sampler``: only those sampled that way)."""
    return [m for m in available_methods() if student_sampler(m) is not None
            and sampler in (None, student_sampler(m))]
