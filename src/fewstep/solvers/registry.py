"""One registry of solvers and the NFE budget helper ``plan``.

Kinds:
- ``multistep``: one evaluation per step (Euler, DDIM, DPM-Solver++ 2M/3M, UniPC, iPNDM, DEIS);
  ``n`` steps cost ``n`` evaluations.
- ``singlestep``: a step of order k costs k evaluations (Heun, DPM-Solver-2/3, DPM-Solver++ 2S);
  the per-step ``orders`` are a knob so any NFE is reachable, and the step to sigma = 0 is
  always first order.
- ``adaptive``: NFE follows the error tolerances; there is no plan.
- ``parallel``: runs the grid of a sequential first-order sampler (DDIM, DDPM) with more
  evaluations in fewer sequential rounds (ParaDiGMS); its NFE follows its tolerance, so there
  is no plan either: pass the sequential grid, e.g. ``plan("ddim", steps).sigmas``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .._registry import Registry
from ..denoiser import Denoiser
from ..schedules import check_schedule_kwargs, get_schedule
from .common import Callback, Generator, singlestep_orders
from .driver import SolverFunction, Steps, drive

__all__ = ["KINDS", "Plan", "SolverSpec", "alias", "available", "get", "plan", "register",
           "sample"]

KINDS = ("multistep", "singlestep", "adaptive", "parallel")


@dataclass(frozen=True)
class SolverSpec:
    """What the bench and ``plan`` need to know about a solver, and the solver itself: call
    it with the function face ``spec(denoiser, x, sigmas, *, cond=None, generator=None,
    callback=None, **knobs)`` or step its generator ``spec.steps(x, sigmas, **knobs)``; the
    entry's ``defaults`` are the knobs it passes unless overridden.

    ``order`` is the nominal order of one full step as this entry runs it (global error
    O(h^order) once the history is full; a singlestep method's stages per step), measured by
    ``tests/solvers/test_exact.py``; ``history`` is how many evaluations one full step
    combines (1 for singlestep methods). The two differ: UniPC-3 combines 3 evaluations and
    its corrector makes it order 4; iPNDM combines 4 with fixed Adams-Bashforth weights, which
    on the non-uniform grids diffusion uses are second order. A multistep run warms up with
    lower orders, so over a short range its measured global order is min(order, 2), or
    min(order, 3) with a corrector."""

    name: str
    fn: SolverFunction
    order: int
    kind: str
    stochastic: bool
    min_nfe: int = 1
    defaults: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    alias_of: str | None = None
    requires: str | None = None  # what the denoiser must be, e.g. "consistency" (a student)
    history: int = 1
    tuned: Any = None  # the fewstep.tune.TunedSolver this spec was loaded from, if any

    @property
    def plannable(self) -> bool:
        """Whether :func:`plan` can make it spend an exact NFE (multistep and singlestep
        solvers; not adaptive or parallel ones)."""
        return self.kind in ("multistep", "singlestep")

    @property
    def evals_per_step(self) -> int:
        """Evaluations of one full-order step (1 for multistep methods)."""
        return self.order if self.kind == "singlestep" else 1

    def steps(self, x: Tensor, sigmas: Tensor | list[float], *, generator: Generator = None,
              callback: Callback = None, **knobs: Any) -> Steps:
        """The solver's generator (``denoised = yield x, sigma``; returns the final sample)
        for an external driver. Unknown knobs raise ``TypeError`` listing the valid ones."""
        self.fn.check_knobs(knobs, f"solver {self.name!r}")
        return self.fn.steps(x, sigmas, generator=generator, callback=callback,
                             **{**self.defaults, **knobs})

    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor | list[float], *,
                 cond: Mapping[str, Any] | None = None, generator: Generator = None,
                 callback: Callback = None, **knobs: Any) -> Tensor:
        """Run the solver on ``denoiser`` (called as ``denoiser(x, sigma, **cond)``) from
        ``x`` at ``sigmas[0]``; returns the final sample."""
        return drive(self.steps(x, sigmas, generator=generator, callback=callback, **knobs),
                     denoiser, cond)


_REGISTRY: Registry[SolverSpec] = Registry("solver")


def register(name: str, fn: SolverFunction | Callable[..., Steps], *, order: int,
             kind: str = "multistep", stochastic: bool = False, min_nfe: int | None = None,
             reference: str = "", knobs: dict[str, Any] | None = None,
             requires: str | None = None, history: int = 1) -> SolverSpec:
    """Add a solver of nominal ``order`` whose full step combines ``history`` evaluations
    (see :class:`SolverSpec`): ``fn`` is its generator function (or the
    :class:`SolverFunction` made from it); ``knobs`` are the defaults this entry passes
    (e.g. ``{"eta": 1.0}``), overridable per call."""
    if not isinstance(fn, SolverFunction):
        fn = SolverFunction(fn, name)
    if kind not in KINDS:
        raise ValueError(f"unknown solver kind {kind!r}; expected one of {KINDS}")
    if min_nfe is None:
        min_nfe = order + 1 if kind == "singlestep" else 1
    fn.check_knobs(knobs or {}, f"solver {name!r}")
    if history < 1 or (kind == "singlestep" and history != 1):
        raise ValueError(f"history must be >= 1 (1 for a singlestep solver); got {history}")
    return _REGISTRY.add(name, SolverSpec(name, fn, order, kind, stochastic, min_nfe,
                                          dict(knobs or {}), reference, requires=requires,
                                          history=history))


def alias(name: str, target: str) -> SolverSpec:
    """Register ``name`` as another name for the solver ``target`` (e.g. euler = ddim)."""
    return _REGISTRY.add(name, dataclasses.replace(get(target), name=name, alias_of=target))


def get(name: str) -> SolverSpec:
    """Look a solver up by name; a tuned solver's directory (``PATH`` or ``tuned:PATH``, made by
    ``fewstep tune``) loads as its spec. Raises :class:`~fewstep._registry.UnknownNameError` (a
    ValueError) listing the registered solvers otherwise."""
    if name not in _REGISTRY:
        from ..tune import artefact

        if artefact.is_tuned_path(name):
            return artefact.load(name).spec(name)
    return _REGISTRY[name]


def available(kind: str | None = None, *, aliases: bool = True) -> list[str]:
    """Registered solver names, sorted; optionally of one kind, or without aliases."""
    return sorted(n for n, s in _REGISTRY.items()
                  if (kind is None or s.kind == kind) and (aliases or s.alias_of is None))


@dataclass(frozen=True)
class Plan:
    """Sigmas and knobs that make ``solver`` spend exactly ``nfe`` evaluations."""

    solver: str
    nfe: int
    sigmas: Tensor
    knobs: dict[str, Any]

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def plan(name: str, nfe: int, schedule: str = "karras", *, denoise_to_zero: bool = True,
         **schedule_kwargs: Any) -> Plan:
    """The sigmas (and per-step orders, for singlestep solvers) that spend exactly ``nfe``
    network evaluations with solver ``name`` on the named schedule. With ``denoise_to_zero``
    the last evaluation is a first-order step from sigma_min to 0; without it every evaluation
    steps between the schedule's sigmas and the sample is returned at sigma_min. A tuned
    solver's plan is its own sigmas at exactly its NFE (``schedule`` is not used)."""
    spec = get(name)
    if spec.tuned is not None:
        return spec.tuned.plan(nfe, name)
    if spec.kind == "adaptive":
        tolerances = "/".join(k for k in spec.fn.knobs if k in ("rtol", "atol", "tol"))
        raise ValueError(f"solver {name!r} is adaptive: its NFE follows {tolerances} and cannot "
                         "be planned; pass sigmas=[sigma_max, sigma_min, 0] (sigma_min > 0) "
                         "instead of nfe")
    if spec.kind == "parallel":
        raise ValueError(f"solver {name!r} is parallel: it runs a sequential sampler's grid with "
                         "more evaluations in fewer rounds, its NFE following its tolerance, and "
                         "cannot be planned; pass that grid, sigmas=plan('ddim', steps).sigmas, "
                         "instead of nfe")
    if int(nfe) != nfe or nfe < spec.min_nfe:
        raise ValueError(f"nfe={nfe!r} is below the minimum of {spec.min_nfe} for solver "
                         f"{name!r} (order {spec.order}, {spec.kind})")
    knobs: dict[str, Any] = {}
    steps = int(nfe)
    if spec.kind == "singlestep":
        # a solver with a published step structure says so (e.g. PNDM's warm-up)
        orders = getattr(spec.fn.steps_fn, "plan_orders", singlestep_orders)(
            int(nfe), spec.order, denoise_to_zero)
        knobs["orders"] = tuple(orders)
        steps = len(orders)
    check_schedule_kwargs(schedule, schedule_kwargs)
    if denoise_to_zero:
        sigmas = get_schedule(schedule)(steps, **schedule_kwargs)
    else:
        sigmas = get_schedule(schedule)(steps + 1, final_zero=False, **schedule_kwargs)
    return Plan(name, int(nfe), sigmas, knobs)


def sample(denoiser: Denoiser, x: Tensor, solver: str, nfe: int | None = None, *,
           sigmas: Tensor | list[float] | None = None, schedule: str = "karras",
           schedule_kwargs: dict[str, Any] | None = None,
           cond: Mapping[str, Any] | None = None, **knobs: Any) -> Tensor:
    """Run ``solver`` from start sample ``x`` (already scaled to ``sigmas[0]``) with either an
    NFE budget (planned on ``schedule``) or explicit ``sigmas``; ``cond`` goes to the
    denoiser, ``knobs`` (and ``generator=``, ``callback=``) to the solver."""
    spec = get(solver)
    if spec.tuned is not None:
        spec.tuned.check_teacher(denoiser)
    if (nfe is None) == (sigmas is None):
        raise ValueError("give exactly one of nfe= or sigmas=")
    if sigmas is None:
        assert nfe is not None
        p = plan(solver, nfe, schedule, **(schedule_kwargs or {}))
        sigmas, knobs = p.sigmas, {**p.knobs, **knobs}
    return spec(denoiser, x, sigmas, cond=cond, **knobs)
