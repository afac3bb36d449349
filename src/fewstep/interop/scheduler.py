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
(img2img, ``set_begin_index``, or by timestep value: among equal timesteps the one that
starts a step is chosen).

The source config (``from_config``) is read complete, class defaults included, and the noise
process is built by :func:`~fewstep.interop.diffusers.diffusers_process`, the function
:class:`~fewstep.interop.DiffusersDenoiser` uses. ``schedule="source"`` asks the source
scheduler class itself for its timesteps (``timestep_spacing``, ``steps_offset``,
``shift_terminal``, Karras sigmas, ... reproduced exactly). Source options the scheduler does
not honour are named in one ``UserWarning`` line (and kept in ``.unhonoured``). Zero terminal
SNR: the first evaluation is at sigma = inf (the network sees the pure start noise at its last
timestep), followed by one DDIM step, as trailing-spacing pipelines do.

sigma and t are float64 throughout; ``timesteps`` are published in float32; a float16 /
bfloat16 sample keeps the solver state in float32 and only ``prev_sample`` is cast back.

A scheduler holds the state of one run, so one scheduler serves one pipeline loop at a time:
a ``step()`` or ``set_timesteps()`` entered while another thread is inside one raises
``RuntimeError`` at once, and a loop whose run was replaced by another loop's
``set_timesteps()`` gets a ``RuntimeError`` at its next ``step()`` (never a silently wrong
sample, never a wait). Give each concurrent pipeline its own scheduler
(``FewstepScheduler.from_config(sched.config)``).
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from .. import solvers
from ..denoiser import NonFiniteError
from ..schedules import SCHEDULES, check_schedule_kwargs, default_schedule
from ..solvers.driver import Request, Steps, drive
from .diffusers import (
    Coefficients,
    DiffusersDenoiser,
    _init_defaults,
    diffusers_process,
    drop_learned_variance,
    flow_shift,
    process_kind,
    scheduler_class,
    source_config,
)

__all__ = ["FewstepScheduler", "FewstepSchedulerOutput", "probe", "unhonoured_options"]

_SCHEDULES: dict[str, Callable[..., Tensor]] = {**SCHEDULES, "flow_shift": flow_shift}
SOURCE = "source"  # the schedule that asks the source scheduler class for its timesteps

# Source options FewstepScheduler takes over as its own config fields (the noise process).
_PROCESS_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                 "trained_betas", "prediction_type", "shift", "use_dynamic_shifting",
                 "rescale_betas_zero_snr")
# Honoured in the process's reading of the config (diffusers_process), or checked there.
_READ = frozenset(_PROCESS_KEYS) | {"flow_shift", "use_flow_sigmas", "timestep_type",
                                    "variance_type"}
# Options that shape only the source's timesteps: honoured by schedule="source".
_SPACING = frozenset({"timestep_spacing", "steps_offset", "shift_terminal", "use_karras_sigmas",
                      "use_exponential_sigmas", "use_beta_sigmas", "sigma_min", "sigma_max",
                      "original_inference_steps", "interpolation_type", "time_shift_type",
                      "invert_sigmas"})
# Options at a value that changes nothing (besides None / False, which never do).
_NEUTRAL: dict[str, Any] = {"set_alpha_to_one": True, "steps_offset": 0,
                            "timestep_type": "discrete", "lambda_min_clipped": -math.inf}
# Options that only matter when another one is on.
_ONLY_WITH = {"clip_sample_range": "clip_sample", "sample_max_value": "thresholding",
              "dynamic_thresholding_ratio": "thresholding",
              **dict.fromkeys(("base_shift", "max_shift", "base_image_seq_len",
                               "max_image_seq_len", "time_shift_type"), "use_dynamic_shifting")}


