"""Shared fixtures: exact teachers with known answers."""

import pytest
import torch

import fewstep
from fewstep import GaussianMixture

torch.set_num_threads(1)


def _general() -> list[str]:
    """Canonical solvers that take any denoiser (not only, e.g., consistency students)."""
    return [n for n in fewstep.solvers.available(aliases=False)
            if fewstep.solvers.get(n).requires is None]


def deterministic_solvers() -> list[str]:
    """Canonical deterministic solvers with a fixed NFE budget."""
    return [n for n in _general() if not fewstep.solvers.get(n).stochastic
            and fewstep.solvers.get(n).plannable]


def stochastic_solvers() -> list[str]:
    """Canonical stochastic solvers with a fixed NFE budget (adaptive SDE solvers have their
    own tests)."""
    return [n for n in _general() if fewstep.solvers.get(n).stochastic
            and fewstep.solvers.get(n).plannable]


def adaptive_ode_solvers() -> list[str]:
    """Adaptive PF-ODE solvers whose error follows rtol/atol over a sigma range."""
    return [n for n in fewstep.solvers.available(kind="adaptive", aliases=False)
            if not fewstep.solvers.get(n).stochastic and "rtol" in fewstep.solvers.get(n).fn.knobs]


def planned_solvers() -> list[str]:
    return [n for n in fewstep.solvers.available(aliases=False)
            if fewstep.solvers.get(n).plannable]


@pytest.fixture(scope="session")
def single_gaussian() -> GaussianMixture:
    """One Gaussian with a diagonal covariance: its PF-ODE flow is closed-form."""
    return GaussianMixture(torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64),
                           torch.tensor([[0.25, 1.0, 0.04, 2.0]], dtype=torch.float64))


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    """A 4-d, 4-component mixture with well-separated modes."""
    return GaussianMixture.random(4, 4, spread=2.0, std=0.5, seed=3)
