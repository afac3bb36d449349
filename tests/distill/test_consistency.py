"""Consistency losses against closed-form answers: the exact consistency function of a single
Gaussian, the pseudo-Huber formula, the iCT curriculum and the ECT gap schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from fewstep import GaussianMixture, metrics, solvers
from fewstep.denoiser import as_batch_sigma
from fewstep.distill.base import LossContext, get_method
from fewstep.distill.consistency import (
    ConsistencyDistillation,
    EasyConsistencyTuning,
    ImprovedConsistencyTraining,
    consistency_distance,
    ect_r,
    huber_c,
    ict_num_scales,
    karras_levels,
    lognormal_index_probs,
    pseudo_huber,
)
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet

SIGMA_MIN = 0.002


class GaussianConsistency(nn.Module):
    """``f(x, s) = mu + (x - mu) sqrt((v + smin^2) / (v + s^2))``: the exact consistency function
    of N(mu, v) (the closed-form PF-ODE flow to sigma_min), per-row sigma; ``scale`` != 1 makes
    it the consistency function of a wrong variance ``scale * v``. Records the sigmas it sees."""

    def __init__(self, gm: GaussianMixture, scale: float = 1.0):
        super().__init__()
        self.gm, self.seen = gm, []
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def forward(self, x, sigma):
        s = as_batch_sigma(sigma, x)
        self.seen.append(s.detach().clone())
        mu, v = self.gm.means, self.scale * self.gm.variances
        return mu + (x - mu) * ((v + SIGMA_MIN**2) / (v + s[:, None] ** 2)).sqrt()


def context(teacher, batch, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def cd_loss(gm, f, method, n=2048):
    x0 = gm.sample(n, generator=torch.Generator().manual_seed(0))
    ctx = context(gm, n, seed=1)
    method.on_step(0, f, ctx)
    return float(method.loss(f, x0, ctx).detach()), ctx


def test_methods_are_registered():
    assert get_method("cd") is ConsistencyDistillation
    assert get_method("ct") is ImprovedConsistencyTraining
    assert get_method("ect") is EasyConsistencyTuning


def test_exact_consistency_function_makes_the_cd_loss_vanish(single_gaussian):
    """Heun teacher steps on N = 1000 Karras levels: the loss of the exact f is the squared
    Heun error (< 1e-13; measured 4e-16), while f of a 20% wrong variance is > 1e-9
    (measured 4e-9) and the teacher costs 2 evaluations per row."""
    method = ConsistencyDistillation(N=1000, solver="heun")
    exact, ctx = cd_loss(single_gaussian, GaussianConsistency(single_gaussian), method)
    wrong, _ = cd_loss(single_gaussian, GaussianConsistency(single_gaussian, 1.2), method)
    assert exact < 1e-13 and wrong > 1e-9 and wrong > 1e4 * exact, (exact, wrong)
    assert ctx.teacher_nfe == pytest.approx(2.0)


@pytest.mark.parametrize("solver,nfe", [("euler", 1.0), ("heun", 2.0), ("dpmpp_2s", 2.0)])
def test_cd_loss_falls_with_the_teacher_step(single_gaussian, solver, nfe):
    """Any registered solver takes the teacher step; finer levels give a smaller loss."""
    losses = []
    for N in (18, 150):
        loss, ctx = cd_loss(single_gaussian, GaussianConsistency(single_gaussian),
                            ConsistencyDistillation(N=N, solver=solver), n=512)
        losses.append(loss)
        assert ctx.teacher_nfe == pytest.approx(nfe)
    assert losses[1] < 1e-3 * losses[0] < 1e-6, losses


def test_cd_target_is_an_ema_of_the_student(single_gaussian):
    f = GaussianConsistency(single_gaussian, 1.0)
    ctx = context(single_gaussian, 4)
    method = ConsistencyDistillation(mu=0.9)
    method.on_step(0, f, ctx)
    with torch.no_grad():
        f.scale.fill_(2.0)
    method.on_step(1, f, ctx)
    assert float(ctx.state["target"].scale) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    assert not ctx.state["target"].scale.requires_grad


def test_pseudo_huber_values():
    a = torch.tensor([[3.0, 4.0], [0.0, 1e-3]])
    b = torch.zeros(2, 2)
    got = pseudo_huber(a, b, 1.0)
    torch.testing.assert_close(got, torch.tensor([math.sqrt(26) - 1, math.sqrt(1 + 1e-6) - 1]))
    small = pseudo_huber(a[1:].double(), b[1:].double(), 0.5)  # ~ |x|^2 / (2c) for |x| << c
    assert float(small) == pytest.approx(1e-6 / (2 * 0.5), rel=1e-3)
    img = torch.zeros(2, 3, 32, 32)
    assert huber_c(img) == pytest.approx(0.00054 * math.sqrt(3072))  # 0.0299 on CIFAR-10
    assert consistency_distance("pseudo_huber", img + 1, img).tolist() == pytest.approx(
        [math.sqrt(3072 + huber_c(img) ** 2) - huber_c(img)] * 2)
    assert consistency_distance("l2", a, b).tolist() == pytest.approx([12.5, 5e-7])
    with pytest.raises(ValueError, match="LPIPS is not available"):
        consistency_distance("lpips", a, b)
    with pytest.raises(ValueError, match="LPIPS is not available"):
        ConsistencyDistillation(distance="lpips")
    with pytest.raises(ValueError, match="unknown distance 'l1'"):
        ImprovedConsistencyTraining(distance="l1")


@pytest.mark.parametrize("cls", [ConsistencyDistillation, ImprovedConsistencyTraining,
                                 EasyConsistencyTuning])
@pytest.mark.parametrize("c", [0, 0.0, -0.5, float("nan"), float("inf")])
def test_pseudo_huber_c_must_be_positive(cls, c):
    """c = 0 gives sqrt(|a - b|^2) whose gradient at a = b is NaN: refused when the method is
    built, naming the value."""
    with pytest.raises(ValueError, match=f"pseudo-Huber c must be a positive.*got c={c!r}"):
        cls(distance="pseudo_huber", c=c)
    assert cls(distance="pseudo_huber", c=0.01).c == 0.01


def test_ict_curriculum_doubles_from_s0_to_s1():
    """Song & Dhariwal 2023, Eq. 8 with K = 400k: K' = 50k, N = 11, 21, ..., 1281."""
    K = 400_000
    assert [ict_num_scales(k, K) for k in range(0, K, 50_000)] == [
        11, 21, 41, 81, 161, 321, 641, 1281]
    assert ict_num_scales(49_999, K) == 11 and ict_num_scales(K - 1, K) == 1281
    # s0 = 2, s1 = 8, K = 80: K' = floor(80 / (log2 4 + 1)) = 26
    assert [ict_num_scales(k, 80, s0=2, s1=8) for k in (0, 25, 26, 52, 79)] == [3, 3, 5, 9, 9]


