"""Per-teacher tuning of few-step solvers: schedule search (GITS, AYS-style refinement, LD3) and
learned multistep coefficients (S4S-style), fitted to the teacher's own reference ODE endpoints
on a calibration set and validated on a disjoint one. A tuned solver is an artefact on disk that
loads wherever a solver name goes (see :mod:`fewstep.tune.artefact`)."""

from .api import METHODS, tune, validation_loss
from .artefact import TunedSolver, fingerprint, load
from .calibration import Calibration, calibrate

__all__ = ["METHODS", "Calibration", "TunedSolver", "calibrate", "fingerprint", "load", "tune",
           "validation_loss"]
