"""Progressive distillation (Salimans & Ho 2022) against exact teachers."""

import pytest
import torch

from fewstep import GaussianMixture, solvers
from fewstep.distill import LossContext, ProgressiveDistillation, edm_weight, get_method
from fewstep.metrics import sliced_wasserstein
from fewstep.nets import EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train

C = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)


def dirac(x, sigma, **cond):
    """Exact denoiser of a point mass at C: its PF-ODE is x(s) = C + (x - C) s / s0."""
    return C.to(x).expand_as(x)


def _ctx(teacher, batch=64, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def test_two_ddim_steps_follow_exact_ode_and_target_is_endpoint():
    pd = ProgressiveDistillation(teacher_steps=8)
    ctx = _ctx(dirac)
    x = 5 * torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for n in (4, 2, 1):
        i = torch.arange(6) % n
        fine = pd.sigmas(2 * n)
        s, s_next = fine[2 * i], fine[2 * i + 2]
        two_steps = ctx.teacher_solve_rows("ddim", x, torch.stack(
            [fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]], 1))
        exact = C + (x - C) * (s_next / s)[:, None]
        torch.testing.assert_close(two_steps, exact, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pd.target(dirac, x, i, n, ctx, {}), C.expand_as(x),
                                   rtol=1e-10, atol=1e-10)


def test_loss_is_zero_for_exact_student_and_weighted_error_otherwise():
    pd = ProgressiveDistillation(teacher_steps=8, steps_per_round=10)
    x0 = C.expand(64, 3).clone()
    assert pd.loss(dirac, x0, _ctx(dirac)).item() < 1e-20
    delta = 0.1
    loss = pd.loss(lambda x, s: dirac(x, s) + delta, x0, _ctx(dirac, seed=3))
    i = torch.randint(4, (64,), generator=torch.Generator().manual_seed(3))  # first draw of ctx
    expected = (edm_weight(pd.sigmas(4)[i], 0.5) * delta**2).mean()
    torch.testing.assert_close(loss, expected.to(loss))


def test_rounds_grids_and_teacher_replacement():
    pd = ProgressiveDistillation(teacher_steps=8, final_steps=1, steps_per_round=5)
    assert pd.rounds == 3 and pd.total_steps == 15
    assert [pd.student_steps(pd.round_at(s)) for s in (0, 4, 5, 10, 14, 99)] == [4, 4, 2, 1, 1, 1]
    base = pd.sigmas(8)
    assert base[0] == 80 and base[-1] == 0 and len(base) == 9
    assert torch.equal(pd.sigmas(2), base[::4]) and torch.equal(pd.sigmas(1), base[::8])
    ctx, student = _ctx(dirac), torch.nn.Linear(2, 2)
    pd.on_step(0, student, ctx)
    assert "teacher" not in ctx.state
    pd.on_step(5, student, ctx)
    new = ctx.state["teacher"]
    assert new is not student and torch.equal(new.weight, student.weight)
    assert not new.weight.requires_grad
    pd.on_step(6, student, ctx)
    assert ctx.state["teacher"] is new


def test_loss_uses_replaced_teacher_and_counts_nfe():
    pd = ProgressiveDistillation(teacher_steps=4, steps_per_round=2)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    ctx = _ctx(lambda x, s: torch.full_like(x, float("nan")), batch=8)
    ctx.state["teacher"], ctx.step = dirac, 2
    assert torch.isfinite(pd.loss(dirac, x0, ctx))
    assert ctx.teacher_nfe == 2  # two DDIM teacher evaluations per row


@pytest.mark.parametrize("kwargs", [{"teacher_steps": 6}, {"teacher_steps": 1},
                                    {"teacher_steps": 8, "final_steps": 3}])
def test_invalid_step_counts(kwargs):
    with pytest.raises(ValueError, match="power of two"):
        ProgressiveDistillation(**kwargs)


def test_short_run_improves_few_step_student():
    torch.manual_seed(0)
    gm = GaussianMixture.random(2, 4, spread=1.0, std=0.3, seed=0).float()
    data = gm.sample(4096, generator=torch.Generator().manual_seed(0))
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(1))
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    pd = get_method("pd")(teacher_steps=4, steps_per_round=150)
    template = EDMPrecond(MLPDenoiserNet(2, hidden=64, depth=2, emb_dim=32))

    def sw(model, steps):
        with torch.no_grad():
            x = solvers.get("ddim")(model, z, pd.sigmas(steps))
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    before = sw(template, 1)
    cfg = TrainConfig(steps=pd.total_steps, batch_size=128, lr=2e-3, ema_decay=0.9,
                      progress=False)
    result = train(pd, template, data, cfg, teacher=gm)
    assert sw(result.student, 1) < 0.5 * before
    assert result.cost.teacher_nfe == 2 * pd.total_steps
