"""DPM-Solver-v3: reductions to DDIM and DPM-Solver++(2M) with l = 1, s = b = 0, the EMS of a
single Gaussian against their closed form, the solver against the analytic flow, measured
convergence order, and the tuned artefact."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep import GaussianMixture, solvers, tune
from fewstep.bench.teachers import Teacher
from fewstep.solvers.dpm_v3 import Statistics
from fewstep.tune import ems

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
MU, S2 = torch.tensor([[1.5, -0.5, 0.7]], dtype=torch.float64), 0.25  # N(MU, S2 I)


def noise(n: int, d: int, seed: int) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(n, d, generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.float64)


def exact_2m(D, x: torch.Tensor, s: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) with its phi_2 integrated exactly (Lu et al. 2022b, Eq. 9 with the
    exact ``h - 1 + e^{-h}``; diffusers' ``solver_type="heun"``), first order at the start and
    the step to 0."""
    prev = None
    for i in range(len(s) - 1):
        d = D(x, x.new_full((x.shape[0],), s[i]))
        if s[i + 1] == 0:
            return d
        h = math.log(s[i] / s[i + 1])
        x_next = (s[i + 1] / s[i]) * x + -math.expm1(-h) * d
        if prev is not None:
            r = math.log(s[i - 1] / s[i]) / h
            x_next = x_next + (h - 1 + math.exp(-h)) * (d - prev) / (r * h)
        x, prev = x_next, d
    return x


def test_l_one_s_b_zero_is_dpm_solver_pp():
    gm = GaussianMixture.random(2, 4, seed=1).double()
    x = noise(16, 2, 0)
    sig = solvers.plan("dpm_solver_v3", 8, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX).sigmas
    v3 = solvers.get("dpm_solver_v3")
    ddim = solvers.get("ddim")(gm, x, sig)
    torch.testing.assert_close(v3(gm, x, sig, order=1, corrector=False), ddim, rtol=0,
                               atol=1e-10)
    torch.testing.assert_close(v3(gm, x, sig, order=2, corrector=False, lower_order_final=False),
                               exact_2m(gm, x, sig.tolist()), rtol=0, atol=1e-10)
    # the same neutral statistics on a real grid (interpolation, integrals, corrector) too
    lam = torch.linspace(-5, 7, 50, dtype=torch.float64)
    grid = Statistics(lam, torch.ones(50), torch.zeros(50), torch.zeros(50, 2))
    torch.testing.assert_close(v3(gm, x, sig, statistics=grid), v3(gm, x, sig), rtol=0,
                               atol=1e-10)
    # l = 0, s = -1 is the noise-prediction form (g = e^{lambda - lambda_s} sigma eps =
    # sigma_s eps): first order it is DDIM as well (Lu et al. 2022, Eq. 3.7)
    noise_pred = Statistics(lam, torch.zeros(50), -torch.ones(50))
    torch.testing.assert_close(v3(gm, x, sig, statistics=noise_pred, order=1, corrector=False),
                               ddim, rtol=0, atol=1e-10)


def test_ems_of_a_gaussian_and_the_analytic_flow():
    D = GaussianMixture(MU, S2).double()
    x = noise(64, 3, 1)
    st, info = ems.estimate(D, x[:32], SIGMA_MIN, SIGMA_MAX, grid_size=80)
    sigma2 = torch.exp(-2 * st.lam)
    # D = MU + S2 / (S2 + sigma^2) (x - MU): l = 1 - tr(grad D) / d = sigma^2 / (S2 + sigma^2)
    torch.testing.assert_close(st.l, sigma2 / (S2 + sigma2), rtol=0, atol=1e-8)
    # h = (1 - l) x - D = -MU sigma^2 / (S2 + sigma^2) is the same for every sample: s = 0
    assert info["s_range"] == [0.0, 0.0]
    exact = MU + math.sqrt(S2 / (S2 + SIGMA_MAX**2)) * (x - MU)  # the PF-ODE flow to 0
    v3 = solvers.get("dpm_solver_v3")
    for nfe in (4, 6, 8):
        sig = solvers.plan("dpm_solver_v3", nfe, sigma_min=SIGMA_MIN,
                           sigma_max=SIGMA_MAX).sigmas

        def err(y: torch.Tensor) -> float:
            return float((y - exact).pow(2).mean().sqrt())

        with_ems = err(v3(D, x, sig, statistics=st))
        assert with_ems < 2e-3  # g is constant: only the statistics' discretisation is left
        assert with_ems < err(v3(D, x, sig)) / 20
        assert with_ems < err(solvers.get("dpmpp_2m")(D, x, sig)) / 2


@pytest.mark.parametrize(("knobs", "measured"), [
    ({}, 1.5),  # the paper's pseudo-order predictor and corrector: order 2 (1.75 at 80-160)
    ({"predictor_pseudo": False, "corrector_pseudo": False}, 2.7),  # order 3 + corrector: 3.96
])
def test_convergence_order(knobs, measured):
    gm = GaussianMixture.random(2, 4, seed=1).double()
    x = noise(32, 2, 0)
    ref = solvers.reference_solution(gm, x, SIGMA_MAX, rtol=1e-12, atol=1e-12)
    errs = []
    for nfe in (80, 160):
        sig = solvers.plan("ddim", nfe, "log_snr", sigma_min=SIGMA_MIN,
                           sigma_max=SIGMA_MAX).sigmas
        errs.append(float((solvers.get("dpm_solver_v3")(gm, x, sig, **knobs) - ref)
                          .pow(2).mean().sqrt()))
    assert math.log2(errs[0] / errs[1]) > measured


