"""Low precision: every solver with a float16 / bfloat16 network keeps its state in float32."""

import pytest
import torch

from fewstep import solvers

BATCH, NFE, SIGMA_MAX = 64, 10, 80.0
EVERY = solvers.available(aliases=False)  # aliases run the same generator


def _run(name, D, x):
    spec = solvers.get(name)
    if not spec.plannable:
        # tight tolerances for the ODE solvers (ParaDiGMS has its own ``tol``); Gotta Go Fast
        # keeps its defaults (at 1e-3 it takes ~40x the steps)
        sigmas = [SIGMA_MAX, 0.002, 0.0]
        knobs = {} if spec.stochastic else {k: 1e-3 for k in ("rtol", "atol", "tol")
                                            if k in spec.fn.knobs}
    else:
        # a solver whose minimum is above NFE (pndm, 13: four steps, three of them Runge-Kutta
        # over the whole range) runs 3 past it: at its minimum pndm amplifies rounding to
        # ~8.5 eps, at 16 to ~1.1 eps
        nfe = NFE if spec.min_nfe <= NFE else spec.min_nfe + 3
        p = solvers.plan(name, nfe, sigma_max=SIGMA_MAX)
        sigmas, knobs = p.sigmas, dict(p.knobs)
    if spec.stochastic:
        knobs["generator"] = solvers.generators(range(x.shape[0]))
    return spec(D, x, sigmas, **knobs)


def _rel_rms(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def x():
    return SIGMA_MAX * torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", EVERY)
def test_low_precision_network_against_float32(name, dtype, x, mixture):
    """The sample comes back in the network's dtype, finite, within 8 eps(dtype) (relative
    RMS) of the float32 run (measured: at most ~5 eps; benchmarks/solver_precision.py)."""
    ref = _run(name, mixture, x)
    out = _run(name, mixture, x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    spec = solvers.get(name)
    if not spec.plannable and spec.stochastic:
        # accept/reject decisions follow the error estimate, so a rounding flips a decision
        # and the path draws other noise: compare distributions, not paths (the bf16 test
        # below still pins the solver's own arithmetic to float32)
        assert abs(float(out.double().std() / ref.double().std()) - 1) < 0.1
        return
    assert _rel_rms(out, ref) <= 8 * torch.finfo(dtype).eps


@pytest.mark.parametrize("name", EVERY)
def test_solver_arithmetic_is_float32(name, x, mixture):
    """A bfloat16 run is the float32 run of the same solver whose start and network are
    rounded to bfloat16: the network sees bfloat16, the solver's own arithmetic does not
    (bfloat16 state gave up to 2.4x this error, e.g. dpm_solver_3 8.2e-2 vs 1.75e-2)."""
    seen = []

    def D(x_net, sigma):
        seen.append((x_net.dtype, sigma.dtype))
        return mixture(x_net, sigma)

    def bf16_network(x32, sigma):
        return mixture(x32.bfloat16(), sigma.bfloat16()).float()

    out = _run(name, D, x.bfloat16())
    assert {s for s in seen} == {(torch.bfloat16, torch.bfloat16)}
    ref = _run(name, bf16_network, x.bfloat16().float())
    torch.testing.assert_close(out, ref.bfloat16(), rtol=0, atol=0)


def test_generator_face_casts_requests_and_result(mixture):
    """An external driver sees requests in the sample's dtype and gets the result in it."""
    x = (SIGMA_MAX * torch.randn(3, 4)).half()
    steps = solvers.get("dpmpp_2m").steps(x, solvers.plan("dpmpp_2m", 3).sigmas)
    request = next(steps)
    try:
        while True:
            assert request[0].dtype == torch.float16
            request = steps.send(mixture(*request))
    except StopIteration as done:
        assert done.value.dtype == torch.float16
