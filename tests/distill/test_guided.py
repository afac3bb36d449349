"""Guided distillation (Meng et al. 2023): stage 1 against an exact class-conditional teacher,
w passed through progressive distillation (stage 2), and the stochastic sampler."""

import math

import pytest
import torch
from torch import nn

from fewstep import GaussianMixture
from fewstep.data import NULL_LABEL
from fewstep.denoiser import CFGDenoiser, CountingDenoiser
from fewstep.distill import (
    GuidedDistillation,
    LossContext,
    ProgressiveDistillation,
    guided_output,
    sample_pd_stochastic,
    warm_start,
)
from fewstep.nets import EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train

MEANS = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)


class ExactConditional(nn.Module):
    """The exact class-conditional denoiser of 3 Gaussians (one per class, std 0.3); the null
    label gives the exact denoiser of their equal-weight mixture."""

    def __init__(self):
        super().__init__()
        self.per_class = nn.ModuleList(GaussianMixture(MEANS[k:k + 1], 0.09) for k in range(3))
        self.mixture = GaussianMixture(MEANS, 0.09)

    def forward(self, x, sigma, cond):
        out = self.mixture(x, sigma)
        for k in range(3):
            rows = cond == k
            if rows.any():
                out[rows] = self.per_class[k](x[rows], sigma[rows])
        return out


