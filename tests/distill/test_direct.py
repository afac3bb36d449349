"""Direct consistency models against exact teachers."""

import pytest
import torch

from fewstep import GaussianMixture, solvers
from fewstep.distill import DirectCM, LossContext
from fewstep.metrics import sliced_wasserstein
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet
from fewstep.train import TrainConfig, train


def _ctx(teacher, batch=32, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def test_levels_and_paths():
    dcm = DirectCM(num_scales=10, nfe=7)
    levels, paths, knobs = dcm.paths()
    assert len(levels) == 9 and levels[0] == 80 and levels[-1] > dcm.sigma_min
    assert torch.equal(paths[:, 0], levels) and (paths[:, -1] == 0).all()
    torch.testing.assert_close(paths[:, -2], torch.full((9,), dcm.sigma_min, dtype=paths.dtype))
    assert paths.shape[1] == solvers.plan("ipndm", 7).steps + 1 and knobs == {}


def test_targets_are_exact_ode_solutions(single_gaussian):
    dcm = DirectCM(num_scales=12, nfe=80)
    levels, _, _ = dcm.paths()
    ctx = _ctx(single_gaussian, batch=22)
    i = torch.arange(22) % len(levels)
    sigma = levels[i]
    x = single_gaussian.sample(22, generator=torch.Generator().manual_seed(0)) \
        + sigma[:, None] * torch.randn(22, 4, dtype=torch.float64)
    target = dcm.target(x, i, ctx, {})
    exact = torch.stack([single_gaussian.flow(x[r:r + 1], float(sigma[r]), 0.0)[0]
                         for r in range(22)])
    torch.testing.assert_close(target, exact, rtol=0, atol=2e-3)
    assert ctx.teacher_nfe == pytest.approx(80)  # one full solve of every row


def test_loss_vanishes_for_the_exact_consistency_function(single_gaussian):
    dcm = DirectCM(nfe=80)

    def exact(x, sigma):
        return torch.stack([single_gaussian.flow(x[r:r + 1], float(sigma[r]), 0.0)[0]
                            for r in range(len(x))])

    x0 = single_gaussian.sample(64, generator=torch.Generator().manual_seed(1))
    assert dcm.loss(exact, x0, _ctx(single_gaussian, 64)).item() < 1e-6


def test_student_sigma_min_must_match():
    with pytest.raises(ValueError, match="sigma_min"):
        DirectCM().init_student(None, ConsistencyPrecond(torch.nn.Linear(2, 2), sigma_min=0.01))


def test_student_must_respect_the_boundary():
    with pytest.raises(ValueError, match=r"ConsistencyPrecond.*not EDMPrecond"):
        DirectCM().init_student(None, EDMPrecond(MLPDenoiserNet(2, hidden=8, depth=1, emb_dim=8)))


def test_student_warm_started_from_edm_teacher():
    teacher = EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8))
    student = DirectCM().init_student(
        teacher, ConsistencyPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8)))
    assert isinstance(student, ConsistencyPrecond)
    assert torch.equal(student.net.inp.weight, teacher.net.inp.weight)


@pytest.mark.slow
def test_training_improves_one_step_student():
    torch.manual_seed(0)
    gm = GaussianMixture.random(2, 4, spread=1.0, std=0.3, seed=0).float()
    data = gm.sample(4096, generator=torch.Generator().manual_seed(0))
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(1))
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    template = ConsistencyPrecond(MLPDenoiserNet(2, hidden=64, depth=2, emb_dim=32))

    def sw(model):
        with torch.no_grad():
            x = solvers.get("ddim")(model, z, torch.tensor([80.0, 0.0]))
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    before = sw(template)
    dcm = DirectCM(num_scales=10, nfe=17)
    cfg = TrainConfig(steps=600, batch_size=128, lr=2e-3, ema_decay=0.9, progress=False)
    result = train(dcm, template, data, cfg, teacher=gm)
    assert sw(result.student) < 0.5 * before
    assert result.cost.teacher_nfe == 17 * 600
