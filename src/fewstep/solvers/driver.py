"""Solvers are generators; this driver gives each one its function face.

Every solver is written once as a generator function ``steps(x, sigmas, *, **knobs)``. It
yields each evaluation it needs and receives the denoised estimate,
``denoised = yield x, sigma`` (``sigma`` a Python float, float64), and returns the final
sample. Shared step helpers are sub-generators used with ``yield from``. Whoever steps the
generator owns the denoiser call: :func:`drive` (the function face below), the diffusers
scheduler (one ``step()`` per request) or lockstep teacher solves (all groups' requests in one
batched call). No thread is involved; abandoning a run is dropping (or ``close()``-ing) its
generator.

The function face, for every solver::

    fn(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **knobs) -> Tensor

- ``cond`` is a mapping handed to the denoiser unchanged on every call,
  ``denoiser(x, sigma, **cond)``; nothing else ever reaches the network;
- ``knobs`` are the solver's options, checked against the generator's signature: an unknown
  knob is a ``TypeError`` that lists the valid ones;
- ``generator`` (per-sample noise) is used by stochastic solvers and accepted and ignored by
  deterministic ones, so callers may pass it to any solver;
- ``callback`` receives k-diffusion's dict ``{i, x, sigma, sigma_next, denoised}`` after each
  step.

Precision: the sample's dtype is the network's. A solver's state and arithmetic are float32 or
better (:func:`state_dtype`): a float16 or bfloat16 start sample runs the solver in float32,
each request is cast to the sample's dtype for the network, each answer back to float32,
and the final sample is returned in the sample's dtype (:func:`network_dtype`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Generator, Mapping
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser, NonFiniteError

__all__ = ["Request", "SolverFunction", "Steps", "all_finite", "check_final", "check_output",
           "drive", "evaluate", "network_dtype", "state_dtype"]

# (x, sigma) of one denoiser evaluation: sigma a Python float for the whole batch, or a 1-D
# float64 tensor of one sigma per row (a batched request of several steps or samples at once:
# parallel and per-sample adaptive solvers; only :func:`drive` answers those)
Request = tuple[Tensor, float | Tensor]
Steps = Generator[Request, Tensor, Tensor]   # yields requests, receives x0_hat, returns x

# Options every solver's function face takes besides its knobs (generator may be ignored).
_FACE = ("generator", "callback")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a solver keeps its state in for a sample of ``dtype``: float32 or better."""
    return torch.promote_types(dtype, torch.float32)


def network_dtype(steps: Steps, dtype: torch.dtype) -> Steps:
    """Run ``steps`` (a solver generator on a float32-or-better sample) against a network of
    ``dtype``: requests are cast to ``dtype``, answers back to the state's dtype, and the final
    sample is returned in ``dtype``. Keeps bfloat16 solver arithmetic (up to 19x the float32
    error on the 4-d mixture) out of low-precision runs."""
    try:
        x, sigma = next(steps)
        while True:
            denoised = yield x.to(dtype), sigma
            x, sigma = steps.send(denoised.to(x.dtype))
    except StopIteration as done:
        return done.value.to(dtype)
    finally:
        steps.close()


def all_finite(v: Tensor) -> bool:
    """Whether every element of ``v`` is finite, by one fused reduction: any NaN or inf makes
    the sum NaN or inf; only when the sum is not finite (or overflows) is the element-wise
    test run to tell the two apart."""
    return math.isfinite(v.detach().sum()) or bool(torch.isfinite(v).all())


def check_output(out: Tensor, x: Tensor, where: str) -> Tensor:
    """A denoiser output must have the input's shape and be finite (``NonFiniteError``)."""
    if out.shape != x.shape:
        raise ValueError(f"denoiser returned shape {tuple(out.shape)} for input shape "
                         f"{tuple(x.shape)}")
    if not all_finite(out):
        raise NonFiniteError(f"denoiser returned NaN/inf at {where}")
    return out


def check_final(x: Tensor) -> Tensor:
    """The solver's final sample is checked as every denoiser output is: step arithmetic
    alone can overflow (e.g. sigmas below the sample dtype's range)."""
    if not all_finite(x):
        raise NonFiniteError("the solver's final sample contains NaN/inf although every "
                             "denoiser output was finite (sigmas too small for the sample's "
                             f"dtype {x.dtype}?)")
    return x


