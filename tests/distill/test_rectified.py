"""Rectified flow, reflow and their distillation (Liu et al. 2022) against closed forms."""

import math

import pytest
import torch
from scipy.integrate import quad
from torch import nn

from fewstep import GaussianMixture, solvers
from fewstep.distill import (
    LossContext,
    RectifiedFlowDistill,
    RectifiedFlowLoss,
    Reflow,
    draw_couplings,
    get_method,
    rectified_flows,
    rf_sigmas,
    straightness,
)
from fewstep.distill.rectified import rf_loss, velocity
from fewstep.nets import FlowPrecond, MLPDenoiserNet, build_model, model_spec
from fewstep.train import TrainConfig, train

SIGMA_MAX = 80.0
T = SIGMA_MAX / (1 + SIGMA_MAX)


def _ctx(teacher=None, batch=32, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def _point(a):
    """The exact denoiser of data concentrated at the single point ``a``: D = a."""
    return lambda x, sigma: a.to(x).expand_as(x)


class _Affine(nn.Module):
    """F(x_in, c_noise) = W x_in + b c_noise: a backbone whose output is known."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.7, -0.2], dtype=torch.float64))

    def forward(self, x_in, c_noise):
        return x_in @ self.W.T + c_noise[:, None] * self.b


def test_flow_precond_is_the_velocity_net_in_sigma_space():
    net = _Affine()
    D = FlowPrecond(net)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = t / (1 - t)
    # D(x, sigma) = x_t - t F(x_t, ln(sigma)/4) with x = x_t / (1 - t)
    torch.testing.assert_close(velocity(D, x_t, t), net(x_t, sigma.log() / 4))
    # an Euler (DDIM) step in sigma is an Euler step of dx_t/dt = v in t
    s0, s1 = 3.0, 0.5
    t0, t1 = s0 / (1 + s0), s1 / (1 + s1)
    x0 = x_t * (1 + s0)
    step = solvers.get("ddim")(D, x0, [s0, s1]) / (1 + s1)
    v = velocity(D, x_t, torch.full((6,), t0, dtype=torch.float64))
    torch.testing.assert_close(step, x_t + (t1 - t0) * v)
    spec = model_spec(FlowPrecond(MLPDenoiserNet(2)))  # checkpoints rebuild it
    assert spec is not None and isinstance(build_model(spec), FlowPrecond)


def test_rf_sigmas_are_uniform_in_flow_time():
    for n in (1, 2, 4, 7):
        s = rf_sigmas(n, SIGMA_MAX)
        t = s / (1 + s)
        torch.testing.assert_close(t, T * torch.linspace(1, 0, n + 1, dtype=torch.float64))
        assert s[0] == pytest.approx(SIGMA_MAX) and s[-1] == 0
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n \\(steps\\)"):
            rf_sigmas(bad)
    with pytest.raises(ValueError, match="sigma_max must be > 0"):
        rf_sigmas(2, 0.0)


def test_rf_loss_vanishes_for_a_single_data_point_and_grows_as_one_over_t_squared():
    a = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.99 + 0.005
    x0 = a.expand(64, 3)
    # the optimal velocity of a point mass is z - a: the loss is exactly zero
    assert rf_loss(_point(a), x0, z, t).item() < 1e-24
    # a denoiser off by 0.1 in every coordinate costs 0.01 / t^2 (the RF weighting)
    off = rf_loss(_point(a + 0.1), x0, z, t).item()
    assert off == pytest.approx(float((0.01 / t**2).mean()), rel=1e-9)


def test_rf_loss_of_the_exact_gaussian_flow_is_its_conditional_variance(single_gaussian):
    """For data N(mu, diag var), the optimal velocity E[z - x0 | x_t] leaves the residual
    variance 1 + var - (t - (1-t) var)^2 / ((1-t)^2 var + t^2) per coordinate."""
    n = 50_000
    g = torch.Generator().manual_seed(2)
    x0 = single_gaussian.sample(n, generator=g)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    var = single_gaussian.variances[0]
    for t_ in (0.1, 0.5, 0.9):
        t = torch.full((n,), t_, dtype=torch.float64)
        expect = (1 + var - (t_ - (1 - t_) * var) ** 2 / ((1 - t_) ** 2 * var + t_**2)).mean()
        assert rf_loss(single_gaussian, x0, z, t).item() == pytest.approx(float(expect), rel=0.02)
        wrong = rf_loss(lambda x, s: single_gaussian(x, s) + 0.05, x0, z, t).item()
        assert wrong > rf_loss(single_gaussian, x0, z, t).item()


def test_rf_method_draws_times_in_range_and_refuses_bad_input():
    seen = []

    def D(x, sigma):
        seen.append(sigma / (1 + sigma))
        return torch.zeros_like(x)

    RectifiedFlowLoss(t_min=0.2, t_max=0.3).loss(D, torch.zeros(500, 2), _ctx())
    t = torch.cat(seen)
    assert t.min() >= 0.2 - 1e-6 and t.max() <= 0.3 + 1e-6
    for kw in ({"t_min": 0.0}, {"t_max": 1.0}, {"t_min": 0.5, "t_max": 0.4}):
        with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
            RectifiedFlowLoss(**kw)
    with pytest.raises(ValueError, match="unconditional"):
        RectifiedFlowLoss().loss(D, {"x": torch.zeros(2, 2), "cond": torch.zeros(2)}, _ctx())
    assert get_method("rf") is RectifiedFlowLoss and get_method("reflow") is Reflow
    assert get_method("rf_distill") is RectifiedFlowDistill


# --------------------------------------------------------------------------- straightness


def _gaussian_straightness(gm, z):
    """Closed form of S over [0, T] for one Gaussian N(mu, diag var) started at Z_T = T z:
    Z_t = (1-t) mu + w h(t) / h(T), h(t) = sqrt(var (1-t)^2 + t^2), w = T z - (1-T) mu, so
    S = sum_d w_d^2 / h_d(T)^2 (1/T) int_0^T ((h_d(T) - h_d(0))/T - h_d'(t))^2 dt."""
    mu, var = gm.means[0].tolist(), gm.variances[0].tolist()
    per_dim = []
    for v in var:
        def h(t, v=v):
            return math.sqrt(v * (1 - t) ** 2 + t**2)

        def dh(t, v=v):
            return (t - v * (1 - t)) / h(t)

        slope = (h(T) - h(0)) / T
        integral = quad(lambda t, dh=dh, slope=slope: (slope - dh(t)) ** 2, 0, T,
                        epsabs=1e-13, epsrel=1e-12, limit=200)[0] / T
        per_dim.append(integral / h(T) ** 2)
    w = T * z - (1 - T) * torch.tensor(mu, dtype=z.dtype)
    return (w**2 * torch.tensor(per_dim, dtype=z.dtype)).sum(1)


def test_straightness_of_a_straight_flow_is_zero():
    a = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for solver in ("ddim", "heun", "dpmpp_2m"):
        assert straightness(_point(a), z, steps=8, solver=solver).abs().max() < 1e-20


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_straightness_of_a_gaussian_flow_matches_the_closed_form(single_gaussian, solver):
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expect = _gaussian_straightness(single_gaussian, z)
    assert (expect > 0.01).all()  # a curved flow
    got = straightness(single_gaussian, z, steps=400, solver=solver)
    torch.testing.assert_close(got, expect, rtol=2e-3, atol=0)
    coarse = straightness(single_gaussian, z, steps=8, solver=solver)
    assert (coarse - expect).abs().max() > (got - expect).abs().max()  # it converges


def test_straightness_refuses_bad_steps(single_gaussian):
    with pytest.raises(ValueError, match="n \\(steps\\)"):
        straightness(single_gaussian, torch.zeros(2, 4, dtype=torch.float64), steps=0)


# --------------------------------------------------------------------------- couplings


class _Flaky(nn.Module):
    """A Gaussian flow that raises after ``fail_after`` calls (a kill mid-draw)."""

    def __init__(self, gm, fail_after=None):
        super().__init__()
        self.gm, self.fail_after, self.calls = gm, fail_after, 0

    def forward(self, x, sigma):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        return self.gm(x, sigma)


def test_couplings_are_exact_ode_endpoints_counted_and_cached(single_gaussian, tmp_path,
                                                              monkeypatch):
    kw = {"solver": "ipndm", "nfe": 100, "chunk": 40, "seed": 3, "dtype": torch.float64}
    c = draw_couplings(single_gaussian, 100, (4,), cache=tmp_path / "c", **kw)
    assert c.z.shape == c.x.shape == (100, 4) and c.evaluations == 100 * 100 and c.seconds > 0
    torch.testing.assert_close(c.x, single_gaussian.flow(SIGMA_MAX * c.z, SIGMA_MAX, 0.0),
                               rtol=0, atol=2e-3)
    assert torch.equal(draw_couplings(single_gaussian, 100, (4,), **kw).x, c.x)  # no cache
    with monkeypatch.context() as m:  # read back from the cache: no evaluation at all
        m.setattr(single_gaussian, "forward", lambda *a: pytest.fail("evaluated the flow"))
        again = draw_couplings(single_gaussian, 100, (4,), cache=tmp_path / "c", **kw)
    assert torch.equal(again.z, c.z) and torch.equal(again.x, c.x)
    assert again.evaluations == c.evaluations and again.seconds == c.seconds
    with pytest.raises(ValueError, match="nfe 100 -> 31"):
        draw_couplings(single_gaussian, 100, (4,), cache=tmp_path / "c", **{**kw, "nfe": 31})
    other = GaussianMixture(single_gaussian.means + 1, single_gaussian.variances)
    with pytest.raises(ValueError, match="another flow"):
        draw_couplings(other, 100, (4,), cache=tmp_path / "c", **kw)


def test_an_interrupted_draw_resumes_where_it_stopped(single_gaussian, tmp_path):
    kw = {"solver": "heun", "nfe": 21, "chunk": 30, "dtype": torch.float64}
    whole = draw_couplings(single_gaussian, 100, (4,), **kw)
    flaky = _Flaky(single_gaussian, fail_after=2 * 21)  # dies in the third chunk
    with pytest.raises(KeyboardInterrupt):
        draw_couplings(flaky, 100, (4,), cache=tmp_path / "c", **kw)
    assert sorted(p.name for p in (tmp_path / "c").glob("chunk_*.safetensors")) == \
        ["chunk_00000.safetensors", "chunk_00001.safetensors"]
    healthy = _Flaky(single_gaussian)
    resumed = draw_couplings(healthy, 100, (4,), cache=tmp_path / "c", **kw)
    assert healthy.calls == 2 * 21  # only the last two chunks were drawn
    assert torch.equal(resumed.z, whole.z) and torch.equal(resumed.x, whole.x)
    assert resumed.evaluations == whole.evaluations == 21 * 100


def test_bad_coupling_settings_are_refused(single_gaussian):
    for kw, match in (({"num_pairs": 0}, "num_pairs must be"), ({"chunk": 0}, "chunk must be"),
                      ({"solver": "nope"}, "nope"), ({"nfe": 0}, "nfe=0"),
                      ({"sigma_max": -1.0}, "sigma_max must be > 0")):
        args = {"num_pairs": 4, **kw}
        with pytest.raises(ValueError, match=match):
            draw_couplings(single_gaussian, args.pop("num_pairs"), (4,), **args)


def test_one_step_distill_loss_vanishes_for_the_exact_map(single_gaussian):
    method = RectifiedFlowDistill(num_pairs=256, solver="ipndm", nfe=100)
    ctx = _ctx(single_gaussian)
    data = torch.zeros(32, 4, dtype=torch.float64)

    def exact(x, sigma):
        assert torch.all(sigma == SIGMA_MAX)
        return single_gaussian.flow(x, SIGMA_MAX, 0.0)

    assert method.loss(exact, data, ctx).item() < 1e-5
    assert ctx.teacher_nfe == 100 * 256 / 32  # the couplings, counted once
    assert method.loss(lambda x, s: exact(x, s) + 0.1, data, ctx).item() == \
        pytest.approx(0.01, rel=0.05)
    assert ctx.teacher_nfe == 100 * 256 / 32


def test_reflow_loss_vanishes_on_straight_couplings():
    """Couplings of a point mass are (z, a): the flow D = a is already their rectified flow."""
    a = torch.tensor([[1.0, -2.0]], dtype=torch.float64)

    class Point(nn.Module):
        def forward(self, x, sigma):
            return a.to(x).expand_as(x)

    ctx = _ctx(Point())
    loss = Reflow(num_pairs=64, nfe=5).loss(_point(a), torch.zeros(32, 2, dtype=torch.float64),
                                            ctx)
    assert loss.item() < 1e-20
    torch.testing.assert_close(ctx.state["x1"], a.expand(64, 2))


# --------------------------------------------------------------------------- training


def _template(seed=0):
    torch.manual_seed(seed)
    return FlowPrecond(MLPDenoiserNet(2, hidden=32, depth=2, emb_dim=16))


def _two_modes():
    return GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.05).float()


@pytest.mark.slow  # about 15 s on an idle core, 55 s on a busy one
def test_reflow_straightens_an_exact_flow_and_records_its_cost():
    """The exact 1-RF of a two-mode mixture is its PF-ODE (same marginals x0 + sigma z); one
    reflow round on its couplings gives a much straighter flow."""
    gm = _two_modes()
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(5))
    s1 = straightness(gm, z, steps=32).mean().item()
    method = Reflow(num_pairs=512, nfe=15)
    cfg = TrainConfig(steps=200, batch_size=64, lr=3e-3, ema_decay=0.9, progress=False)
    res = train(method, method.init_student(gm, _template()), torch.zeros(512, 2), cfg,
                teacher=gm)
    s2 = straightness(res.ema, z, steps=32).mean().item()
    assert s1 > 0.5 and s2 < 0.2 * s1
    assert res.cost.steps == 200 and res.cost.seconds > 0
    assert res.cost.teacher_nfe == pytest.approx(15 * 512 / 64)  # the coupling draw


