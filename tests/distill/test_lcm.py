"""Latent consistency distillation / fine-tuning (Luo et al. 2023): cross-checks against CD, the
paper's guided solver step, w passthrough, counted teacher rows, resume, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewstep import solvers
from fewstep.data import NULL_LABEL
from fewstep.denoiser import CFGDenoiser
from fewstep.distill import get_method
from fewstep.distill.base import LossContext
from fewstep.distill.consistency import karras_levels
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, latest_checkpoint, train

K = 3  # classes


def _net(seed=0, w=False):
    torch.manual_seed(seed)
    return MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=16, cond_type="label", num_classes=K,
                          w_embedding=w)


def _teacher():
    return EDMPrecond(_net(0)).eval().requires_grad_(False)


def _student(seed=1):
    return ConsistencyPrecond(_net(seed, w=True))


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 2, generator=g), "cond": torch.randint(0, K, (n,), generator=g)}


def _ctx(teacher, seed=0, n=16):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch_size=n)


class _FixedW(nn.Module):
    """A w-conditioned student seen at one fixed w: what CD trains on a fixed-w guided teacher."""

    def __init__(self, f, w):
        super().__init__()
        self.f, self.w = f, w

    def forward(self, x, sigma, **cond):
        return self.f(x, sigma, **cond, w=torch.full((x.shape[0],), self.w))


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_lcd_with_k1_fixed_w_and_l2_is_cd_on_the_guided_teacher(solver, mu):
    T, f, w = _teacher(), _student(), 2.5
    lcd = get_method("lcd")(N=6, k=1, w_min=w, w_max=w, mu=mu, solver=solver, distance="l2")
    cd = get_method("cd")(N=6, mu=mu, solver=solver, distance="l2")
    a = lcd.loss(f, _batch(), _ctx(T))
    b = cd.loss(_FixedW(f, w), _batch(), _ctx(CFGDenoiser(T, w, {"cond": NULL_LABEL})))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert a > 0


def test_guided_euler_step_is_the_papers_combination_per_row():
    """Luo et al. Eq. 11 with w = 1 + omega: x + w Psi_c + (1 - w) Psi_u for a linear solver."""
    T, b = _teacher(), _batch(8)
    x, w = b["x"] * 5, torch.linspace(1.0, 6.0, 8)
    paths = torch.tensor([[4.0, 1.5]] * 4 + [[2.0, 0.3]] * 4, dtype=torch.float32)
    ctx = _ctx(T, n=8)
    got = ctx.teacher_solve_rows("euler", x, paths, teacher=CFGDenoiser(T, None, {"cond": -1}),
                                 row_cond={"cond": b["cond"], "w": w})
    for rows in (slice(0, 4), slice(4, 8)):
        xs, p = x[rows], paths[rows][0]
        psi_c = solvers.get("euler")(T, xs, p, cond={"cond": b["cond"][rows]}) - xs
        psi_u = solvers.get("euler")(T, xs, p, cond={"cond": torch.full((4,), -1)}) - xs
        wr = w[rows, None]
        torch.testing.assert_close(got[rows], xs + wr * psi_c + (1 - wr) * psi_u)
    assert ctx.teacher_nfe == 2.0  # one guided evaluation per row costs two teacher rows


class _Recorder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, sigma, **cond):
        self.calls.append((sigma.clone() if torch.is_tensor(sigma) else sigma, dict(cond)))
        return self.inner(x, sigma, **cond)


def test_w_reaches_the_student_and_target_never_the_teacher():
    teacher, f = _Recorder(_teacher()), _student()
    lcd = get_method("lcd")(N=8, k=2, w_min=1.5, w_max=4.0, mu=0.0, solver="euler")
    rec = _Recorder(f)
    lcd.loss(rec, _batch(32), _ctx(teacher, n=32))
    ws = [c["w"] for _, c in rec.calls]
    assert len(ws) == 2 and torch.equal(ws[0], ws[1])  # target and student: the same w
    assert ws[0].shape == (32,) and bool(((ws[0] >= 1.5) & (ws[0] <= 4.0)).all())
    assert len(set(ws[0].tolist())) == 32  # drawn per row
    assert all("w" not in c for _, c in teacher.calls)
    labels = torch.cat([c["cond"] for _, c in teacher.calls])
    assert (labels == NULL_LABEL).sum() == 32 and (labels != NULL_LABEL).sum() == 32


@pytest.mark.parametrize("solver,rows", [("euler", 2.0), ("heun", 4.0), ("dpmpp_2s", 4.0)])
@pytest.mark.parametrize("k", [1, 3])
def test_skipping_step_is_one_counted_guided_solver_step(solver, rows, k):
    N = 10
    teacher = _Recorder(_teacher())
    ctx = _ctx(teacher, n=16)
    get_method("lcd")(N=N, k=k, solver=solver, mu=0.0).loss(_student(), _batch(), ctx)
    assert ctx.teacher_nfe == rows  # evaluations per step x 2 rows (guidance), per sample
    levels = karras_levels(N, 0.002, 80.0, 7.0).float()
    first = teacher.calls[0][0]  # the solver's first evaluation: at s_{n+k} for every row
    idx = [int(torch.argmin((levels - s).abs())) for s in first.tolist()]
    assert all(torch.isclose(levels[i], s) for i, s in zip(idx, first, strict=True))
    assert min(idx) >= k  # n + k with n >= 0


def test_lcd_student_starts_as_the_teacher_at_every_w():
    T = _teacher()
    f = get_method("lcd")().init_student(T, _student())
    cd = ConsistencyPrecond(_net(0))
    cd.load_state_dict(T.state_dict())
    x, s, c = torch.randn(5, 2), torch.full((5,), 3.0), torch.arange(5) % K
    for w in (1.0, 7.0):
        torch.testing.assert_close(f(x, s, cond=c, w=torch.full((5,), w)), cd(x, s, cond=c))


def test_lcf_is_skipping_step_consistency_training():
    """The LCF loss by hand: d(f(x0 + s_{n+k} z), sg f(x0 + s_n z)) / (s_{n+k} - s_n)."""
    f, b, N, k = _student(), _batch(), 12, 4
    lcf = get_method("lcf")(N=N, k=k, distance="l2")
    got = lcf.loss(f, b, _ctx(None))
    g = torch.Generator().manual_seed(0)
    sig = karras_levels(N, 0.002, 80.0, 7.0).float()
    n = torch.randint(N - k, (16,), generator=g)
    w = 1.0 + 3.0 * torch.rand(16, generator=g)
    z = torch.randn(16, 2, generator=g)
    t, r = sig[n + k], sig[n]
    cond = {"cond": b["cond"], "w": w}
    with torch.no_grad():
        y = f(b["x"] + r[:, None] * z, r, **cond)
    pred = f(b["x"] + t[:, None] * z, t, **cond)
    want = ((pred - y).pow(2).mean(1) / (t - r)).mean()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["lcd", "lcf"])
def test_training_is_deterministic_and_resumes_bitwise(tmp_path, name):
    method = get_method(name)(N=8, k=2, **({"mu": 0.9} if name == "lcd" else {}))
    data = _batch(128, seed=3)

    def cfg(run, steps=6):
        return TrainConfig(steps=steps, batch_size=32, lr=1e-3, ema_decay=0.9,
                           checkpoint_every=2, progress=False, out_dir=str(tmp_path / run))

    full = train(method, _student(), data, cfg("full"), teacher=_teacher())
    train(method, _student(), data, cfg("part", steps=4), teacher=_teacher())
    assert latest_checkpoint(tmp_path / "part").name == "step_00000004"
    resumed = train(method, _student(7), data, cfg("part"), teacher=_teacher())
    for a, b in ((full.student, resumed.student), (full.ema, resumed.ema)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
    assert resumed.cost.teacher_nfe == full.cost.teacher_nfe
    assert (full.cost.teacher_nfe > 0) == (name == "lcd")


@pytest.mark.parametrize("name,kw,match", [
    ("lcd", {"w_min": 3.0, "w_max": 2.0}, "w_min <= w_max"),
    ("lcd", {"w_min": -1.0}, "w_min <= w_max"),
    ("lcd", {"N": 5, "k": 5}, r"skipping step k must lie in \[1, N - 1\]"),
    ("lcd", {"k": 0}, "skipping step k"),
    ("lcd", {"distance": "l1"}, "unknown distance"),
    ("lcf", {"N": 5, "k": 5}, "1 <= k <= N - 1"),
    ("lcf", {"w_max": float("nan")}, "w_min <= w_max"),
])
def test_bad_hyper_parameters_are_named(name, kw, match):
    with pytest.raises(ValueError, match=match):
        get_method(name)(**kw)


def test_errors_at_use():
    lcd = get_method("lcd")(N=6)
    with pytest.raises(ValueError, match="needs labels under 'cond'"):
        lcd.loss(_student(), torch.randn(8, 2), _ctx(_teacher()))
    with pytest.raises(ValueError, match="needs a teacher"):
        lcd.loss(_student(), _batch(), _ctx(None))
    with pytest.raises(ValueError, match="ConsistencyPrecond"):
        lcd.init_student(_teacher(), EDMPrecond(_net(1, w=True)))
    with pytest.raises(ValueError, match="w_embedding=True"):  # a student without a w input
        lcd.loss(ConsistencyPrecond(_net(1)), _batch(), _ctx(_teacher()))
    with pytest.raises(ValueError, match="needs labels"):
        get_method("lcf")().loss(_student(), torch.randn(8, 2), _ctx(None))
    with pytest.raises(ValueError, match="keyword w="):
        CFGDenoiser(_teacher(), None, {"cond": -1})(torch.randn(2, 2), 1.0,
                                                    cond=torch.zeros(2, dtype=torch.long))
