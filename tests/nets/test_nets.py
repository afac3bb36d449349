"""Backbones, preconditioning and architecture specs."""

import copy

import pytest
import torch

import fewstep
from fewstep.nets import (
    ConsistencyPrecond,
    EDMPrecond,
    MLPDenoiserNet,
    UNet,
    build_model,
    consistency_scalings,
    edm_scalings,
    model_spec,
)


@pytest.mark.parametrize("cond_type, num_classes, cond", [
    ("none", 0, None),
    ("label", 3, torch.tensor([0, 1, 2, 3, 1])),  # label 3 = the null label
    ("scalar", 0, torch.linspace(1.0, 7.5, 5)),
])
def test_mlp_shapes_and_conditioning(cond_type, num_classes, cond):
    net = MLPDenoiserNet(3, hidden=32, depth=2, emb_dim=16, cond_type=cond_type,
                         num_classes=num_classes)
    out = net(torch.randn(5, 3), torch.randn(5), cond=cond)
    assert out.shape == (5, 3)
    if cond is not None:
        other = net(torch.zeros(5, 3), torch.zeros(5), cond=cond.flip(0))
        assert not torch.allclose(net(torch.zeros(5, 3), torch.zeros(5), cond=cond), other)


def test_conditioning_errors():
    with pytest.raises(ValueError, match="cond_type"):
        MLPDenoiserNet(2, cond_type="class")
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiserNet(2, cond_type="label")
    with pytest.raises(ValueError, match="needs a conditioning"):
        MLPDenoiserNet(2, cond_type="scalar")(torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="takes no conditioning"):
        MLPDenoiserNet(2)(torch.randn(2, 2), torch.zeros(2), cond=torch.zeros(2))


@pytest.mark.parametrize("channels, size, mult", [(1, 8, (1, 2)), (3, 16, (1, 2, 2)),
                                                  (3, 8, (1, 2)), (1, 16, (1, 2))])
def test_unet_shapes(channels, size, mult):
    net = UNet(channels, channels=16, channel_mult=mult, emb_dim=32, cond_type="label",
               num_classes=10)
    D = EDMPrecond(net)
    x = torch.randn(2, channels, size, size)
    assert D(x, torch.tensor([0.1, 10.0]), cond=torch.tensor([1, 10])).shape == x.shape


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, channels=8, channel_mult=(1, 2, 2))(torch.randn(1, 1, 6, 6), torch.zeros(1))


def test_edm_scalings_table1():
    sigma, sd = torch.tensor([0.3, 2.0], dtype=torch.float64), 0.5
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sd)
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # Unit variance of the network target for data of std sd (Karras et al. 2022, App. B.6).
    torch.testing.assert_close((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2, c_out**2)


def test_edm_precond_is_denoiser_with_identity_limit():
    torch.manual_seed(0)
    D = EDMPrecond(MLPDenoiserNet(4, hidden=16, depth=1, emb_dim=8)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(D(x, 1e-9), x, atol=1e-8, rtol=0)  # c_skip -> 1, c_out -> 0
    assert isinstance(D, fewstep.Denoiser)
    assert D(x.float(), torch.tensor(1.0)).dtype == torch.float32  # any input dtype works


def test_consistency_boundary_condition_is_exact():
    c_skip, c_out = consistency_scalings(torch.tensor([0.002]), 0.002, 0.5)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    torch.manual_seed(0)
    f = ConsistencyPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8), sigma_min=0.002)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(6, 2, dtype=dtype) * 3
        assert torch.equal(f(x, torch.full((6,), 0.002, dtype=dtype)), x)
    x = torch.randn(6, 2)
    assert not torch.allclose(f(x, 1.0), x)


def test_consistency_scalings_formula():
    s, smin, sd = torch.tensor([0.5, 3.0]), 0.002, 0.5
    c_skip, c_out = consistency_scalings(s, smin, sd)
    torch.testing.assert_close(c_skip, sd**2 / ((s - smin) ** 2 + sd**2))
    torch.testing.assert_close(c_out, (s - smin) * sd / (s**2 + sd**2).sqrt())


@pytest.mark.parametrize("make", [
    lambda: EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=1, cond_type="label", num_classes=4)),
    lambda: ConsistencyPrecond(UNet(3, channels=8, channel_mult=(1, 2)), sigma_min=0.01),
])
def test_spec_round_trip(make):
    model = make()
    spec = model_spec(model)
    rebuilt = build_model(spec)
    assert type(rebuilt) is type(model) and model_spec(rebuilt) == spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown model class 'Nope'"):
        build_model({"class": "Nope", "kwargs": {}})
    assert model_spec(EDMPrecond(torch.nn.Linear(2, 2))) is None  # not buildable: no spec