def test_rectified_flows_resume_after_a_kill(tmp_path):
    gm = _two_modes()
    data = gm.sample(512, generator=torch.Generator().manual_seed(0))
    coupling = {"num_pairs": 96, "nfe": 5, "chunk": 32}
    cfg = TrainConfig(steps=12, batch_size=32, progress=False, checkpoint_every=4)
    kw = {"reflow": Reflow(**coupling), "distill": RectifiedFlowDistill(**coupling)}

    def run(out, callback=None):
        return rectified_flows(2, _template(), data, TrainConfig(**{**cfg.__dict__,
                                                                    "out_dir": str(out)}),
                               callback=callback, **kw)

    whole = run(tmp_path / "whole")
    assert [r.cost.steps for r in whole.flows + whole.distilled] == [12] * 4
    assert len(whole.couplings) == 2 and all(d["evaluations"] == 5 * 96 for d in
                                             whole.couplings)
    # the distillation of the 1-RF reads the reflow's draw: both count the same teacher NFE
    assert whole.distilled[0].cost.teacher_nfe == whole.flows[1].cost.teacher_nfe == 5 * 96 / 32

    def kill(stage, result):
        if stage == "2-rf":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", kill)
    stages = []
    resumed = run(tmp_path / "killed", lambda s, r: stages.append(s))
    assert stages == ["1-rf", "2-rf", "1-rf+distill", "2-rf+distill"]
    for a, b in zip(resumed.flows + resumed.distilled, whole.flows + whole.distilled,
                    strict=True):
        for (k, v), w in zip(a.ema.state_dict().items(), b.ema.state_dict().values(),
                             strict=True):
            assert torch.equal(v, w), k


