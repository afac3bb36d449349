"""Stateless training-free solvers behind one registry.

Each solver is one generator (``denoised = yield x, sigma``; see :mod:`.driver`) with the
function face ``fn(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
**knobs)`` returning the final sample; ``x`` is the start noise already scaled to
``sigmas[0]``, ``cond`` a mapping handed to the denoiser, ``knobs`` the solver's options.
"""

from . import (  # noqa: F401  (fill the registry)
    adaptive,
    dpm,
    dpm_v3,
    euler,
    multistep,
    parallel,
    pas,
    pndm,
    sde_adaptive,
    unipc,
)
from .adaptive import reference_solution, sample_dpm_solver_adaptive, sample_rk45
from .common import generators, randn_like, sample_generators, singlestep_orders
from .consistency import sample_consistency  # noqa: F401  (registers "consistency")
from .dpm import sample_dpm_solver, sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_multistep
from .dpm_v3 import sample_dpm_solver_v3
from .driver import Request, SolverFunction, Steps, drive
from .euler import sample_ddim, sample_heun
from .multistep import sample_deis, sample_ipndm
from .pas import sample_pas
from .registry import KINDS, Plan, SolverSpec, alias, available, get, plan, register, sample
from .unipc import sample_unipc

__all__ = [
    "KINDS",
    "Plan",
    "Request",
    "SolverFunction",
    "SolverSpec",
    "Steps",
    "alias",
    "available",
    "drive",
    "generators",
    "get",
    "plan",
    "randn_like",
    "reference_solution",
    "register",
    "sample",
    "sample_ddim",
    "sample_deis",
    "sample_dpm_solver",
    "sample_dpm_solver_adaptive",
    "sample_dpm_solver_v3",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s",
    "sample_dpmpp_multistep",
    "sample_generators",
    "sample_heun",
    "sample_ipndm",
    "sample_pas",
    "sample_rk45",
    "sample_unipc",
    "singlestep_orders",
]