BACKBONES = {  # (backbone, input shape, conditioning)
    "mlp": (lambda: MLPDenoiserNet(3, hidden=32, depth=2, emb_dim=16), (5, 3), {}),
    "mlp_label": (lambda: MLPDenoiserNet(3, hidden=32, depth=1, emb_dim=16, cond_type="label",
                                         num_classes=4), (5, 3),
                  {"cond": torch.tensor([0, 1, 2, 3, 4])}),
    "mlp_scalar": (lambda: MLPDenoiserNet(3, hidden=32, depth=1, emb_dim=16, cond_type="scalar"),
                   (5, 3), {"cond": torch.linspace(1.0, 7.5, 5)}),
    "unet": (lambda: UNet(3, channels=8, channel_mult=(1, 2), emb_dim=16, cond_type="label",
                          num_classes=10), (2, 3, 8, 8), {"cond": torch.tensor([1, 10])}),
}
PRECONDS = {"edm": EDMPrecond, "consistency": ConsistencyPrecond, "none": None}
# Max |half - fp32| relative to 1 + max |fp32| (fp16: 10-bit mantissa, bf16: 7-bit).
HALF_TOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.mark.parametrize("dtype", list(HALF_TOL), ids=["fp16", "bf16"])
@pytest.mark.parametrize("precond", list(PRECONDS))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_and_precond_runs_in_half_precision(backbone, precond, dtype):
    make, shape, cond = BACKBONES[backbone]
    torch.manual_seed(0)
    model = make() if PRECONDS[precond] is None else PRECONDS[precond](make())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 2
    sigma = torch.tensor([0.05, 80.0, 1.0, 0.3, 7.0][:shape[0]])
    arg = sigma.log() / 4 if PRECONDS[precond] is None else sigma  # a bare net takes c_noise
    half = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        ref = model(x, arg, **cond)
        out = half(x.to(dtype), arg.to(dtype), **cond)
    assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
    err = (out.float() - ref).abs().max().item()
    assert err <= HALF_TOL[dtype] * (1 + ref.abs().max().item()), err
    if precond == "consistency":  # the boundary condition stays exact in half precision
        xs = x.to(dtype)
        assert torch.equal(half(xs, torch.full((shape[0],), 0.002, dtype=dtype), **cond), xs)


@pytest.mark.parametrize("make", [
    lambda: MLPDenoiserNet(dim=2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                           num_classes=3, w_embedding=True),
    lambda: UNet(in_channels=1, channels=8, channel_mult=(1, 2), emb_dim=16,
                 cond_type="label", num_classes=3, w_embedding=True),
], ids=["mlp", "unet"])
def test_a_w_conditioned_net_takes_a_guidance_scale(make):
    """A w-embedded student (guided distillation / LCM) maps (x, sigma, label, w); w changes
    the output, a batch-1 w broadcasts, it survives the spec round trip, and w is required
    exactly when the net was built for it."""
    net = make()
    for p in net.embed.w.parameters():  # as after training (the embedding starts at zero)
        torch.nn.init.normal_(p)
    shape = (4, 2) if isinstance(net, MLPDenoiserNet) else (4, 1, 8, 8)
    x, c = torch.randn(shape), torch.randn(4)
    labels = torch.tensor([0, 1, 2, -1])
    out1, out3 = net(x, c, cond=labels, w=torch.full((4,), 1.0)), net(x, c, cond=labels,
                                                                      w=torch.full((4,), 3.0))
    assert not torch.allclose(out1, out3)
    torch.testing.assert_close(net(x, c, cond=labels, w=torch.tensor([3.0])), out3)
    rebuilt = build_model(model_spec(net))
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, c, cond=labels, w=torch.full((4,), 3.0)), out3)
    with pytest.raises(ValueError, match="guidance scale w="):
        net(x, c, cond=labels)
    plain = MLPDenoiserNet(dim=2, hidden=16, depth=1, emb_dim=16)
    with pytest.raises(ValueError, match="guidance scale w="):
        plain(torch.randn(4, 2), c, w=torch.ones(4))


def test_a_w_student_warm_started_from_its_teacher_equals_it_at_every_w():
    teacher = MLPDenoiserNet(dim=2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                             num_classes=3)
    student = MLPDenoiserNet(dim=2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                             num_classes=3, w_embedding=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("embed.w.") for k in missing)
    x, c, y = torch.randn(4, 2), torch.randn(4), torch.tensor([0, 1, 2, -1])
    for w in (0.0, 2.0, 7.5):
        torch.testing.assert_close(student(x, c, cond=y, w=torch.full((4,), w)),
                                   teacher(x, c, cond=y))
