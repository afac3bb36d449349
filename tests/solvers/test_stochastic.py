"""Noise comes from per-sample generators: results do not depend on batch size."""

import pytest
import torch

from fewstep import solvers

from ..conftest import stochastic_solvers


@pytest.mark.parametrize("name", stochastic_solvers())
def test_same_seeds_same_samples_whatever_the_batch(name, mixture):
    p = solvers.plan(name, 8, sigma_max=20.0)
    x = 20.0 * torch.randn(6, 4, dtype=torch.float64)
    run = solvers.get(name)
    whole = run(mixture, x, p.sigmas, **p.knobs, generator=solvers.generators(range(6)))
    halves = [run(mixture, x[i:i + 3], p.sigmas, **p.knobs,
                  generator=solvers.generators(range(i, i + 3))) for i in (0, 3)]
    torch.testing.assert_close(whole, torch.cat(halves))
    again = run(mixture, x, p.sigmas, **p.knobs, generator=solvers.generators(range(6)))
    torch.testing.assert_close(whole, again)
    other = run(mixture, x, p.sigmas, **p.knobs, generator=solvers.generators(range(6, 12)))
    assert (other - whole).abs().max() > 1e-3


def test_generator_count_must_match_batch(mixture):
    p = solvers.plan("ddpm", 4)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        solvers.get("ddpm")(mixture, torch.randn(2, 4, dtype=torch.float64), p.sigmas,
                            generator=solvers.generators([0, 1, 2]))