@functools.lru_cache(maxsize=1024)
def _sigma_rows(sigma: float, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``sigma`` for each of ``n`` rows: one value expanded (read-only), made once."""
    return torch.full((), sigma, dtype=dtype, device=device).expand(n)


def evaluate(denoiser: Denoiser, x: Tensor, sigma: float | Tensor,
             cond: Mapping[str, Any]) -> Tensor:
    """The guarded denoiser call of one request: sigma as a per-row tensor of x's dtype (one
    value expanded over the batch, so adapters see at once that every row shares it; a
    batched request brings its own row of sigmas)."""
    if isinstance(sigma, Tensor):  # a batched request: one sigma per row
        where = f"sigma={float(sigma.max()):g}..{float(sigma.min()):g}"
        return check_output(denoiser(x, sigma.to(x.device, x.dtype), **cond), x, where)
    out = denoiser(x, _sigma_rows(sigma, x.shape[0], x.dtype, x.device), **cond)
    return check_output(out, x, f"sigma={sigma:g}")


def check_cond(cond: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``cond`` must be a mapping of denoiser keyword arguments (or None)."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of keyword arguments for the denoiser, e.g. "
                        f"cond={{'cond': labels}}; got {type(cond).__name__}")
    return cond


def drive(steps: Steps, denoiser: Denoiser, cond: Mapping[str, Any] | None = None) -> Tensor:
    """Answer every request of ``steps`` with a guarded denoiser call; return the checked
    final sample. The generator is closed on any error."""
    cond = check_cond(cond)
    try:
        request = next(steps)
        while True:
            request = steps.send(evaluate(denoiser, *request, cond))
    except StopIteration as done:
        return check_final(done.value)
    finally:
        steps.close()


class SolverFunction:
    """A solver generator function with the function face (see the module docstring).

    ``fn.steps(x, sigmas, **knobs)`` returns the checked generator for an external driver;
    ``fn(denoiser, x, sigmas, ...)`` drives it with :func:`drive`. ``knobs`` are the names of
    the solver's options (keyword-only parameters of the generator function).
    """

    def __init__(self, steps_fn: Callable[..., Steps], name: str):
        if not inspect.isgeneratorfunction(steps_fn):
            raise TypeError(f"{steps_fn!r} is not a generator function")
        params = inspect.signature(steps_fn).parameters
        if "callback" not in params:
            raise TypeError(f"solver generator {steps_fn.__name__} must take callback=")
        self.steps_fn, self.__name__, self.__doc__ = steps_fn, name, steps_fn.__doc__
        self.__module__ = steps_fn.__module__
        self.draws_noise = "generator" in params
        self.knobs = tuple(p.name for p in params.values()
                           if p.kind is p.KEYWORD_ONLY and p.name not in _FACE)

    def check_knobs(self, knobs: Mapping[str, Any], who: str | None = None) -> None:
        """Raise ``TypeError`` naming every unknown knob and listing the valid ones."""
        bad = sorted(set(knobs) - set(self.knobs))
        if bad:
            raise TypeError(f"{who or self.__name__} got unknown knob(s) "
                            f"{', '.join(map(repr, bad))}; valid knobs: "
                            f"{', '.join(self.knobs) or '(none)'} (conditioning goes in cond=)")

    def steps(self, x: Tensor, sigmas: Tensor | list[float], *, generator: Any = None,
              callback: Callable[[dict[str, Any]], None] | None = None,
              **knobs: Any) -> Steps:
        """The solver's generator on start sample ``x`` (at ``sigmas[0]``); input errors are
        raised at its first ``next()``."""
        self.check_knobs(knobs)
        if self.draws_noise:  # deterministic solvers ignore generator= by design
            knobs["generator"] = generator
        if isinstance(x, Tensor) and x.is_floating_point() and state_dtype(x.dtype) != x.dtype:
            return network_dtype(self.steps_fn(x.to(state_dtype(x.dtype)), sigmas,
                                               callback=callback, **knobs), x.dtype)
        return self.steps_fn(x, sigmas, callback=callback, **knobs)

    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor | list[float], *,
                 cond: Mapping[str, Any] | None = None, generator: Any = None,
                 callback: Callable[[dict[str, Any]], None] | None = None,
                 **knobs: Any) -> Tensor:
        """Run the solver on ``denoiser(x, sigma, **cond)``; returns the final sample."""
        return drive(self.steps(x, sigmas, generator=generator, callback=callback, **knobs),
                     denoiser, cond)

    def __repr__(self) -> str:
        return f"<solver function {self.__name__}>"