def unhonoured_options(config: Mapping[str, Any], schedule: str) -> dict[str, Any]:
    """The options of a complete source config that a FewstepScheduler with ``schedule`` does
    not apply, at values that would change sampling (None, False and the neutral values in
    ``_NEUTRAL`` are left out, as are options whose switch is off)."""
    honoured = _READ | (_SPACING if schedule == SOURCE else frozenset())
    out = {}
    for k, v in config.items():
        if k.startswith("_") or k in honoured or v is None or v is False:
            continue
        if k in _NEUTRAL and v == _NEUTRAL[k]:
            continue
        if k in _ONLY_WITH and not config.get(_ONLY_WITH[k]):
            continue
        out[k] = v
    return out


def probe(spec: solvers.SolverSpec, sigmas: Tensor, knobs: Mapping[str, Any]
          ) -> tuple[list[float], list[int]]:
    """The sigma of every evaluation ``spec`` requests on ``sigmas``, and the request index
    at which each step starts, from one run on a 1-element dummy answered with zeros."""
    calls: list[float] = []
    ends: list[int] = []

    def zero(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        calls.append(float(sigma.reshape(-1)[0]))  # float64 dummy: the exact request sigma
        return torch.zeros_like(x)

    drive(spec.steps(torch.zeros(1, 1, dtype=torch.float64), sigmas,
                     generator=torch.Generator().manual_seed(0),
                     callback=lambda info: ends.append(len(calls)), **knobs), zero)
    return calls, [0, *ends[:-1]]


def _finite(x: Tensor) -> bool:
    """Whether every entry is finite: one reduction, confirmed entry-wise only when the sum
    is not finite (a sum of huge finite values can overflow)."""
    x = x.detach()
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


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
    """One planned run. ``evals`` may start with inf (the terminal evaluation, then
    ``terminal`` is True); the solver runs on ``sigmas`` (finite, ending in 0) from
    ``evals[terminal]``."""

    sigmas: Tensor                  # the solver's step sigmas (ending in 0)
    knobs: dict[str, Any]           # plan knobs (per-step orders) and solver_kwargs
    evals: list[float]              # sigma of each network call, in order (float64)
    starts: list[int]               # call index at which each step starts
    terminal: bool                  # evals[0] is sigma = inf, answered by one DDIM step
    coefficients: list[Coefficients]  # network map at each evaluation
    alphas: list[float]             # process scale of each evaluation's sample, and the end
    timesteps: list[float]          # published timesteps, as Python floats


class FewstepScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """Any non-adaptive fewstep solver as a diffusers scheduler (see the module docstring).

    ``num_inference_steps`` is the number of network evaluations (NFE), for every solver.
    ``schedule`` names a fewstep schedule (default :func:`fewstep.schedules.default_schedule`
    of the process, measured in ``benchmarks/default_schedules.py``: "trailing") or
    ``"source"`` (the source scheduler's own timesteps, exactly); ``schedule_kwargs`` and
    ``solver_kwargs`` override its and the solver's defaults. The noise-process fields mirror
    diffusers' configs; ``source_config`` keeps the complete config ``from_config`` was given.

    ``solver`` may be a tuned solver's directory (``fewstep tune --teacher diffusers:PATH``);
    it runs on its own sigmas at exactly its NFE, and only for the model it was tuned on: pass
    that network as ``model=`` (``from_config(config, solver=PATH, model=pipe.unet)``; it is
    not saved in the config), whose identity (:func:`fewstep.tune.fingerprint` of the network
    as a :class:`~fewstep.interop.DiffusersDenoiser`) and largest sigma under this config must
    equal the artefact's. Raises ``ValueError`` in one line otherwise.
    """

    order = 1
    init_noise_sigma = 1.0
    # Config keys of these schedulers are kept (hidden) by from_config instead of warned about.
    _compatibles = [  # noqa: RUF012  (diffusers reads this class attribute)
        *(e.name for e in KarrasDiffusionSchedulers), "DDPMScheduler", "LCMScheduler",
        "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]
    ignore_for_config = ["model"]  # noqa: RUF012  (diffusers reads this class attribute)

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Sequence[float] | None = None,
                 prediction_type: str | None = None, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, rescale_betas_zero_snr: bool = False,
                 noise_process: str | None = None, solver: str = "unipc_bh2",
                 solver_kwargs: dict[str, Any] | None = None, schedule: str | None = None,
                 schedule_kwargs: dict[str, Any] | None = None,
                 source_config: dict[str, Any] | None = None, model: nn.Module | None = None):
        self.spec = solvers.get(solver)
        if not self.spec.plannable:
            raise ValueError(f"solver {solver!r} is {self.spec.kind}: where it evaluates the "
                             "network depends on error estimates from the sample, so its timesteps "
                             "cannot be published before sampling; use a multistep or "
                             "singlestep solver")
        if use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting=True needs the pipeline's resolution-"
                             "dependent mu; pass a static shift= instead")
        cfg: dict[str, Any] = {k: v for k, v in self.config.items() if k != "source_config"}
        kind = noise_process or process_kind(cfg)
        self.kind = kind
        self.map = diffusers_process({**cfg, "noise_process": kind})
        self.process, self.prediction = self.map.process, self.map.prediction
        self.time_scale = self.map.scale
        if self.spec.tuned is not None:  # its sigmas belong to the model it was tuned on
            self._check_tuned(solver, model, schedule, schedule_kwargs,
                              {**cfg, "noise_process": kind})
        self.schedule_name = schedule or default_schedule(kind)  # measured
        if self.schedule_name not in (*_SCHEDULES, SOURCE):
            raise ValueError(f"unknown schedule {self.schedule_name!r}; available: "
                             f"{sorted([*_SCHEDULES, SOURCE])}")
        if self.schedule_name != SOURCE:  # a typo fails here, named, not in set_timesteps
            check_schedule_kwargs(self.schedule_name, schedule_kwargs or {},
                                  _SCHEDULES[self.schedule_name])
        if self.schedule_name == SOURCE and (
                source_config is None or scheduler_class(source_config) is None):
            raise ValueError("schedule='source' needs the source scheduler's class: build with "
                             "FewstepScheduler.from_config(scheduler) or from a config that "
                             "names its _class_name")
        self.unhonoured = unhonoured_options(source_config or {}, self.schedule_name)
        if self.unhonoured:
            name = (source_config or {}).get("_class_name", "source")
            warnings.warn(f"FewstepScheduler does not honour these options of the {name} "
                          "config: " + ", ".join(f"{k}={v!r}" for k, v in self.unhonoured.items())
                          + f" (solver {solver!r} and "
                          + ("its tuned sigmas" if self.spec.tuned else
                             f"schedule {self.schedule_name!r}")
                          + " decide the sampling)", UserWarning, stacklevel=3)
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._plan: _Plan | None = None
        self._plans: dict[int, _Plan] = {}
        self._begin_index: int | None = None
        self._exclusive = _Exclusive()
        # every prev_sample returned before a run's end, so that a loop whose run another
        # loop's set_timesteps() replaced cannot silently restart mid-way by timestep value
        self._returned: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()
        self._reset()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False,
                    **kwargs: Any) -> Any:
        """Build from any diffusers scheduler config (a mapping, a scheduler, a path), read
        complete with its class's defaults (:func:`~fewstep.interop.diffusers.source_config`):
        the noise-process fields are taken over, the whole config is kept as
        ``source_config``, ``kwargs`` override both."""
        if config is None:
            raise ValueError("from_config needs a scheduler config (mapping, scheduler or path)")
        src = source_config(config)
        if src.get("_class_name") == cls.__name__:  # one of ours, saved or live: a copy
            own = {k: v for k, v in src.items() if k != "_class_name"}
            return super().from_config(own, return_unused_kwargs, **kwargs)
        own = {k: src[k] for k in _PROCESS_KEYS if k in src}
        if "flow_shift" in src and "shift" not in src:
            own["shift"] = src["flow_shift"]  # UniPC/DPM-Solver spell the flow shift so
        own["noise_process"] = process_kind(src)
        own["source_config"] = _jsonable(src)
        return super().from_config({**_init_defaults(cls), **own}, return_unused_kwargs,
                                   **kwargs)

    @classmethod
    def extract_init_dict(cls, config_dict: Any, **kwargs: Any) -> Any:
        """diffusers' split of ``from_config`` arguments, passing ``model=`` (a tuned solver's
        network, never part of the config) on to ``__init__``."""
        init, unused, hidden = super().extract_init_dict(config_dict, **kwargs)
        if "model" in unused:
            init["model"] = unused.pop("model")
        return init, unused, hidden

    def _check_tuned(self, solver: str, model: nn.Module | None, schedule: str | None,
                     schedule_kwargs: dict[str, Any] | None, config: dict[str, Any]) -> None:
        """Refuse a tuned solver unless ``model`` is the network it was tuned on (under this
        noise process) and no schedule is asked for (it runs on its own sigmas)."""
        tuned = self.spec.tuned
        if model is None:
            raise ValueError(f"solver {solver!r} is a tuned solver: its schedule was fitted to "
                             f"one model ({tuned.teacher}); pass that network so the scheduler "
                             "can check it: FewstepScheduler.from_config(config, solver=PATH, "
                             "model=pipe.unet)")
        if schedule is not None or schedule_kwargs:
            raise ValueError(f"solver {solver!r} is a tuned solver: it runs on its own sigmas; "
                             f"schedule={schedule!r} cannot apply")
        tuned.check_teacher(DiffusersDenoiser(model, config), type(model).__name__)
        top = float(tuned.sigmas[0])
        if not math.isclose(top, self.process.sigma_max, rel_tol=1e-6):
            raise ValueError(f"tuned solver {solver!r} starts at sigma {top:g}, the largest "
                             f"sigma of the noise process it was tuned under; this config's is "
                             f"{self.process.sigma_max:g} (another noise process)")

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])

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

    def _source_sigmas(self, steps: int) -> Tensor:
        """The source scheduler's own timesteps for ``steps`` steps as float64 sigmas (inf at
        a terminal timestep); consecutive repeats (Heun's second evaluations) are merged."""
        src = self.config["source_config"]
        cls = scheduler_class(src)
        if cls is None:
            raise ValueError(f"schedule='source': no scheduler class for {src!r}")
        sched = cls.from_config({k: v for k, v in src.items() if k != "_class_name"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.set_timesteps(steps)
        ts = torch.as_tensor(sched.timesteps).to(torch.float64)
        ts = torch.unique_consecutive(ts)
        if len(ts) != steps:
            raise ValueError(f"schedule='source': {cls.__name__}.set_timesteps({steps}) gives "
                             f"{len(ts)} distinct timesteps, not one per step; use a fewstep "
                             "schedule for this source")
        return self.map.sigma_of_timestep(ts)

    def _step_sigmas(self, steps: int) -> Tensor:
        if self.schedule_name == SOURCE:
            return torch.cat([self._source_sigmas(steps), torch.zeros(1, dtype=torch.float64)])
        fn = _SCHEDULES[self.schedule_name]
        params = inspect.signature(fn).parameters
        kw: dict[str, Any] = {}
        if "process" in params:
            kw["process"] = self.process
        if "sigma_min" in params:
            kw.update(sigma_min=self.process.sigma_min, sigma_max=self.process.sigma_max)
        if "shift" in params:
            kw["shift"] = float(self.config["shift"])
        sigmas = fn(steps, **{**kw, **(self.config["schedule_kwargs"] or {})})
        if self.map.terminal is not None and self.kind == "vp_discrete":
            # zero terminal SNR: the first evaluation is the terminal one (sigma = inf)
            sigmas = torch.cat([sigmas.new_full((1,), math.inf), sigmas])
        return sigmas

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Plan the solver for ``num_inference_steps`` network evaluations and publish the
        timestep of each evaluation (resets the begin index, as diffusers' schedulers do)."""
        with self._exclusive:
            self._set_timesteps(num_inference_steps, device)

    def _plan_for(self, nfe: int) -> _Plan:
        p = solvers.plan(self.spec.name, nfe)  # a tuned solver: its NFE or a ValueError
        sigmas = p.sigmas.double() if self.spec.tuned else self._step_sigmas(p.steps)
        terminal = bool(torch.isinf(sigmas[0]))
        if terminal:  # one evaluation goes to sigma = inf: plan the solver for the rest
            self.map.check_terminal()
            if nfe < 2:
                raise ValueError("zero terminal SNR spends the first evaluation at sigma = inf; "
                                 "num_inference_steps must be >= 2")
            p = solvers.plan(self.spec.name, nfe - 1)
            sigmas = self._step_sigmas(p.steps + (self.schedule_name == SOURCE))
            if not torch.isinf(sigmas[0]):
                raise ValueError(f"the source schedule starts at sigma = inf for {nfe} "
                                 f"evaluations but not for {nfe - 1}")
            sigmas = sigmas[1:]
        knobs = {**p.knobs, **(self.config["solver_kwargs"] or {})}
        evals, starts = probe(self.spec, sigmas, knobs)
        if terminal:
            evals, starts = [math.inf, *evals], [0, *(i + 1 for i in starts)]
        coefficients = [self.map.coefficients(s) for s in evals]
        end = float(sigmas[-1])
        alphas = [c.alpha for c in coefficients] + [
            1.0 if end == 0 else self.map.coefficients(end).alpha]
        ts = self.map.timestep_of_sigma(torch.tensor(evals, dtype=torch.float64)).float()
        return _Plan(sigmas, knobs, evals, starts, terminal, coefficients, alphas, ts.tolist())

    def _set_timesteps(self, num_inference_steps: int,
                       device: str | torch.device | None) -> None:
        self._reset()
        self._begin_index = None
        plan = self._plans.get(num_inference_steps)
        if plan is None:  # the config is frozen: one plan per NFE, probed once
            plan = self._plans[num_inference_steps] = self._plan_for(num_inference_steps)
        self._plan = plan
        self.num_inference_steps = len(plan.evals)
        ev = torch.tensor(plan.evals, dtype=torch.float64)
        self.sigmas = torch.cat([ev, plan.sigmas[-1:]]).to(device)
        self.timesteps = torch.tensor(plan.timesteps, dtype=torch.float32, device=device)

    def _alpha(self, sigma: float) -> float:
        return 1.0 if sigma == 0 else self.map.coefficients(float(sigma)).alpha

    def _start_index(self, plan: _Plan, timestep: Any) -> int:
        """The begin index, else the published timestep nearest ``timestep``; among equal
        ones (a singlestep solver evaluates a step's end and the next step's start at one
        sigma) the one that starts a step."""
        if self._begin_index is not None:
            return self._begin_index
        t = float(timestep)
        dist = [abs(v - t) for v in plan.timesteps]
        best = min(dist) + 1e-6 * max(1.0, abs(t))
        near = [i for i, d in enumerate(dist) if d <= best]
        return next((i for i in near if i in plan.starts), near[0])

    def _start(self, plan: _Plan, sample: Tensor, timestep: Any, generator: Any) -> None:
        i = self._start_index(plan, timestep)
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
        self._generator = generator
        self._step_index = i
        if not (plan.terminal and i == 0):  # the terminal step starts the solver itself
            self._launch(plan, i, self._state(sample) / plan.alphas[i])

    @staticmethod
    def _state(sample: Tensor) -> Tensor:
        """The solver state of a pipeline sample: float32 or better."""
        return sample if sample.dtype in (torch.float32, torch.float64) else sample.float()

    def _launch(self, plan: _Plan, i: int, x: Tensor) -> None:
        """Start the solver's generator at call ``i`` (a step start) on sigma-space ``x``."""
        j = plan.starts.index(i) - plan.terminal
        knobs = dict(plan.knobs)
        if "orders" in knobs:
            knobs["orders"] = tuple(knobs["orders"])[j:]
        self._run = self.spec.steps(x, plan.sigmas[j:], generator=self._generator, **knobs)
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

    def _check(self, plan: _Plan, i: int, timestep: Any, sample: Tensor) -> None:
        if i >= len(plan.evals):
            raise RuntimeError(f"all {len(plan.evals)} timesteps have been stepped; call "
                               "set_timesteps() again")
        expected = plan.timesteps[i]
        if abs(float(timestep) - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ValueError(f"step() got timestep {float(timestep):g} but timesteps[{i}] is "
                             f"{expected:g}; FewstepScheduler must be stepped in order")
        if self._request is None:
            if plan.terminal and i == 0:
                return
            raise RuntimeError("the run stopped at an error in an earlier step(); call "
                               "set_timesteps() again")
        sigma, planned = float(self._request[1]), plan.evals[i]  # plannable: one sigma
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
             use_clipped_model_output: bool | None = None
             ) -> FewstepSchedulerOutput | tuple[Tensor]:
        """Feed one network output to the solver and return its next evaluation point (or the
        final sample after the last evaluation) as ``prev_sample``."""
        with self._exclusive:
            return self._step(model_output, timestep, sample, generator, return_dict, eta)

    def _terminal(self, plan: _Plan, out: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """The evaluation at sigma = inf: x0_hat from the pure-noise sample, then one DDIM
        step (eps_hat = the noise itself) to the solver's first sigma, where it starts."""
        noise = self._state(sample)
        x0 = plan.coefficients[0].x0_from_process(out.to(noise.dtype), noise)
        if not _finite(x0):
            raise NonFiniteError("the network output at the terminal timestep gives NaN/inf")
        self._launch(plan, 1, torch.add(x0, noise, alpha=plan.evals[1]))
        assert self._request is not None
        return x0, self._request[0]

    def _step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: Any,
              return_dict: bool, eta: float) -> FewstepSchedulerOutput | tuple[Tensor]:
        plan = self._plan
        if plan is None:
            raise RuntimeError("call set_timesteps() before step()")
        if eta:
            raise ValueError(f"FewstepScheduler takes its noise level from the solver, not from "
                             f"step(eta={eta}); use solver='ddim_eta' / 'ddpm' or "
                             "solver_kwargs={'eta': ...}")
        if self._step_index is None:
            self._start(plan, sample, timestep, generator)
        i = self._step_index
        assert i is not None
        self._check(plan, i, timestep, sample)
        out = drop_learned_variance(model_output, sample)
        if self._request is None:  # i == 0 of a terminal plan
            x0, x_next = self._terminal(plan, out, sample)
        else:
            run, (x, sigma) = self._run, self._request
            assert run is not None
            try:
                if out.shape != x.shape:
                    raise ValueError(f"model_output has shape {tuple(out.shape)}; expected "
                                     f"{tuple(x.shape)}")
                x0 = plan.coefficients[i].x0(out.to(x.dtype), x)
                if not _finite(x0):
                    raise NonFiniteError(f"denoiser returned NaN/inf at timesteps[{i}] "
                                         f"(sigma={sigma:g})")
                self._request = run.send(x0)
                x_next = self._request[0]
            except StopIteration as done:  # the solver returned its final sample
                x_next = done.value
                self._run, self._request = None, None
                if not _finite(x_next):
                    raise NonFiniteError("the solver's final sample contains NaN/inf") from None
            except BaseException:  # the run cannot continue after an error in its step
                run.close()
                self._run, self._request = None, None
                raise
        alpha = plan.alphas[i + 1]
        prev = x_next * alpha if alpha != 1 else x_next
        if prev.dtype != sample.dtype:
            prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        self._step_index = i + 1
        self._last = prev
        if self._run is not None:
            self._returned[id(prev)] = prev
        if not return_dict:
            return (prev,)
        return FewstepSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process ``x_t = alpha(t) x0 + std(t) eps`` at network timesteps (pure noise
        at a terminal timestep)."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1) / self.time_scale
        a, s = self.process.alpha(t), self.process.std(t)
        if self.map.terminal is not None:
            at_end = t >= self.map.terminal
            a, s = torch.where(at_end, 0.0, a), torch.where(at_end, 1.0, s)
        a, s = (v.to(original_samples).reshape(-1, *[1] * (original_samples.ndim - 1))
                for v in (a, s))
        return a * original_samples + s * noise
