"""ParaDiGMS returns the sequential sampler's answer to within its tolerance, in fewer
sequential rounds than steps and with more evaluations; both are counted."""

import pytest
import torch

from fewstep import CountingDenoiser, solvers

SIGMA_MAX = 20.0


@pytest.fixture(scope="module")
def problem():
    x = SIGMA_MAX * torch.randn(32, 4, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))
    return x, solvers.plan("ddim", 100, sigma_max=SIGMA_MAX).sigmas


@pytest.mark.parametrize("window", [8, 32, 100])
def test_matches_sequential_ddim_within_tolerance(window, problem, mixture):
    """Error to sequential DDIM falls with tol (ratio >= 10 per 100x tol); at tol = 1e-4 it
    is below 1e-4; rounds are far fewer than steps, evaluations more."""
    x, sigmas = problem
    seq = solvers.get("ddim")(mixture, x, sigmas)
    errs = []
    for tol in (1e-2, 1e-4):
        info, counter = {}, CountingDenoiser(mixture)
        out = solvers.get("paradigms")(counter, x, sigmas, window=window, tol=tol, info=info)
        errs.append(float((out - seq).abs().max()))
        assert info["rounds"] == counter.nfe < info["steps"] == 100  # calls in sequence
        assert info["nfe"] == counter.rows / x.shape[0] > 100  # evaluations per sample
    assert errs[1] < 1e-4 and errs[0] > 10 * errs[1], errs


def test_window_of_one_is_the_sequential_sampler(problem, mixture):
    x, sigmas = problem
    info = {}
    out = solvers.get("paradigms")(mixture, x, sigmas, window=1, info=info)
    torch.testing.assert_close(out, solvers.get("ddim")(mixture, x, sigmas), rtol=0,
                               atol=1e-12)
    assert info == {"nfe": 100, "rounds": 100, "steps": 100}


def test_parallel_ddpm_uses_the_sequential_noise(problem, mixture):
    """eta = 1 with the same per-sample generators: the sequential DDPM sample."""
    x, sigmas = problem
    seq = solvers.get("ddpm")(mixture, x, sigmas, generator=solvers.generators(range(32)))
    par = solvers.get("paradigms_ddpm")(mixture, x, sigmas, window=16, tol=1e-5,
                                        generator=solvers.generators(range(32)))
    assert float((par - seq).abs().max()) < 1e-4


def test_one_batched_call_per_round(problem, mixture):
    """Each round is one network call over window x batch rows with one sigma per row."""
    x, sigmas = problem
    shapes = []

    def D(x, sigma):
        shapes.append((x.shape[0], sigma.shape[0], sorted(set(sigma.tolist()), reverse=True)))
        return mixture(x, sigma)

    solvers.get("paradigms")(D, x[:3], sigmas, window=8)
    rows, n_sig, first = shapes[0]
    assert rows == n_sig == 8 * 3 and first == sigmas[:8].tolist()


@pytest.mark.parametrize("knobs,match", [({"window": 0}, "window must be a positive"),
                                         ({"tol": -1.0}, "tol must be >= 0"),
                                         ({"eta": -1.0}, "eta must be >= 0")])
def test_bad_knobs_are_named(knobs, match, mixture):
    with pytest.raises(ValueError, match=match):
        solvers.get("paradigms")(mixture, torch.randn(2, 4, dtype=torch.float64),
                                 [5.0, 1.0, 0.0], **knobs)


@pytest.mark.parametrize("name", solvers.available(kind="parallel"))
def test_parallel_solvers_are_not_planned_and_the_error_says_which_grid(name, mixture):
    """A parallel solver's NFE follows its tolerance: plan() refuses it and suggests the
    sequential grid, which, filled in, runs and reports NFE >= steps and rounds <= steps."""
    assert not solvers.get(name).plannable
    with pytest.raises(ValueError, match=rf"'{name}' is parallel.*plan\('ddim', steps\)"):
        solvers.plan(name, 10)
    grid, info = solvers.plan("ddim", 12, sigma_max=20.0).sigmas, {}
    x = 20.0 * torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gens = solvers.generators([0, 1, 2]) if solvers.get(name).stochastic else None
    solvers.get(name)(mixture, x, grid, info=info, generator=gens)
    assert info["steps"] == 12 and info["nfe"] >= 12 and 1 <= info["rounds"] <= 12


def test_cli_samples_paradigms_on_its_sequential_grid(tmp_path, capsys):
    """`fewstep sample --solver paradigms --steps N` runs the N-step DDIM grid (it used to run
    a 2-step DDIM on [sigma_max, sigma_min, 0]); it reaches that DDIM sample."""
    from fewstep.cli import main

    assert main(["sample", "--teacher", "gmm2", "--solver", "paradigms", "--steps", "12",
                 "--n", "8", "--out", str(tmp_path / "p")]) == 0
    assert "over a 12-step grid" in capsys.readouterr().out
    assert main(["sample", "--teacher", "gmm2", "--solver", "ddim", "--nfe", "12",
                 "--n", "8", "--out", str(tmp_path / "d")]) == 0
    par, seq = (torch.load(tmp_path / d / "samples.pt") for d in ("p", "d"))
    assert float((par - seq).abs().max()) < 1e-3 * float(seq.abs().max())  # 2-step: 0.7
    assert main(["sample", "--teacher", "gmm2", "--solver", "ddim", "--steps", "12",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--steps 12: only a parallel solver" in capsys.readouterr().err
