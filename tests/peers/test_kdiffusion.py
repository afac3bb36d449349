"""Cross-checks against k-diffusion's samplers on the same exact denoiser.

k-diffusion's package ``__init__`` imports torchvision and its training stack; only its
``sampling`` module is needed, so it is loaded from the installed file with a minimal
``utils`` stand-in that provides ``append_dims``."""

import importlib.util
import sys
import types

import pytest
import torch

from fewstep import GaussianMixture, schedules, solvers
from fewstep.denoiser import append_dims


def _load_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    pytest.importorskip("torchsde")
    root = next(iter(spec.submodule_search_locations))
    pkg = types.ModuleType("_kd_stub")
    pkg.__path__ = [root]
    utils = types.ModuleType("_kd_stub.utils")
    utils.append_dims = append_dims
    sys.modules.update({"_kd_stub": pkg, "_kd_stub.utils": utils})
    mod_spec = importlib.util.spec_from_file_location("_kd_stub.sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


K = _load_sampling()
GM = GaussianMixture.random(5, 4, spread=2.0, std=0.4, seed=7)


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return 30.0 * torch.randn(32, 5, dtype=torch.float64, generator=g)


SIGMAS = schedules.karras(9, 0.01, 30.0)


@pytest.mark.parametrize("ours,theirs,kw", [
    ("euler", "sample_euler", {}),
    ("heun", "sample_heun", {}),
    ("dpmpp_2m", "sample_dpmpp_2m", {}),
    ("dpmpp_2s", "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
])
def test_deterministic_samplers_agree(x, ours, theirs, kw):
    expected = getattr(K, theirs)(GM, x, SIGMAS, disable=True, **kw)
    torch.testing.assert_close(solvers.get(ours)(GM, x, SIGMAS), expected, rtol=1e-10,
                               atol=1e-10)


def _noise_sampler(x, seed):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)


@pytest.mark.parametrize("ours,theirs,kw", [
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 1.0}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "midpoint"}),
])
def test_stochastic_samplers_agree_given_the_same_noise(x, ours, theirs, kw):
    expected = getattr(K, theirs)(GM, x, SIGMAS, disable=True,
                                  noise_sampler=_noise_sampler(x, 3), **kw)
    out = solvers.get(ours)(GM, x, SIGMAS, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_karras_schedule_agrees():
    torch.testing.assert_close(schedules.karras(12, 0.002, 80.0, rho=7.0),
                               K.get_sigmas_karras(12, 0.002, 80.0, rho=7.0).double(),
                               rtol=1e-6, atol=0)
