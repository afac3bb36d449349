"""Every solver is one generator with a function face: stepping the generator by hand gives the
function face's answer bit for bit; knobs are checked against the solver's signature; ``cond``
reaches the network unchanged and nothing else does; no thread anywhere in the solver path."""

import copy
import importlib
import inspect
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep import NonFiniteError, solvers
from fewstep.denoiser import CountingDenoiser


def _problem(name):
    """Start sample, sigmas and plan knobs of a short run of solver ``name``."""
    spec = solvers.get(name)
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if not spec.plannable:
        tols = {k: 1e-2 for k in ("rtol", "atol", "tol") if k in spec.fn.knobs}
        return x, torch.tensor([20.0, 0.01, 0.0], dtype=torch.float64), tols
    p = solvers.plan(name, max(spec.min_nfe, 5), sigma_max=20.0)
    return x, p.sigmas, p.knobs


def _by_hand(steps, D):
    """Step a solver generator with a plain loop; return its result and the requests."""
    requests, reply = [], None
    while True:
        try:
            x, sigma = next(steps) if reply is None else steps.send(reply)
        except StopIteration as done:
            return done.value, requests
        if isinstance(sigma, torch.Tensor):  # a batched request: one float64 sigma per row
            assert sigma.dtype == torch.float64 and sigma.shape == (x.shape[0],)
            requests.append(sigma.tolist())
            reply = D(x, sigma.to(x.dtype))
            continue
        assert type(sigma) is float  # sigma travels as a Python float (float64)
        requests.append(sigma)
        reply = D(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


@pytest.mark.parametrize("name", solvers.available())
def test_generator_by_hand_equals_function_face(name, mixture):
    spec = solvers.get(name)
    x, sigmas, knobs = _problem(name)
    counter = CountingDenoiser(mixture)
    face = spec(counter, x, sigmas, generator=torch.Generator().manual_seed(4), **knobs)
    out, requests = _by_hand(spec.steps(x, sigmas, generator=torch.Generator().manual_seed(4),
                                        **knobs), mixture)
    assert torch.equal(out, face)
    assert len(requests) == counter.nfe


@pytest.mark.parametrize("name", solvers.available())
def test_unknown_knob_is_rejected_with_the_valid_ones(name, mixture):
    spec = solvers.get(name)
    x, sigmas, knobs = _problem(name)
    valid = spec.fn.knobs
    assert valid == tuple(p for p in inspect.signature(spec.fn.steps_fn).parameters
                          if p not in ("x", "sigmas", "generator", "callback"))
    pattern = r"'etaa'.*valid knobs: " + ", ".join(valid)
    with pytest.raises(TypeError, match=pattern):
        spec(mixture, x, sigmas, etaa=0.5, **knobs)
    with pytest.raises(TypeError, match=pattern):
        spec.steps(x, sigmas, etaa=0.5, **knobs)


def test_sample_ddim_names_the_bad_knob():
    with pytest.raises(TypeError, match=r"sample_ddim got unknown knob\(s\) 'etaa'; valid "
                                        r"knobs: eta \(conditioning goes in cond=\)"):
        solvers.sample_ddim(lambda x, s: x * 0, torch.randn(2, 3), torch.tensor([1.0, 0.0]),
                            etaa=0.5)


@pytest.mark.parametrize("name", [n for n in solvers.available() if not solvers.get(n).stochastic])
def test_generator_never_reaches_the_network(name, mixture):
    """A deterministic solver accepts and ignores generator= (by design); the denoiser takes
    no keyword arguments, so anything passed to it would raise."""
    x, sigmas, knobs = _problem(name)

    def strict(x, sigma):
        return mixture(x, sigma)

    out = solvers.get(name)(strict, x, sigmas, generator=torch.Generator().manual_seed(0),
                            **knobs)
    assert torch.equal(out, solvers.get(name)(mixture, x, sigmas, **knobs))


def test_cond_is_a_mapping_handed_to_the_network_unchanged():
    labels, seen = torch.tensor([3, 1]), []

    def D(x, sigma, *, label, scale):
        seen.append((label, scale))
        return x * 0

    solvers.sample_dpmpp_multistep(D, torch.randn(2, 3), torch.tensor([4.0, 1.0, 0.0]),
                                   cond={"label": labels, "scale": 2.0})
    assert len(seen) == 2 and all(lab is labels and sc == 2.0 for lab, sc in seen)
    with pytest.raises(TypeError, match=r"cond must be a mapping .* got Tensor"):
        fewstep.sample(D, torch.randn(2, 3), "ddim", nfe=2, cond=labels)


def test_callback_reports_every_step(mixture):
    x, sigmas, knobs = _problem("heun")
    infos = []
    solvers.get("heun")(mixture, x, sigmas, callback=infos.append, **knobs)
    assert [i["i"] for i in infos] == list(range(len(sigmas) - 1))
    assert [i["sigma_next"] for i in infos] == sigmas[1:].tolist()


def test_abandoned_generator_closes_cleanly(mixture):
    x, sigmas, _ = _problem("dpmpp_2m")
    steps = solvers.get("dpmpp_2m").steps(x, sigmas)
    xi, sigma = next(steps)
    steps.send(mixture(xi, torch.full((3,), sigma, dtype=xi.dtype)))
    steps.close()  # cancellation is dropping the generator: no exception leaks out
    assert steps.gi_frame is None


def test_rk45_agrees_with_torchdiffeq(mixture):
    """The own Dormand-Prince generator against torchdiffeq's dopri5 on the same ODE
    (dx/dlambda = D - x), both at tight tolerance."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    x = 20.0 * torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = solvers.sample_rk45(mixture, x, [20.0, 0.01], rtol=1e-9, atol=1e-9)

    def f(lam, y):
        return mixture(y, torch.exp(-lam).expand(y.shape[0])) - y

    lam = -torch.tensor([20.0, 0.01], dtype=torch.float64).log()
    theirs = torchdiffeq.odeint(f, x, lam, rtol=1e-9, atol=1e-9, method="dopri5")[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


PACKAGE = Path(fewstep.__file__).parent
SOLVER_PATH = [*sorted((PACKAGE / "solvers").glob("*.py")),
               *sorted((PACKAGE / "interop").glob("*.py")), PACKAGE / "distill" / "lockstep.py"]


@pytest.mark.parametrize("path", SOLVER_PATH, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_threads_in_the_solver_path(path):
    text = path.read_text()
    for word in ("threading", "import queue", "Thread(", "concurrent.futures"):
        assert word not in text, f"{path} uses {word}"


def test_coroutine_module_is_gone():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fewstep.solvers.coroutine")


def test_float64_sigma_lists_stay_float64(mixture):
    """Distinct float64 values that round to the same float32 are not "duplicates"."""
    sigmas = [1.0, 1.0 - 1e-12, 0.0]
    assert torch.tensor(sigmas)[0] == torch.tensor(sigmas)[1]  # what float32 would do
    assert fewstep.schedules.validate_sigmas(sigmas).dtype == torch.float64
    _, requests = _by_hand(solvers.get("ddim").steps(torch.ones(2, 4, dtype=torch.float64),
                                                     sigmas), mixture)
    assert requests == sigmas[:-1]


@pytest.mark.parametrize("name", ["heun", "heun_churn", "dpm_solver_2"])
def test_overflow_in_the_final_step_raises(name, mixture):
    """float32 samples with (float64) sigmas ending below float32's range: every network
    output is finite, but the step arithmetic overflows; the final sample is checked too."""
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 1e-100], dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="final sample"):
        solvers.get(name)(copy.deepcopy(mixture).float(), x, sigmas)  # .float() is in place