def test_bad_statistics_are_one_clear_line():
    lam = torch.linspace(0, 1, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="increasing"):
        Statistics(lam.flip(0), torch.ones(5), torch.zeros(5))
    with pytest.raises(ValueError, match="grid's shape"):
        Statistics(lam, torch.ones(4), torch.zeros(5))
    with pytest.raises(ValueError, match="keys lambdas, l, s"):
        Statistics.of({"l": torch.ones(5)})


def gaussian_teacher() -> Teacher:
    """N(MU, S2 I) as a teacher: its EMS are smooth in lambda and help (measured: validation
    0.016 with them vs 0.23 without at NFE 4, 8 calibration noises)."""
    return Teacher("gauss3", GaussianMixture(MU, S2), (3,), SIGMA_MIN, SIGMA_MAX, None)


def near_dirac_teacher() -> Teacher:
    """Two data points (components of variance 1e-4): ``D`` is nearly piecewise constant, so
    ``h = -D`` is what the training-free integrator already handles, while the estimated
    ``s, b`` (finite differences across the switch between the points) are noise; measured:
    validation 1.9 with the EMS vs 0.007 without at NFE 4."""
    means = torch.randn(2, 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64) * 2
    return Teacher("two-points", GaussianMixture(means, 1e-4), (2,), SIGMA_MIN, SIGMA_MAX, None)


def test_tuned_dpm_solver_v3_artefact(tmp_path):
    teacher = gaussian_teacher()
    t = tune.tune(teacher, "dpm_solver_v3", 4, n_cal=8, n_val=8, cache=tmp_path / "c",
                  grid_size=20)
    assert t.base == "dpm_solver_v3" and t.info["ems"] == "kept" and set(t.knob_tensors) == {
        "statistics.lambdas", "statistics.l", "statistics.s", "statistics.b"}
    assert t.knob_tensors["statistics.b"].shape == (20, 3) and t.tuning_seconds > 0
    path = t.save(tmp_path / "v3")
    u = tune.load(path)
    for k, v in t.knob_tensors.items():
        assert torch.equal(u.knob_tensors[k], v)
    x = noise(6, 3, 3)
    D = GaussianMixture(MU, S2)
    out = solvers.get(str(path))(D, x, solvers.plan(str(path), 4).sigmas)
    assert t.info["variant"] in ("full", "pseudo") and u.knob_values == t.knob_values
    assert t.val_loss == min(t.info["validation_by_variant"].values())
    assert t.val_loss < min(t.info["validation_without_ems"].values())
    stats = {k.removeprefix("statistics."): v for k, v in t.knob_tensors.items()}
    direct = solvers.get("dpm_solver_v3")(D, x, t.sigmas, statistics=Statistics.of(stats),
                                          **t.knob_values)
    torch.testing.assert_close(out, direct, rtol=0, atol=0)
    assert t.val_loss == pytest.approx(tune.validation_loss(
        D, tune.calibrate(teacher, 8, 8, cache=tmp_path / "c"), "dpm_solver_v3", t.sigmas,
        knobs={**t.knob_tensors, **t.knob_values}))


def test_dpm_solver_v3_drops_ems_that_do_not_help_on_validation(tmp_path):
    """Where the estimated EMS make the solver worse on the validation noises, the tuned
    solver keeps the training-free coefficients (l = 1, s = b = 0), says so, and is exactly the
    untuned DPM-Solver-v3 on the tuned schedule; the choice is the validation set's."""
    teacher = near_dirac_teacher()
    with pytest.warns(UserWarning, match=r"dpm_solver_v3 at NFE 4: EMS dropped: worse on "
                                         r"validation \(.*\) than the training-free"):
        t = tune.tune(teacher, "dpm_solver_v3", 4, n_cal=16, n_val=16, cache=tmp_path / "c",
                      grid_size=20)
    with_ems, without = t.info["validation_by_variant"], t.info["validation_without_ems"]
    assert t.info["ems"] == "dropped" and min(with_ems.values()) > 10 * min(without.values())
    assert t.knob_tensors == {} and t.val_loss == min(without.values())
    assert t.knob_values == tune.api.V3_VARIANTS[t.info["variant"]]
    assert "EMS dropped" in t.describe() and "EMS dropped" in tune.load(
        t.save(tmp_path / "v3")).describe()
    # the tuned solver is the training-free one, and its loss is the validation set's
    x = noise(6, 2, 3)
    D = teacher.denoiser
    torch.testing.assert_close(
        solvers.get(str(tmp_path / "v3"))(D, x, t.sigmas),
        solvers.get("dpm_solver_v3")(D, x, t.sigmas, **t.knob_values), rtol=0, atol=0)
    c = tune.calibrate(teacher, 16, 16, cache=tmp_path / "c")
    assert t.val_loss == pytest.approx(tune.validation_loss(
        D, c, "dpm_solver_v3", t.sigmas, knobs=t.knob_values))