class GuidedTeacherAsStudent(nn.Module):
    """A w-conditioned 'student' that is exactly the guided teacher x_hat_w."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x, sigma, cond, w):
        return guided_output(self.teacher(x, sigma, cond=cond),
                             self.teacher(x, sigma, cond=torch.full_like(cond, NULL_LABEL)), w)


def _ctx(teacher, batch=64, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 3, (n,), generator=g)
    return {"x": MEANS[c] + 0.3 * torch.randn(n, 2, dtype=torch.float64, generator=g), "cond": c}


def test_guided_output_is_fewsteps_cfg_at_scale_one_plus_w():
    """Meng's (1 + w) D_c - w D_u is CFGDenoiser's D_u + s (D_c - D_u) with s = 1 + w."""
    D = ExactConditional().double()
    x = torch.randn(5, 2, dtype=torch.float64)
    sigma = torch.full((5,), 0.7, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1])
    for w in (0.0, 1.0, 3.5):
        cfg = CFGDenoiser(D, 1 + w, {"cond": torch.full_like(c, NULL_LABEL)})
        torch.testing.assert_close(
            guided_output(D(x, sigma, cond=c), D(x, sigma, cond=torch.full_like(c, -1)), w),
            cfg(x, sigma, cond=c))


def test_stage1_loss_is_zero_for_the_guided_teacher_and_positive_otherwise():
    teacher = ExactConditional().double()
    method = GuidedDistillation(w_min=0.5, w_max=4.0)
    ctx = _ctx(teacher)
    assert method.loss(GuidedTeacherAsStudent(teacher), _batch(), ctx).item() < 1e-20
    assert ctx.teacher_nfe == 2.0  # conditional + null rows, one call: 2 evaluations per row

    def unguided(x, sigma, cond, w):  # the conditional teacher ignores w: off by w (D_c - D_u)
        return teacher(x, sigma, cond=cond)

    assert method.loss(unguided, _batch(), _ctx(teacher)).item() > 1e-3


def test_stage1_loss_matches_the_formula_and_is_deterministic():
    """The loss at the loop's draws equals EDM-weighted ||student - x_hat_w||^2, and the same
    generator seed gives the same value."""
    teacher = ExactConditional().double()
    method = GuidedDistillation(w_min=1.0, w_max=2.0)
    seen = {}

    def zero(x, sigma, cond, w):
        seen.update(x=x, sigma=sigma, cond=cond, w=w)
        return torch.zeros_like(x)

    loss = method.loss(zero, _batch(), _ctx(teacher, seed=3))
    assert ((seen["w"] >= 1.0) & (seen["w"] <= 2.0)).all() and seen["w"].unique().numel() > 10
    target = guided_output(teacher(seen["x"], seen["sigma"], cond=seen["cond"]),
                           teacher(seen["x"], seen["sigma"], cond=torch.full_like(
                               seen["cond"], -1)), seen["w"])
    weight = (seen["sigma"] ** 2 + 0.25) / (seen["sigma"] * 0.5) ** 2
    torch.testing.assert_close(loss, (weight * target.pow(2).mean(1)).mean())
    assert method.loss(zero, _batch(), _ctx(teacher, seed=3)).item() == loss.item()


def _cond_net(w_embedding=False):
    torch.manual_seed(0)
    return EDMPrecond(MLPDenoiserNet(2, hidden=32, depth=1, emb_dim=16, cond_type="label",
                                     num_classes=3, w_embedding=w_embedding), sigma_data=0.5)


def test_the_student_starts_as_the_teacher_at_every_w():
    teacher = _cond_net()
    with torch.no_grad():  # a non-trivial teacher
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    student = GuidedDistillation().init_student(teacher, _cond_net(w_embedding=True))
    x, sigma, c = torch.randn(6, 2), torch.full((6,), 1.3), torch.tensor([0, 1, 2, -1, 0, 1])
    for w in (0.0, 2.0, 4.0):
        torch.testing.assert_close(student(x, sigma, cond=c, w=torch.full((6,), w)),
                                   teacher(x, sigma, cond=c))
    with pytest.raises(ValueError, match="missing or differ"):  # only the w embedding is new
        warm_start(_cond_net(w_embedding=True), EDMPrecond(MLPDenoiserNet(2, hidden=32, depth=1,
                                                                          emb_dim=16)))


def test_stage1_trains_in_the_shared_loop_and_counts_the_teacher(tmp_path):
    teacher = ExactConditional().float()
    data = _batch(256)
    data = {"x": data["x"].float(), "cond": data["cond"]}
    method = GuidedDistillation(w_min=0.0, w_max=2.0)
    cfg = TrainConfig(steps=3, batch_size=32, lr=1e-3, progress=False,
                      out_dir=str(tmp_path / "gd"), checkpoint_every=0)
    res = train(method, method.init_student(None, _cond_net(True)), data, cfg, teacher=teacher)
    assert res.cost.teacher_nfe == 6.0  # 3 steps x 2 evaluations of the batch


class Recorder(nn.Module):
    """Records the w it is given; denoises like a point mass at 0."""

    def __init__(self):
        super().__init__()
        self.w: list[torch.Tensor] = []
        self.c: list[torch.Tensor] = []

    def forward(self, x, sigma, cond, w):
        self.w.append(w)
        self.c.append(cond)
        return torch.zeros_like(x)


def test_progressive_distillation_passes_each_rows_w_to_student_and_teacher():
    teacher, student = Recorder(), Recorder()
    pd = ProgressiveDistillation(teacher_steps=4, steps_per_round=5, guidance=(1.0, 3.0))
    batch = _batch(64)
    pd.loss(student, batch, _ctx(teacher))
    (w,) = student.w
    assert w.shape == (64,) and ((w >= 1) & (w <= 3)).all() and w.unique().numel() == 64
    # the teacher's two DDIM steps (one call each, rows grouped by their sigma path) see every
    # row's own (w, label) pair
    pairs = {(a, b) for a, b in zip(w.tolist(), batch["cond"].tolist(), strict=True)}
    assert len(teacher.w) == 2
    for tw, tc in zip(teacher.w, teacher.c, strict=True):
        assert {(a, b) for a, b in zip(tw.tolist(), tc.tolist(), strict=True)} == pairs
    unguided = ProgressiveDistillation(teacher_steps=4, steps_per_round=5)
    with pytest.raises(TypeError):  # without guidance no w is passed (the Recorder needs one)
        unguided.loss(Recorder(), batch, _ctx(Recorder()))


@pytest.mark.parametrize("make", [
    lambda: GuidedDistillation(w_min=2.0, w_max=1.0),
    lambda: GuidedDistillation(w_min=-1.0),
    lambda: GuidedDistillation(w_max=float("nan")),
    lambda: ProgressiveDistillation(teacher_steps=4, guidance=(3.0, 1.0)),
    lambda: ProgressiveDistillation(teacher_steps=4, guidance=(1.0,)),
])
def test_bad_guidance_ranges_are_named(make):
    with pytest.raises(ValueError, match="guidance range"):
        make()


def test_stage1_needs_labels():
    with pytest.raises(ValueError, match="needs class labels"):
        GuidedDistillation().loss(GuidedTeacherAsStudent(ExactConditional()),
                                  torch.randn(8, 2), _ctx(ExactConditional()))


def _gens(n, seed):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def test_stochastic_sampler_keeps_the_forward_process_variance():
    """On a point mass at 0 (D = 0) the DDIM double step to s_{i+2} leaves variance s_{i+2}^2
    and the step back adds s_{i+1}^2 - s_{i+2}^2: after step i the variance is exactly
    s_{i+1}^2, the marginal of the forward process (Meng et al. 2023, Sec. 3.3)."""
    sigmas = torch.tensor([10.0, 4.0, 1.5, 0.5, 0.0], dtype=torch.float64)
    n = 20_000
    x = 10.0 * torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen = []
    counter = CountingDenoiser(lambda x, sigma: torch.zeros_like(x))
    out = sample_pd_stochastic(counter, x, sigmas, generator=torch.Generator().manual_seed(1),
                               callback=lambda info: seen.append(info["x"].var().item()))
    assert counter.nfe == 4  # one evaluation per step, as the deterministic sampler
    for i, var in enumerate(seen[:-1]):
        assert math.isclose(var, sigmas[i + 1].item() ** 2, rel_tol=0.03), (i, var)
    assert torch.equal(out, torch.zeros_like(out))


def test_stochastic_sampler_is_deterministic_per_sample_and_one_step_is_ddim():
    D = ExactConditional().double()
    x = 80 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sigmas = torch.tensor([80.0, 5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    a = sample_pd_stochastic(D, x, sigmas, cond={"cond": c}, generator=_gens(6, 0))
    b = sample_pd_stochastic(D, x, sigmas, cond={"cond": c}, generator=_gens(6, 0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    part = sample_pd_stochastic(D, x[:3], sigmas, cond={"cond": c[:3]},
                                generator=_gens(6, 0)[:3])
    torch.testing.assert_close(part, a[:3], rtol=0, atol=0)  # batch size does not matter
    one = torch.tensor([80.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sample_pd_stochastic(D, x, one, cond={"cond": c}),
                               D(x, torch.full((6,), 80.0, dtype=torch.float64), cond=c))


def test_a_chain_of_pd_runs_shares_one_nested_grid():
    """Continuing 16 -> 8 with a run 8 -> 4 (base_steps=16) keeps karras(16)'s grids."""
    first = ProgressiveDistillation(teacher_steps=16, final_steps=8)
    second = ProgressiveDistillation(teacher_steps=8, final_steps=4, base_steps=16)
    torch.testing.assert_close(second.sigmas(8), first.sigmas(8), rtol=0, atol=0)
    torch.testing.assert_close(second.sigmas(4), first.sigmas(16)[::4], rtol=0, atol=0)
    assert not torch.equal(ProgressiveDistillation(teacher_steps=8).sigmas(4), second.sigmas(4))
    with pytest.raises(ValueError, match="base_steps / teacher_steps must be a power of two"):
        ProgressiveDistillation(teacher_steps=8, final_steps=4, base_steps=24)
