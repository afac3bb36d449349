"""Lockstep batching of per-row teacher solves: same answers as separate solves, fewer calls."""

import pytest
import torch

import fewstep
from fewstep.denoiser import CountingDenoiser, NonFiniteError
from fewstep.distill import LossContext
from fewstep.distill.lockstep import run_lockstep

PATHS = torch.tensor([[4.0, 1.0, 0.3, 0.0], [2.0, 0.5, 0.1, 0.0], [9.0, 3.0, 1.0, 0.0]],
                     dtype=torch.float64)


def _x(n=7, seed=2):
    return torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("solver", ["ddim", "heun", "ipndm", "dpmpp_2m", "unipc_bh2"])
def test_rows_match_separate_solves_and_batch_the_calls(mixture, solver):
    x, which = _x(), torch.tensor([0, 1, 2, 2, 0, 1, 1])
    counter = CountingDenoiser(mixture)
    ctx = LossContext(counter, None, torch.Generator(), batch_size=7, lockstep=True)
    out = ctx.teacher_solve_rows(solver, x, PATHS[which])
    spec = fewstep.solvers.get(solver)
    for r in range(7):
        torch.testing.assert_close(out[r:r + 1], spec(mixture, x[r:r + 1], PATHS[which[r]]))
    single = CountingDenoiser(mixture)
    spec(single, x[:1], PATHS[0])
    assert counter.nfe == single.nfe  # one batched call per solver step, not one per group
    assert ctx.teacher_nfe == pytest.approx(single.nfe)  # all 7 rows, every step


def test_per_row_conditioning_follows_its_rows():
    seen = []

    def D(x, sigma, *, label):
        seen.append(label.clone())
        return x * 0 + label[:, None].to(x)  # the denoised value is the row's label

    x, which = _x(5), torch.tensor([1, 0, 1, 2, 0])
    ctx = LossContext(D, None, torch.Generator(), batch_size=5, lockstep=True)
    labels = torch.tensor([10, 11, 12, 13, 14])
    out = ctx.teacher_solve_rows("ddim", x, PATHS[which], row_cond={"label": labels})
    torch.testing.assert_close(out, labels[:, None].expand(5, 4).double())
    assert all(len(s) == 5 for s in seen)  # every call saw all rows


def test_unequal_call_counts_do_not_deadlock(mixture):
    x = _x(4)
    plans = [torch.tensor([4.0, 1.0, 0.0]), torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])]
    ddim = fewstep.solvers.get("ddim")
    outs = run_lockstep(mixture, [ddim.steps(x, p.double()) for p in plans])
    for out, p in zip(outs, plans, strict=True):
        torch.testing.assert_close(out, ddim(mixture, x, p.double()))


def test_errors_from_a_group_or_the_model_reach_the_caller(mixture):
    x = _x(3)

    def bad():
        yield x, 1.0
        raise ZeroDivisionError("group failed")

    ddim = fewstep.solvers.get("ddim")
    with pytest.raises(ZeroDivisionError, match="group failed"):
        run_lockstep(mixture, [bad(), ddim.steps(x, PATHS[0])])

    def nan_model(x, sigma):
        return torch.full_like(x, float("nan"))

    ctx = LossContext(nan_model, None, torch.Generator(), batch_size=3, lockstep=True)
    with pytest.raises(NonFiniteError, match="NaN"):
        ctx.teacher_solve_rows("ddim", x, PATHS[torch.tensor([0, 1, 2])])


def test_stochastic_solvers_stay_deterministic(mixture):
    x, which = _x(6), torch.tensor([0, 1, 2, 0, 1, 2])
    outs = []
    for _ in range(2):
        ctx = LossContext(mixture, None, torch.Generator(), batch_size=6)
        outs.append(ctx.teacher_solve_rows("ddpm", x, PATHS[which],
                                           generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("teacher", ["function", "mixture", "mlp"])
def test_lockstep_is_the_default_for_every_teacher(teacher, mixture):
    """Groups are batched by default, also for exact and tiny teachers (the 2-D MLP of
    ``distill_suite.py`` paid 2.5-5x for group-after-group solves); ``lockstep=False`` runs
    one group after another."""
    from fewstep.nets import EDMPrecond, MLPDenoiserNet

    D = {"function": lambda x, sigma: x * 0, "mixture": mixture,
         "mlp": EDMPrecond(MLPDenoiserNet(4, hidden=32)).eval()}[teacher]
    counter = CountingDenoiser(D)
    x, which = _x(6), torch.tensor([0, 1, 2, 0, 1, 2])
    default = LossContext(counter, None, torch.Generator(), 6).teacher_solve_rows(
        "ddim", x, PATHS[which])
    assert counter.nfe == 3 and counter.rows == 18  # one call of all 6 rows per DDIM step
    counter = CountingDenoiser(D)
    sequential = LossContext(counter, None, torch.Generator(), 6, lockstep=False)
    torch.testing.assert_close(sequential.teacher_solve_rows("ddim", x, PATHS[which]), default)
    assert counter.nfe == 9 and counter.rows == 18  # 3 groups of 2 rows, 3 steps each


def test_no_deadlock_under_repeated_failures_and_finishes():
    """Races between a failing group, finishing groups and the caller: 300 rounds of each
    must all return (run in a watchdog thread so a deadlock fails instead of hanging)."""
    import threading

    x = _x(3)
    ddim = fewstep.solvers.get("ddim")

    def D(x, sigma):
        return x * 0.5

    def bad():
        yield x, 1.0
        raise ZeroDivisionError("group failed")

    outcomes = []
    short = torch.tensor([4.0, 0.0], dtype=torch.float64)

    def hammer():
        for i in range(300):
            solves = [ddim.steps(x, PATHS[0]), ddim.steps(x, short)]
            if i % 2:
                solves.append(bad())
            try:
                run_lockstep(D, solves)
                outcomes.append("ok")
            except ZeroDivisionError:
                outcomes.append("error")

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), f"lockstep deadlocked after {len(outcomes)} runs"
    assert outcomes == ["ok", "error"] * 150
