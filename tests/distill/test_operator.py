"""Operator learning of the teacher's trajectory (DFNO, Zheng et al. 2023)."""

import copy

import pytest
import torch

from fewstep import GaussianMixture
from fewstep.distill import LossContext, OperatorDistillation
from fewstep.nets import EDMPrecond, MLPDenoiserNet, TrajectoryOperator
from fewstep.train import TrainConfig, load_checkpoint, train


def _ctx(teacher, batch=32, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch)


def test_targets_are_exact_ode_states_at_the_slots_and_cost_is_counted(single_gaussian):
    m = OperatorDistillation(num_pairs=200, nfe=100, slots=5, chunk=64)
    sigmas = m.slot_sigmas()
    assert len(sigmas) == 5 and sigmas[-1] == 0 and sigmas == sorted(sigmas, reverse=True)
    ctx = _ctx(single_gaussian, batch=32)
    student = m.init_student(None, TrajectoryOperator([4], width=8).double())
    m.loss(student, torch.zeros(32, 4, dtype=torch.float64), ctx)
    z, traj = ctx.state["z"], ctx.state["trajectory"]
    assert z.shape == (200, 4) and traj.shape == (200, 5, 4)
    for k, s in enumerate(sigmas):
        torch.testing.assert_close(traj[:, k], single_gaussian.flow(z, 80.0, s), rtol=0,
                                   atol=2e-3)
    assert ctx.teacher_nfe == 100 * 200 / 32  # NFE x trajectories / batch
    before = ctx.teacher_nfe
    m.loss(student, torch.zeros(32, 4, dtype=torch.float64), ctx)  # drawn once
    assert ctx.teacher_nfe == before and ctx.state["z"] is z


def test_shares_kd_pairs_endpoint_for_endpoint(single_gaussian):
    """The DFNO trajectory's last state is KD's pair target from the same noise."""
    from fewstep.distill import KnowledgeDistillation

    kw = dict(num_pairs=50, nfe=12)
    a, b = _ctx(single_gaussian), _ctx(single_gaussian)
    KnowledgeDistillation(**kw).make_pairs((4,), torch.zeros(1, dtype=torch.float64), a)
    OperatorDistillation(slots=3, **kw).make_pairs((4,), torch.zeros(1, dtype=torch.float64), b)
    assert torch.equal(a.state["z"], b.state["z"])
    assert torch.equal(a.state["x0"], b.state["trajectory"][:, -1])
    assert a.teacher_nfe == b.teacher_nfe


def test_reproduces_a_linear_trajectory_map_it_can_represent():
    """Data N(mu, sd^2 I): the trajectory c_skip_k z + mu (1 - c_skip_k) is the operator's
    skip term plus a z-independent correction per slot, which the net learns."""
    sd, mu = 0.5, torch.tensor([1.0, -2.0])
    gm = GaussianMixture(mu[None], torch.full((1, 2), sd**2))
    data = gm.sample(256, generator=torch.Generator().manual_seed(0))
    m = OperatorDistillation(num_pairs=512, nfe=40, slots=4)
    torch.manual_seed(0)
    op = TrajectoryOperator([2], width=32, depth=1, modes=2, emb_dim=16, sigma_data=sd)
    z = 80 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    exact = torch.stack([gm.flow(z, 80.0, s) for s in m.slot_sigmas()], dim=1)

    def err(model):
        with torch.no_grad():
            return (model(z) - exact).pow(2).mean().sqrt().item()

    before = err(m.init_student(None, op))
    result = train(m, op, data, TrainConfig(steps=300, batch_size=128, lr=3e-3, ema_decay=0,
                                            progress=False), teacher=gm)
    assert before > 1.0 and err(result.student) < 0.03 * before


def test_training_is_deterministic_and_resumes_exactly(single_gaussian, tmp_path):
    gm = copy.deepcopy(single_gaussian).float()  # .float() is in place: keep the shared fixture
    data = gm.sample(64, generator=torch.Generator().manual_seed(0))
    m = OperatorDistillation(num_pairs=64, nfe=6, slots=3)

    def run(out, steps, every=0):
        torch.manual_seed(0)
        op = TrajectoryOperator([4], width=16, depth=1)
        cfg = TrainConfig(steps=steps, batch_size=16, progress=False, checkpoint_every=every,
                          out_dir=str(out) if out else None)
        return train(m, op, data, cfg, teacher=gm)

    a, b = run(None, 6), run(None, 6)
    for k, v in a.ema.state_dict().items():
        assert torch.equal(b.ema.state_dict()[k], v)
    part = run(tmp_path / "r", 3)
    assert part.cost.teacher_nfe == 6 * 64 / 16
    whole = run(tmp_path / "r", 6)  # resumes: the cached trajectories are not redrawn
    assert whole.cost.teacher_nfe == part.cost.teacher_nfe
    for k, v in a.ema.state_dict().items():
        assert torch.equal(whole.ema.state_dict()[k], v)
    loaded = load_checkpoint(tmp_path / "r")
    assert isinstance(loaded, TrajectoryOperator) and list(loaded.sigmas) == m.slot_sigmas()
    z = 80 * torch.randn(5, 4)
    torch.testing.assert_close(loaded(z, 80.0), a.ema(z)[:, -1])


def test_errors(single_gaussian):
    m = OperatorDistillation(nfe=4)
    with pytest.raises(ValueError, match=r"trains a fewstep\.nets\.TrajectoryOperator; got "
                                         r"a EDMPrecond"):
        m.init_student(None, EDMPrecond(MLPDenoiserNet(2, hidden=8)))
    with pytest.raises(ValueError, match="sigma_max=10, the method at 80"):
        m.init_student(None, TrajectoryOperator([2], sigma_max=10.0))
    with pytest.raises(ValueError, match="slots=8 exceeds the 4 steps"):
        m.slot_sigmas()
    with pytest.raises(ValueError, match="slots >= 1; got 0"):
        OperatorDistillation(slots=0)
    student = OperatorDistillation(nfe=4, slots=2).init_student(None, TrajectoryOperator([4]))
    with pytest.raises(ValueError, match="dfno distils an unconditional teacher"):
        OperatorDistillation(nfe=4, slots=2).loss(
            student, {"x": torch.zeros(2, 4), "cond": torch.zeros(2)}, _ctx(single_gaussian))
    other = TrajectoryOperator([4], sigmas=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="build it with init_student"):
        OperatorDistillation(nfe=4, slots=2, num_pairs=8).loss(
            other, torch.zeros(2, 4, dtype=torch.float64), _ctx(single_gaussian))
