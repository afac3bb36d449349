"""Sigma schedules: each returns a strictly decreasing 1-D ``sigmas`` tensor of ``n + 1``
values, the first ``n`` from ``sigma_max`` down to ``sigma_min`` and the last 0 (so a solver
takes ``n`` steps). ``final_zero=False`` drops the trailing 0 and returns ``n`` values.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._registry import Registry
from .process import NoiseProcess, VPDiscrete

__all__ = [
    "DEFAULT_SCHEDULES",
    "SCHEDULES",
    "check_schedule_kwargs",
    "default_schedule",
    "explicit",
    "get_schedule",
    "karras",
    "log_snr",
    "polyexponential",
    "quadratic_t",
    "trailing",
    "uniform_t",
    "validate_sigmas",
]

DTYPE = torch.float64


def validate_sigmas(sigmas: Tensor | Sequence[float], *, name: str = "sigmas") -> Tensor:
    """Check that sigmas is 1-D, finite, >= 0, strictly decreasing, with >= 2 entries."""
    # a Python sequence becomes float64, not torch's float32 default: distinct float64 values
    # must not collapse into "duplicates"
    s = sigmas if isinstance(sigmas, Tensor) else torch.as_tensor(sigmas, dtype=DTYPE)
    if not s.is_floating_point():
        s = s.to(DTYPE)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 values; got shape "
                         f"{tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite; got {s.tolist()}")
    if (s < 0).any():
        raise ValueError(f"{name} must be >= 0; got {s.tolist()}")
    bad = torch.nonzero(s[1:] >= s[:-1]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{name} must be strictly decreasing; {name}[{i}]={float(s[i]):g} "
                         f"<= {name}[{i + 1}]={float(s[i + 1]):g}")
    return s


def _finish(sigmas: Tensor, final_zero: bool) -> Tensor:
    if final_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return validate_sigmas(sigmas)


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max; got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    if n > 1 and sigma_min == sigma_max:
        raise ValueError(f"sigma_min == sigma_max == {sigma_min} cannot hold {n} distinct steps")


def karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
           final_zero: bool = True) -> Tensor:
    """Karras et al. 2022, Eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=DTYPE) if n > 1 else torch.zeros(1, dtype=DTYPE)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, final_zero)


def log_snr(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
            final_zero: bool = True) -> Tensor:
    """Uniform in ``lambda = -log sigma`` (Lu et al. 2022, "logSNR" step size, Sec. 3.3)."""
    _check_range(n, sigma_min, sigma_max)
    lam = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=DTYPE)
    return _finish(lam.exp(), final_zero)


def polyexponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 1.0, final_zero: bool = True) -> Tensor:
    """Polynomial in log sigma: ``log s_i = log smin + (1 - i/(n-1))^rho (log smax - log smin)``
    (k-diffusion's polyexponential; rho = 1 is :func:`log_snr`)."""
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, dtype=DTYPE) ** rho if n > 1 else torch.ones(1, dtype=DTYPE)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _finish(torch.exp(lo + ramp * (hi - lo)), final_zero)


