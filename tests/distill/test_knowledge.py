"""Knowledge distillation (Luhman & Luhman 2021) against exact teachers."""

import pytest
import torch

from fewstep import GaussianMixture, solvers
from fewstep.distill import KnowledgeDistillation, LossContext
from fewstep.metrics import sliced_wasserstein
from fewstep.nets import EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train


def _ctx(teacher, batch=32, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def test_pairs_are_exact_ode_endpoints_and_cost_is_counted(single_gaussian):
    kd = KnowledgeDistillation(num_pairs=300, nfe=100, chunk=128)
    ctx = _ctx(single_gaussian, batch=32)
    data = torch.zeros(32, 4, dtype=torch.float64)
    kd.loss(lambda x, s: x, data, ctx)
    z, x0 = ctx.state["z"], ctx.state["x0"]
    assert z.shape == x0.shape == (300, 4)
    assert 70 < z.std() < 90  # z ~ N(0, sigma_max^2)
    torch.testing.assert_close(x0, single_gaussian.flow(z, 80.0, 0.0), rtol=0, atol=2e-3)
    assert ctx.teacher_nfe == 100 * 300 / 32  # NFE x pairs / batch
    before = ctx.teacher_nfe
    kd.loss(lambda x, s: x, data, ctx)  # pairs are made once
    assert ctx.teacher_nfe == before and ctx.state["z"] is z


def test_loss_vanishes_for_the_exact_one_step_map(single_gaussian):
    kd = KnowledgeDistillation(num_pairs=256, nfe=100)
    ctx = _ctx(single_gaussian)
    data = torch.zeros(32, 4, dtype=torch.float64)

    def exact(x, sigma):
        assert torch.all(sigma == 80.0)
        return single_gaussian.flow(x, 80.0, 0.0)

    assert kd.loss(exact, data, ctx).item() < 1e-6
    assert kd.loss(lambda x, s: exact(x, s) + 0.1, data, ctx).item() == pytest.approx(0.01, 0.05)


def test_conditioning_is_rejected(single_gaussian):
    with pytest.raises(ValueError, match="unconditional"):
        KnowledgeDistillation().loss(lambda x, s: x, {"x": torch.zeros(2, 4),
                                                       "cond": torch.zeros(2)},
                                     _ctx(single_gaussian))


def test_short_run_improves_one_step_student():
    torch.manual_seed(0)
    gm = GaussianMixture.random(2, 4, spread=1.0, std=0.3, seed=0).float()
    data = gm.sample(1024, generator=torch.Generator().manual_seed(0))
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(1))
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    template = EDMPrecond(MLPDenoiserNet(2, hidden=64, depth=2, emb_dim=32))

    def sw(model):
        with torch.no_grad():
            x = solvers.get("ddim")(model, z, torch.tensor([80.0, 0.0]))
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    before = sw(template)
    kd = KnowledgeDistillation(num_pairs=2048)
    cfg = TrainConfig(steps=300, batch_size=128, lr=2e-3, ema_decay=0.9, progress=False)
    result = train(kd, template, data, cfg, teacher=gm)
    assert sw(result.student) < 0.3 * before
    assert result.cost.teacher_nfe == 35 * 2048 / 128
