"""fewstep solvers as a diffusers scheduler.

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="unipc_bh2")

diffusers' scheduler API inverts control: the pipeline owns the loop, calls the network once
per entry of ``scheduler.timesteps`` (published before the first call) and hands each output
to ``step()``. fewstep's solvers are generators that yield each evaluation they need
(:mod:`fewstep.solvers.driver`). :class:`FewstepScheduler` steps that generator directly:

1. ``set_timesteps(n)`` plans the solver for ``n`` network evaluations (NFE, as
   :func:`fewstep.solvers.plan`) and *probes* it once on a 1-element dummy with a zero
   denoiser, recording the sigma of every evaluation. Those sigmas (mapped to the
   network's timesteps) become ``.timesteps``, so ``len(timesteps) == n`` for every solver.
2. The first ``step()`` creates the solver's generator and takes its first request
   ``(x, sigma)``; each ``step()`` turns the network output into ``x0_hat``, sends it to the
   generator and returns the next request's sample (in the pipeline's process space) as
   ``prev_sample``. Everything runs in the caller's thread (its grad mode, autocast and
   stream); abandoning a run (``set_timesteps`` again, or dropping the scheduler) closes the
   generator.

Which solvers fit:

- **multistep** (ddim/euler, ddim_eta, ddpm/euler_ancestral, dpmpp_2m/3m, dpmpp_2m_sde,
  unipc_*, unip_bh2, ipndm, ipndm_v, deis): one evaluation per step at the step's start, so
  ``timesteps`` are the plan's sigmas (without the final 0), exactly like diffusers' own
  multistep schedulers.
- **singlestep** (heun, heun_churn, dpm_solver_2/3, dpmpp_2s): a step of order k evaluates at
  k points, the later ones at intermediate sigmas (Heun at the step's end, DPM-Solver at
  lambda-midpoints) and at samples the solver builds inside the step. diffusers' one-call-per-
  ``step`` API can only serve them because every intermediate evaluation is published as an
  extra timestep (as diffusers' Heun does) and ``prev_sample`` between two calls of one step
  is an intermediate point, not a sample on the solver's trajectory. Their evaluation sigmas
  depend only on the schedule, never on the sample, so the probe finds them.
- **adaptive** (rk45, dpm_solver_adaptive): the step sizes, hence the number and place of the
  evaluations, follow error estimates from the sample itself; they cannot be announced in
  ``timesteps`` before the first call. Unsupported, with an error.

Conventions: the pipeline's sample is the process sample (``init_noise_sigma = 1``,
``scale_model_input`` is the identity), so DDPMPipeline/DDIMPipeline-style loops that never
scale work unchanged. The noise level comes from the solver (use ``ddim_eta``/``ddpm`` or
``solver_kwargs={"eta": ...}``); DDIMPipeline's default ``eta=0`` is accepted, other values
raise. The loop must feed ``prev_sample`` back unchanged (inpainting loops that blend the
sample between steps are detected and rejected); it may start at any step boundary
(img2img, ``set_begin_index``). Sampler-side options of the source config (clip_sample,
thresholding, timestep_spacing, karras sigmas, ...) are not applied: the fewstep
``schedule`` decides where to step.

A scheduler holds the state of one run, so one scheduler serves one pipeline loop at a time:
a ``step()`` or ``set_timesteps()`` entered while another thread is inside one raises
``RuntimeError`` at once, and a loop whose run was replaced by another loop's
``set_timesteps()`` gets a ``RuntimeError`` at its next ``step()`` (never a silently wrong
sample, never a wait). Give each concurrent pipeline its own scheduler
(``FewstepScheduler.from_config(sched.config)``).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from .. import solvers
from ..schedules import SCHEDULES
from ..solvers.driver import Request, Steps, check_final, check_output, drive
from .diffusers import (
    drop_learned_variance,
    flow_shift,
    prediction_from_config,
    process_from_scheduler_config,
    process_kind,
    time_scale,
    x0_from_output,
)

__all__ = ["FewstepScheduler", "FewstepSchedulerOutput", "probe"]

_SCHEDULES: dict[str, Callable[..., Tensor]] = {**SCHEDULES, "flow_shift": flow_shift}


def probe(spec: solvers.SolverSpec, sigmas: Tensor, knobs: Mapping[str, Any]
          ) -> tuple[list[float], list[int]]:
    """The sigma of every evaluation ``spec`` requests on ``sigmas``, and the request index
    at which each step starts, from one run on a 1-element dummy answered with zeros."""
    calls: list[float] = []
    ends: list[int] = []

    def zero(x: Tensor, sigma: Tensor) -> Tensor:
        calls.append(float(sigma.reshape(-1)[0]))  # float64 dummy: the exact request sigma
        return torch.zeros_like(x)

    drive(spec.steps(torch.zeros(1, 1, dtype=torch.float64), sigmas,
                     generator=torch.Generator().manual_seed(0),
                     callback=lambda info: ends.append(len(calls)), **knobs), zero)
    return calls, [0, *ends[:-1]]


class _Exclusive:
    """Non-blocking exclusive entry to a scheduler's run state: ``list.pop`` and
    ``list.append`` are atomic (CPython FAQ, "What kinds of global value mutation are
    thread-safe?"), so a second thread entering while one is inside gets a clear error at
    once instead of racing on the state or waiting for it."""

    def __init__(self) -> None:
        self._token = [True]

    def __enter__(self) -> None:
        try:
            self._token.pop()
        except IndexError:
            raise RuntimeError("FewstepScheduler is in use by another thread (a step() or "
                               "set_timesteps() is running): one scheduler holds one run; "
                               "give each concurrent pipeline its own, e.g. "
                               "FewstepScheduler.from_config(scheduler.config)") from None

    def __exit__(self, *exc: object) -> None:
        self._token.append(True)


@dataclass
class FewstepSchedulerOutput(BaseOutput):
    """``prev_sample``: the next sample the network sees (or the final sample);
    ``pred_original_sample``: the x0 estimate of this network output."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


@dataclass(frozen=True)
class _Plan:
    sigmas: Tensor           # the solver's step sigmas (ending in 0)
    knobs: dict[str, Any]    # plan knobs (per-step orders) and solver_kwargs
    evals: list[float]       # sigma of each network call, in order
    starts: list[int]        # call index at which each step starts


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """Any non-adaptive fewstep solver as a diffusers scheduler (see the module docstring).

    ``num_inference_steps`` is the number of network evaluations (NFE), for every solver.
    ``schedule`` names a fewstep schedule (default "karras" over the process's sigma range for
    DDPM-style models, "flow_shift" with the config's ``shift`` for flow matching);
    ``schedule_kwargs`` and ``solver_kwargs`` override its and the solver's defaults. The
    noise-process fields mirror diffusers' configs so ``from_config`` of any DDPM-style or
    FlowMatch scheduler config works.
    """

    order = 1
    init_noise_sigma = 1.0
    # Config keys of these schedulers are kept (hidden) by from_config instead of warned about.
    _compatibles: ClassVar[list[str]] = [
        *(e.name for e in KarrasDiffusionSchedulers), "DDPMScheduler", "LCMScheduler",
        "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Sequence[float] | None = None,
                 prediction_type: str | None = None, shift: float = 1.0,
                 use_dynamic_shifting: bool = False,
                 noise_process: str | None = None, solver: str = "unipc_bh2",
                 solver_kwargs: dict[str, Any] | None = None, schedule: str | None = None,
                 schedule_kwargs: dict[str, Any] | None = None):
        self.spec = solvers.get(solver)
        if self.spec.kind == "adaptive":
            raise ValueError(f"solver {solver!r} is adaptive: where it evaluates the network "
                             "depends on error estimates from the sample, so its timesteps "
                             "cannot be published before sampling; use a multistep or "
                             "singlestep solver")
        if use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting=True needs the pipeline's resolution-"
                             "dependent mu; pass a static shift= instead")
        kind = noise_process or process_kind(dict(self.config))
        self.kind = kind
        self.process = process_from_scheduler_config({**self.config, "noise_process": kind})
        self.prediction = prediction_from_config({**self.config, "noise_process": kind})
        self.time_scale = time_scale({**self.config, "noise_process": kind})
        self.schedule_name = schedule or ("flow_shift" if kind == "flow" else "karras")
        if self.schedule_name not in _SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule_name!r}; available: "
                             f"{sorted(_SCHEDULES)}")
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._plan: _Plan | None = None
        self._begin_index: int | None = None
        self._exclusive = _Exclusive()
        # every prev_sample returned before a run's end, so that a loop whose run another
        # loop's set_timesteps() replaced cannot silently restart mid-way by timestep value
        self._returned: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()
        self._reset()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """As ConfigMixin.from_config, remembering whether the source config was flow matching
        (a FlowMatch config has no field that says so once its class name is dropped)."""
        if config is not None and kwargs.get("noise_process") is None:
            kwargs["noise_process"] = process_kind(config)
        if config is not None and "flow_shift" in config and "shift" not in kwargs:
            kwargs["shift"] = config["flow_shift"]  # UniPC/DPM-Solver spell the flow shift so
        return super().from_config(config, return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at ``timesteps[begin_index]`` (a step boundary); call it after
        ``set_timesteps``, as img2img pipelines do."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """Identity: the network takes the process sample as is."""
        return sample

    _RUN_STATE = ("_run", "_request", "_last", "_step_index", "_returned", "_exclusive")

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles hold the plan but no run in progress (a generator cannot be
        copied); their next ``step()`` starts a run."""
        return {k: v for k, v in self.__dict__.items() if k not in self._RUN_STATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._exclusive = _Exclusive()
        self._returned = weakref.WeakValueDictionary()
        self._reset()

    def _reset(self) -> None:
        """Drop the current run, closing its generator."""
        run = getattr(self, "_run", None)
        if run is not None:
            run.close()
        self._run: Steps | None = None
        self._request: Request | None = None
        self._last: Tensor | None = None
        self._step_index: int | None = None

    def _step_sigmas(self, steps: int) -> Tensor:
        fn = _SCHEDULES[self.schedule_name]
        params = inspect.signature(fn).parameters
        kw: dict[str, Any] = {}
        if "process" in params:
            kw["process"] = self.process
        if "sigma_min" in params:
            kw.update(sigma_min=self.process.sigma_min, sigma_max=self.process.sigma_max)
        if "shift" in params:
            kw["shift"] = float(self.config.shift)
        return fn(steps, **{**kw, **(self.config.schedule_kwargs or {})})

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Plan the solver for ``num_inference_steps`` network evaluations and publish the
        timestep of each evaluation (resets the begin index, as diffusers' schedulers do)."""
        with self._exclusive:
            self._set_timesteps(num_inference_steps, device)

    def _set_timesteps(self, num_inference_steps: int,
                       device: str | torch.device | None) -> None:
        self._reset()
        self._begin_index = None
        p = solvers.plan(self.spec.name, num_inference_steps)
        sigmas = self._step_sigmas(p.steps)
        knobs = {**p.knobs, **(self.config.solver_kwargs or {})}
        evals, starts = probe(self.spec, sigmas, knobs)
        self._plan = _Plan(sigmas, knobs, evals, starts)
        self.num_inference_steps = len(evals)
        ev = torch.tensor(evals, dtype=torch.float64)
        self.sigmas = torch.cat([ev, sigmas[-1:]]).to(device)
        self.timesteps = (self.process.t(ev) * self.time_scale).float().to(device)

    def _alpha(self, sigma: float) -> float:
        if sigma == 0:
            return 1.0
        return float(self.process.alpha_of_sigma(torch.tensor(sigma, dtype=torch.float64)))

    def _start_index(self, timestep: Any) -> int:
        if self._begin_index is not None:
            return self._begin_index
        t = torch.as_tensor(timestep, dtype=torch.float32).to(self.timesteps.device)
        return int((self.timesteps - t).abs().argmin())

    def _start(self, sample: Tensor, timestep: Any, generator: Any) -> None:
        plan, i = self._plan, self._start_index(timestep)
        if self._begin_index is None and i > 0 and self._returned.get(id(sample)) is sample:
            raise RuntimeError(f"step() got a prev_sample this scheduler returned in the middle "
                               f"of an earlier run, at timesteps[{i}], but that run was replaced "
                               "by set_timesteps(): is another pipeline sharing this scheduler? "
                               "Give each concurrent pipeline its own FewstepScheduler (to "
                               "resume deliberately, call set_begin_index first)")
        if i not in plan.starts:
            raise ValueError(f"cannot start at timesteps[{i}]: it is an intermediate "
                             f"evaluation of a {self.spec.name} step; start at one of "
                             f"{plan.starts}")
        j = plan.starts.index(i)
        dtype = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        x = sample.to(dtype) / self._alpha(plan.evals[i])
        knobs = dict(plan.knobs)
        if "orders" in knobs:
            knobs["orders"] = tuple(knobs["orders"])[j:]
        self._run = self.spec.steps(x, plan.sigmas[j:], generator=generator, **knobs)
        try:
            self._request = next(self._run)
        except BaseException:
            self._reset()
            raise
        if self._request[0] is not x:
            self._reset()
            raise ValueError(f"solver {self.spec.name!r} changes the sample before its first "
                             f"network call on this schedule (e.g. churn noise at "
                             f"sigma={plan.evals[i]:g}); a diffusers loop calls the network on "
                             "its own start sample first")
        self._step_index = i

    def _check(self, timestep: Any, sample: Tensor) -> None:
        i = self._step_index
        if i >= len(self.timesteps):
            raise RuntimeError(f"all {len(self.timesteps)} timesteps have been stepped; call "
                               "set_timesteps() again")
        if self._request is None:
            raise RuntimeError("the run stopped at an error in an earlier step(); call "
                               "set_timesteps() again")
        expected = float(self.timesteps[i])
        if abs(float(timestep) - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ValueError(f"step() got timestep {float(timestep):g} but timesteps[{i}] is "
                             f"{expected:g}; FewstepScheduler must be stepped in order")
        sigma, planned = self._request[1], self._plan.evals[i]
        if abs(sigma - planned) > 1e-4 * planned:
            raise RuntimeError(f"solver {self.spec.name!r} evaluated at sigma={sigma:g} but "
                               f"timesteps[{i}] was published for sigma={planned:g}")
        last = self._last
        if last is not None and sample is not last and not torch.allclose(
                sample.float(), last.float(), rtol=1e-3, atol=1e-3):
            raise ValueError("the sample passed to step() is not the prev_sample returned by "
                             "the previous step(); FewstepScheduler keeps the solver's own state "
                             "and cannot follow loops that edit the sample between steps (or "
                             "two pipelines sharing one scheduler)")

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor,
             generator: Any = None, return_dict: bool = True, eta: float = 0.0,
             use_clipped_model_output: bool | None = None) -> FewstepSchedulerOutput | tuple:
        """Feed one network output to the solver and return its next evaluation point (or the
        final sample after the last evaluation) as ``prev_sample``."""
        with self._exclusive:
            return self._step(model_output, timestep, sample, generator, return_dict, eta)

    def _step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: Any,
              return_dict: bool, eta: float) -> FewstepSchedulerOutput | tuple:
        if self._plan is None:
            raise RuntimeError("call set_timesteps() before step()")
        if eta:
            raise ValueError(f"FewstepScheduler takes its noise level from the solver, not from "
                             f"step(eta={eta}); use solver='ddim_eta' / 'ddpm' or "
                             "solver_kwargs={'eta': ...}")
        if self._step_index is None:
            self._start(sample, timestep, generator)
        self._check(timestep, sample)
        x, sigma = self._request
        try:
            out = drop_learned_variance(model_output, sample)
            x0 = x0_from_output(self.process, self.prediction, out.to(x.dtype), x,
                                self._plan.evals[self._step_index])
            check_output(x0, x, f"timesteps[{self._step_index}] (sigma={sigma:g})")
            self._request = self._run.send(x0)
            x_next, sigma_next = self._request[0], self._plan.evals[self._step_index + 1]
        except StopIteration as done:  # the solver returned its final sample
            x_next, sigma_next = check_final(done.value), float(self._plan.sigmas[-1])
            self._run, self._request = None, None
        except BaseException:  # the run cannot continue after an error in its step
            self._run.close()
            self._run, self._request = None, None
            raise
        prev = (x_next * self._alpha(sigma_next)).to(sample.dtype)
        self._step_index += 1
        self._last = prev
        if self._run is not None:
            self._returned[id(prev)] = prev
        if not return_dict:
            return (prev,)
        return FewstepSchedulerOutput(prev_sample=prev, pred_original_sample=x0.to(sample.dtype))

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process ``x_t = alpha(t) x0 + std(t) eps`` at network timesteps."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1) / self.time_scale
        a, s = (v.to(original_samples).reshape(-1, *[1] * (original_samples.ndim - 1))
                for v in (self.process.alpha(t), self.process.std(t)))
        return a * original_samples + s * noise