def _discrete_timesteps(n: int, T: int, spacing: str) -> Tensor:
    """Integer DDPM timesteps as diffusers spaces them (Lin et al. 2024, Table 2)."""
    if spacing == "linspace":
        t = torch.linspace(0, T - 1, n, dtype=DTYPE).round()
    elif spacing == "leading":
        t = torch.arange(n, dtype=DTYPE) * (T // n)
    elif spacing == "trailing":
        t = (torch.arange(T, 0, -T / n, dtype=DTYPE)).round().flip(0) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected linspace, leading or trailing")
    return t.flip(0)


def _time_grid(n: int, process: NoiseProcess, t_min: float | None, t_max: float | None,
               power: float, spacing: str) -> Tensor:
    if isinstance(process, VPDiscrete) and t_min is None and t_max is None and power == 1:
        return _discrete_timesteps(n, int(process.t_max) + 1, spacing)
    if spacing != "linspace":
        raise ValueError(f"spacing {spacing!r} applies to a discrete VP process only")
    t_min = process.t_min if t_min is None else t_min
    t_max = process.t_max if t_max is None else t_max
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max; got {t_min}, {t_max}")
    u = torch.linspace(1, 0, n, dtype=DTYPE) if n > 1 else torch.ones(1, dtype=DTYPE)
    t = t_min + (t_max - t_min) * u**power
    return t.round() if isinstance(process, VPDiscrete) else t


def uniform_t(n: int, process: NoiseProcess, *, t_min: float | None = None,
              t_max: float | None = None, spacing: str = "linspace",
              final_zero: bool = True) -> Tensor:
    """Uniform in the process time t (DDPM/DDIM, Song et al. 2021a); discrete VP rounds t to
    integer timesteps with diffusers' ``linspace``/``leading``/``trailing`` spacing."""
    _check_range(n, 1.0, 1.0 + (n > 1))
    t = _time_grid(n, process, t_min, t_max, 1.0, spacing)
    return _finish(process.sigma(t).to(DTYPE), final_zero)


def quadratic_t(n: int, process: NoiseProcess, *, t_min: float | None = None,
                t_max: float | None = None, final_zero: bool = True) -> Tensor:
    """Quadratic in t, ``t_i = t_min + (t_max - t_min) (i/(n-1))^2`` (Song et al. 2021a, DDIM
    App. D.2)."""
    _check_range(n, 1.0, 1.0 + (n > 1))
    t = _time_grid(n, process, t_min, t_max, 2.0, "linspace")
    return _finish(process.sigma(t).to(DTYPE), final_zero)


def explicit(sigmas: Sequence[float] | Tensor, final_zero: bool = False) -> Tensor:
    """A user-given list, validated (append 0 with ``final_zero=True``)."""
    s = torch.as_tensor(sigmas, dtype=DTYPE)
    return _finish(s, final_zero) if final_zero else validate_sigmas(s)


def trailing(n: int, process: NoiseProcess, *, shift: float = 1.0,
             final_zero: bool = True) -> Tensor:
    """Uniform in process time with the last evaluation one grid step above t_min and then
    the step to 0: ``t_i = t_min + (t_max - t_min) (n - i) / n``, i = 0..n-1 (diffusers'
    "trailing" timestep spacing, Lin et al. 2024, Table 2; discrete VP uses its integer
    timesteps exactly). No evaluation is spent at sigma_min, where the step to 0 gains
    almost nothing. ``shift`` applies the flow time shift ``t -> s t / (1 + (s - 1) t)``
    (Esser et al. 2024, Eq. 23) to a flow process (1 = none)."""
    _check_range(n, 1.0, 1.0 + (n > 1))
    if shift <= 0:
        raise ValueError(f"shift must be > 0; got {shift}")
    if isinstance(process, VPDiscrete):
        t = _discrete_timesteps(n, int(process.t_max) + 1, "trailing")
    else:
        u = torch.arange(n, 0, -1, dtype=DTYPE) / n
        t = process.t_min + (process.t_max - process.t_min) * u
        t = shift * t / (1 + (shift - 1) * t)
    return _finish(process.sigma(t).to(DTYPE), final_zero)


SCHEDULES: Registry[Callable[..., Tensor]] = Registry("schedule", {
    "karras": karras,
    "log_snr": log_snr,
    "polyexponential": polyexponential,
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
    "trailing": trailing,
})


def get_schedule(name: str) -> Callable[..., Tensor]:
    """Look a schedule up by name; raises :class:`~fewstep._registry.UnknownNameError` (a
    ValueError) listing the schedules otherwise."""
    return SCHEDULES[name]


def check_schedule_kwargs(name: str, kwargs: Mapping[str, Any],
                          fn: Callable[..., Tensor] | None = None) -> None:
    """Raise ``ValueError`` naming the first key of ``kwargs`` that schedule ``name`` (or its
    function ``fn``, for schedules outside :data:`SCHEDULES`) does not take, and the ones it
    does (every parameter after the step count ``n``)."""
    accepted = list(inspect.signature(fn or get_schedule(name)).parameters)[1:]
    if unknown := sorted(set(kwargs) - set(accepted)):
        raise ValueError(f"schedule {name!r} has no option {unknown[0]!r}; it accepts "
                         f"{', '.join(accepted)}")


# The schedule FewstepScheduler uses unless told otherwise, per process kind, chosen from
# benchmarks/default_schedules.py (table in benchmarks/results/default_schedules.md).
# Measured: "trailing" is within 1% of diffusers' default UniPC on DDPM- and SD-style betas at
# NFE 5-20 (Karras sigmas, the former default, were up to 5x worse) and better than
# FlowMatchEuler on flow models at every NFE (flow_shift was up to 2.0x worse than it).
DEFAULT_SCHEDULES: dict[str, str] = {
    "vp_discrete": "trailing",
    "flow": "trailing",
}


def default_schedule(process: NoiseProcess | str) -> str:
    """The measured default schedule name for a process: a process kind ("vp_discrete",
    "flow") or a :class:`NoiseProcess` (``VPDiscrete`` -> "vp_discrete", ``RectifiedFlow`` ->
    "flow"). Raises ``ValueError`` for any other process."""
    from .process import RectifiedFlow

    kind = process if isinstance(process, str) else (
        "vp_discrete" if isinstance(process, VPDiscrete)
        else "flow" if isinstance(process, RectifiedFlow) else type(process).__name__)
    try:
        return DEFAULT_SCHEDULES[kind]
    except KeyError:
        raise ValueError(f"no measured default schedule for process {kind!r}; measured: "
                         f"{sorted(DEFAULT_SCHEDULES)}") from None