def test_lognormal_index_probabilities_match_monte_carlo():
    sig = karras_levels(41, SIGMA_MIN, 80.0, 7.0)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    assert p.shape == (40,) and float(p.sum()) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    s = torch.exp(-1.1 + 2.0 * torch.randn(400_000, generator=g, dtype=torch.float64))
    s = s[(s > sig[0]) & (s < sig[-1])]
    mc = torch.bincount(torch.bucketize(s, sig) - 1, minlength=40).double() / len(s)
    torch.testing.assert_close(p, mc, atol=3e-3, rtol=0)


def test_ct_samples_adjacent_levels_with_lognormal_weights(single_gaussian):
    """The CT loss evaluates the student at (s_i, s_{i+1}) pairs with i ~ p(i)."""
    method = ImprovedConsistencyTraining(total_steps=800, s0=10, s1=40)
    f = GaussianConsistency(single_gaussian)
    x0 = single_gaussian.sample(20_000, generator=torch.Generator().manual_seed(0))
    ctx = context(None, len(x0))
    ctx.step = 0  # N = 11
    loss = method.loss(f, x0, ctx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    lo, hi = f.seen
    sig = karras_levels(11, SIGMA_MIN, 80.0, 7.0)
    i = torch.searchsorted(sig, lo, right=False)
    torch.testing.assert_close(sig[i], lo)
    torch.testing.assert_close(sig[i + 1], hi)
    hist = torch.bincount(i, minlength=10).double() / len(i)
    torch.testing.assert_close(hist, lognormal_index_probs(sig), atol=0.01, rtol=0)
    assert ctx.teacher_nfe == 0


def test_ect_gap_shrinks_by_q_each_stage():
    t = torch.tensor([0.05, 0.5, 2.0, 10.0, 80.0], dtype=torch.float64)
    for stage in range(5):
        r = ect_r(t, stage)
        assert (r >= 0).all() and (r < t).all()
        gap = (t - ect_r(t, stage)) / t  # = 2^-(stage+1) (1 + 8 sigmoid(-t)) where r > 0
        expect = 2.0 ** -(stage + 1) * (1 + 8 * torch.sigmoid(-t))
        torch.testing.assert_close(gap, expect.clamp(max=1.0))
    assert (ect_r(t, 0)[:2] == 0).all()  # stage 0 starts as denoising at small t
    assert float(ect_r(torch.tensor([1e4]), 9)) == pytest.approx(1e4 * (1 - 2.0**-10))


def test_ect_loss_uses_the_stage_of_the_step(single_gaussian):
    method = EasyConsistencyTuning(double_every=100)
    x0 = single_gaussian.sample(4096, generator=torch.Generator().manual_seed(0))
    for step, stage in ((0, 0), (250, 2)):
        f = GaussianConsistency(single_gaussian)
        ctx = context(None, len(x0))
        ctx.step = step
        method.loss(f, x0, ctx)
        r_eval, t = f.seen  # target at max(r, sigma_min) first, then the student at t
        r = ect_r(t, stage)
        torch.testing.assert_close(r_eval, r.clamp(min=SIGMA_MIN))
        assert (t >= SIGMA_MIN).all() and (t <= 80).all()


def test_init_student_checks_and_warm_start():
    net = MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8)
    teacher = EDMPrecond(net)
    student = ConsistencyPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8))
    with pytest.raises(ValueError, match="boundary-respecting"):
        ConsistencyDistillation().init_student(None, EDMPrecond(net))
    with pytest.raises(ValueError, match="sigma_min"):
        ConsistencyDistillation(sigma_min=0.01).init_student(None, student)
    with pytest.raises(ValueError, match="ECT tunes a trained diffusion model"):
        EasyConsistencyTuning().init_student(None, student)
    tuned = EasyConsistencyTuning().init_student(teacher, student)
    for a, b in zip(tuned.parameters(), teacher.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert ImprovedConsistencyTraining().init_student(teacher, student) is student


def test_losses_backpropagate_into_a_consistency_student(single_gaussian):
    """One gradient step of each method on a small ConsistencyPrecond lowers nothing yet but
    gives finite gradients; the CD teacher is counted."""
    gm = copy.deepcopy(single_gaussian).float()  # .float() is in place: keep the fixture
    x0 = gm.sample(64, generator=torch.Generator().manual_seed(0))
    for method in (ConsistencyDistillation(N=10), ImprovedConsistencyTraining(total_steps=10),
                   EasyConsistencyTuning()):
        torch.manual_seed(0)
        student = ConsistencyPrecond(MLPDenoiserNet(4, hidden=16, depth=1, emb_dim=8))
        ctx = context(gm, 64)
        method.on_step(0, student, ctx)
        loss = method.loss(student, x0, ctx)
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), method.name