def test_rectified_flows_refuses_bad_input(tmp_path):
    cfg = TrainConfig(steps=1, out_dir=str(tmp_path), progress=False)
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k \\(the number of rectifications\\)"):
            rectified_flows(k, _template(), torch.zeros(8, 2), cfg)
    with pytest.raises(ValueError, match=r"needs config\.out_dir"):
        rectified_flows(1, _template(), torch.zeros(8, 2), TrainConfig(steps=1))


def test_cli_trains_a_flow_reflows_it_and_distils_it(tmp_path, capsys):
    from fewstep.cli import main
    from fewstep.train import checkpoint_info, load_checkpoint

    common = ["--data", "moons", "--hidden", "16", "--batch-size", "32", "--quiet"]
    pairs = ["--param", "num_pairs=64", "--param", "nfe=4",
             "--param", f"cache={tmp_path / 'couplings'}"]
    assert main(["distill", "--method", "rf", "--steps", "3", "--out", str(tmp_path / "1rf"),
                 *common]) == 0
    assert isinstance(load_checkpoint(tmp_path / "1rf"), FlowPrecond)
    for method, out in (("reflow", "2rf"), ("rf_distill", "1rf-distill")):
        assert main(["distill", "--method", method, "--teacher", str(tmp_path / "1rf"),
                     "--steps", "3", "--out", str(tmp_path / out), *pairs, *common]) == 0
        assert checkpoint_info(tmp_path / out)["cost"]["teacher_nfe"] == 4 * 64 / 32
    assert sorted(p.name for p in (tmp_path / "couplings").glob("*.safetensors")) == \
        ["chunk_00000.safetensors"]  # drawn once, read by both
    assert main(["sample", "--teacher", "moons", "--student", str(tmp_path / "1rf-distill"),
                 "--nfe", "1", "--n", "8", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["sample", "--teacher", "moons", "--student", str(tmp_path / "1rf-distill"),
                 "--nfe", "2", "--n", "8", "--out", str(tmp_path / "s")]) == 2
    assert "one-step" in capsys.readouterr().err
    assert main(["distill", "--method", "reflow", "--steps", "3", "--out",
                 str(tmp_path / "x"), *common]) == 2  # no teacher flow
    assert "needs a teacher" in capsys.readouterr().err


def test_a_diverged_flow_writes_no_couplings(tmp_path):
    from fewstep.denoiser import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"NaN|non-finite"):
        draw_couplings(lambda x, s: x * math.nan, 8, (2,), nfe=3, cache=tmp_path / "c")
    assert not list((tmp_path / "c").glob("chunk_*"))
