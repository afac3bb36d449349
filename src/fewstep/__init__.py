"""fewstep: fast diffusion sampling behind one sigma-space denoiser interface."""

from . import analytic, denoiser, process, schedules, solvers
from .analytic import EmpiricalDenoiser, GaussianMixture
from .denoiser import CFGDenoiser, CountingDenoiser, Denoiser, ModelDenoiser, NonFiniteError
from .solvers import generators, plan, reference_solution, sample

__version__ = "0.1.0"

__all__ = [
    "CFGDenoiser",
    "CountingDenoiser",
    "Denoiser",
    "EmpiricalDenoiser",
    "GaussianMixture",
    "ModelDenoiser",
    "NonFiniteError",
    "analytic",
    "denoiser",
    "generators",
    "plan",
    "process",
    "reference_solution",
    "sample",
    "schedules",
    "solvers",
]