def sw_one_step(student, ref, n=2000, seed=0):
    x = 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = solvers.sample_consistency(student, x, torch.tensor([80.0, 0.0]))
    return metrics.sliced_wasserstein(out.double(), ref, n_projections=128,
                                      generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["cd", "ct"])
def test_short_training_improves_one_step_samples(name):
    """400 steps on a 2-d, 8-component mixture (exact teacher for CD): the 1-step sliced
    Wasserstein distance to the data falls below the untrained student's (measured 1.03 ->
    0.18 for CD, -> 0.68 for CT, which learns without a teacher and converges more slowly)."""
    from fewstep.train import TrainConfig, train

    gm = GaussianMixture.random(2, 8, spread=1.0, std=0.25, seed=2).float()
    data = gm.sample(8192, generator=torch.Generator().manual_seed(0))
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(1)).double()
    torch.manual_seed(0)
    student = ConsistencyPrecond(MLPDenoiserNet(2, hidden=64, depth=2, emb_dim=32))
    before = sw_one_step(student, ref)
    method = (ConsistencyDistillation(N=18, solver="heun", mu=0.95) if name == "cd"
              else ImprovedConsistencyTraining(total_steps=400))
    config = TrainConfig(steps=400, batch_size=256, lr=2e-3, ema_decay=0.99, progress=False)
    result = train(method, student, data, config, teacher=gm)
    after = sw_one_step(result.ema, ref)
    assert after < (0.5 if name == "cd" else 0.8) * before, (before, after)
    assert (result.cost.teacher_nfe > 0) == (name == "cd")
