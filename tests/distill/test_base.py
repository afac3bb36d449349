"""The loss-object API: registry, LossContext counting and solver reuse, warm starts."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import fewstep
from fewstep.distill import (
    LossContext,
    Method,
    MethodBase,
    available_methods,
    get_method,
    register_method,
    split_batch,
    warm_start,
)
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet


def _ctx(teacher, batch_size=4, seed=0):
    return LossContext(teacher, None, torch.Generator().manual_seed(seed), batch_size)


def test_builtin_methods_registered():
    assert {"edm", "pd", "kd", "direct_cm"} <= set(available_methods())
    for name in ("edm", "pd", "kd", "direct_cm"):
        method = get_method(name)()
        assert isinstance(method, Method) and method.name == name


def test_unknown_method_error_names_it_and_lists_available():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; available: .*edm"):
        get_method("nope")


def test_register_errors():
    @dataclass(frozen=True)
    class Nameless(MethodBase):
        pass

    with pytest.raises(ValueError, match="non-empty class attribute `name`"):
        register_method(Nameless)

    @dataclass(frozen=True)
    class Impostor(MethodBase):
        name: ClassVar[str] = "edm"

    with pytest.raises(ValueError, match="'edm' is already registered"):
        register_method(Impostor)
    register_method(get_method("edm"))  # re-registering the same class is harmless


def test_methods_are_frozen():
    with pytest.raises(AttributeError):
        get_method("edm")().P_mean = 0.0


def test_teacher_solve_reuses_registered_solver_and_counts(single_gaussian):
    ctx = _ctx(single_gaussian, batch_size=4)
    x = 10 * torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([10.0, 3.0, 0.5])
    out = ctx.teacher_solve("heun", x, sigmas)
    torch.testing.assert_close(out, fewstep.solvers.get("heun")(single_gaussian, x, sigmas))
    assert ctx.teacher_nfe == 4 * 2 / 4  # 2 Heun steps = 4 calls of 2 rows, batch 4
    ctx.teacher_denoise(x, torch.ones(2))
    assert ctx.teacher_nfe == 2.5
    ctx.count_teacher(3, 8)
    assert ctx.teacher_nfe == 2.5 + 6


def test_teacher_solve_rows_matches_per_row_solves(single_gaussian):
    ctx = _ctx(single_gaussian, batch_size=5)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p = torch.tensor([[4.0, 1.0, 0.0], [2.0, 0.5, 0.0]], dtype=torch.float64)
    which = torch.tensor([0, 1, 1, 0, 1])
    out = ctx.teacher_solve_rows("ddim", x, p[which])
    for r in range(5):
        torch.testing.assert_close(out[r:r + 1], fewstep.solvers.get("ddim")(
            single_gaussian, x[r:r + 1], p[which[r]]))
    assert ctx.teacher_nfe == 2  # two DDIM steps for every row


def test_require_teacher_error():
    with pytest.raises(ValueError, match="needs a teacher"):
        _ctx(None).teacher_solve("ddim", torch.zeros(1, 2), [1.0, 0.0])


def test_generator_helpers_are_reproducible():
    a, b = _ctx(None, seed=7), _ctx(None, seed=7)
    x = torch.zeros(3, 2)
    assert torch.equal(a.randn_like(x), b.randn_like(x))
    assert torch.equal(a.rand(4, like=x), b.rand(4, like=x))
    assert torch.equal(a.randint(9, 4), b.randint(9, 4))


def test_split_batch():
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    assert split_batch(x) == (x, {})
    x2, cond = split_batch({"x": x, "cond": y})
    assert x2 is x and cond == {"cond": y}


def test_warm_start_copies_teacher_weights_across_preconditionings():
    teacher = EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8))
    template = ConsistencyPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8))
    student = warm_start(template, teacher)
    assert student is not template and type(student) is ConsistencyPrecond
    for k, v in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[k], v)
    assert warm_start(template, None) is template
    assert warm_start(template, fewstep.GaussianMixture(torch.zeros(1, 2), 1.0)) is template
    with pytest.raises(ValueError, match="cannot initialise the student"):
        warm_start(EDMPrecond(MLPDenoiserNet(2, hidden=8, depth=1, emb_dim=8)), teacher)


def test_ema_update_blends_every_parameter_and_copies_buffers():
    """One fused lerp: theta_ema <- decay theta_ema + (1 - decay) theta, buffers copied."""
    from torch import nn

    from fewstep.distill.base import ema_update_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(2.0)
    before = [p.clone() for p in ema.parameters()]
    ema_update_(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert (ema[1].running_mean == 2.0).all()
    with pytest.raises(ValueError, match="parameter tensors"):
        ema_update_(ema, nn.Linear(3, 4), 0.9)


@pytest.mark.parametrize("attr,value,message", [
    ("sampler", "euler", r"Oddly.sampler='euler'; expected one of consistency"),
    ("network", "transformer", r"Oddly.network='transformer'; expected one of denoiser")])
def test_a_sampler_or_network_outside_its_kinds_is_refused(attr, value, message):
    Oddly = dataclass(frozen=True)(type("Oddly", (MethodBase,), {
        "name": "oddly_declared", attr: value, "__annotations__": {}}))
    with pytest.raises(ValueError, match=message):
        register_method(Oddly)
    assert "oddly_declared" not in available_methods()


@pytest.mark.parametrize("name", available_methods())
def test_every_method_says_how_its_student_is_sampled(name):
    from fewstep.bench import students
    from fewstep.cli import _template
    from fewstep.distill import STUDENT_SAMPLERS, student_methods, student_sampler

    kind = student_sampler(name)
    assert kind is None or kind in STUDENT_SAMPLERS
    assert (name in student_methods()) == (kind is not None) and students.sampler(name) == kind
    if name == "autoencoder":  # not a diffusion student: the CLI refuses it in one line
        with pytest.raises(ValueError, match="--method autoencoder trains the autoencoder"):
            _template("moons", name, hidden=16, seed=0)
        return
    # a consistency-type student is a consistency function (f(x, sigma_min) = x) from birth
    template = _template("moons", name, hidden=16, seed=0)
    assert isinstance(template, ConsistencyPrecond) == (kind in ("consistency", "lcm"))


@pytest.mark.parametrize("name", available_methods())
def test_every_method_says_what_network_it_trains(name):
    """network_kind is declared or derived for every method, and the CLI's template for it is
    that network: one source for the template builders (no hand-kept method lists)."""
    from fewstep.cli import _template
    from fewstep.distill import NETWORK_KINDS, AdversarialPair, network_kind, student_sampler
    from fewstep.nets import EDMPrecond, FlowPrecond, TrajectoryOperator

    kind = network_kind(name)
    assert kind in NETWORK_KINDS
    assert (kind == "consistency") == (student_sampler(name) in ("consistency", "lcm"))
    if kind == "autoencoder":
        return
    expected = {"denoiser": EDMPrecond, "consistency": ConsistencyPrecond,
                "velocity": FlowPrecond, "operator": TrajectoryOperator,
                "gan": AdversarialPair}[kind]
    assert type(_template("moons", name, hidden=16, seed=0)) is expected


def test_network_kinds_of_the_flow_operator_and_gan_methods():
    from fewstep.distill import network_kind

    assert {m: network_kind(m) for m in ("rf", "reflow", "rf_distill", "dfno", "ddgan", "cd",
                                         "kd", "autoencoder", "edm")} == {
        "rf": "velocity", "reflow": "velocity", "rf_distill": "velocity", "dfno": "operator",
        "ddgan": "gan", "cd": "consistency", "kd": "denoiser", "autoencoder": "autoencoder",
        "edm": "denoiser"}


def test_teachers_make_no_student_and_students_have_their_samplers():
    from fewstep.distill import student_sampler

    assert student_sampler("edm") is None and student_sampler("autoencoder") is None
    assert {m: student_sampler(m) for m in ("cd", "lcd", "kd", "pd", "add", "ddgan", "guided")} \
        == {"cd": "consistency", "lcd": "lcm", "kd": "one_step", "pd": "own_grid",
            "add": "own_levels", "ddgan": "gan", "guided": "ddim"}
