"""The Fourier temporal convolution and the trajectory operator (Zheng et al. 2023)."""

import numpy as np
import pytest
import torch

from fewstep.nets import FourierTemporalConv, FourierTemporalLayer, TrajectoryOperator, build_model


def _circular_conv(u: np.ndarray, weight: np.ndarray, length: int) -> np.ndarray:
    """By hand: the kernel is the inverse real DFT of the kept coefficients (zero above
    ``modes``), then out[b, o, t] = sum_i sum_s k[i, o, s] u[b, i, (t - s) mod K]."""
    half = length // 2 + 1
    R = weight[0] + 1j * weight[1]  # (c_in, c_out, modes)
    spectrum = np.zeros((*R.shape[:2], half), dtype=complex)
    m = min(R.shape[2], half)
    spectrum[..., :m] = R[..., :m]
    k = np.fft.irfft(spectrum, n=length)  # (c_in, c_out, K)
    out = np.zeros((u.shape[0], k.shape[1], length))
    for t in range(length):
        for s in range(length):
            out[:, :, t] += np.einsum("bi,io->bo", u[:, :, (t - s) % length], k[:, :, s])
    return out


@pytest.mark.parametrize("length,modes", [(7, 3), (8, 5), (8, 2), (4, 6), (1, 1)])
def test_fourier_conv_is_the_circular_convolution_with_its_kernel(length, modes):
    torch.manual_seed(0)
    conv = FourierTemporalConv(3, 2, modes).double()
    u = torch.randn(5, 3, length, dtype=torch.float64)
    expected = _circular_conv(u.numpy(), conv.weight.detach().numpy(), length)
    np.testing.assert_allclose(conv(u).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(conv.kernel(length).detach().numpy(),
                               _circular_conv(np.eye(3)[:, :, None] * (np.arange(length) == 0),
                                              conv.weight.detach().numpy(), length),
                               atol=1e-12)  # the kernel is the response to a unit impulse


def test_fourier_conv_commutes_with_a_shift_in_time():
    torch.manual_seed(1)
    conv = FourierTemporalConv(4, 4, 3)
    u = torch.randn(2, 4, 9)
    torch.testing.assert_close(conv(u.roll(2, -1)), conv(u).roll(2, -1), atol=1e-5, rtol=1e-5)


def test_temporal_layer_is_u_plus_act_of_k_u():
    torch.manual_seed(2)
    layer = FourierTemporalLayer(3, 2)
    with torch.no_grad():
        layer.bias.fill_(0.3)
    u = torch.randn(4, 3, 6)
    torch.testing.assert_close(layer(u), u + torch.nn.functional.silu(layer.conv(u) + 0.3))


def test_bad_modes():
    with pytest.raises(ValueError, match="modes must be >= 1; got 0"):
        FourierTemporalConv(2, 2, 0)


def test_gaussian_flow_is_the_untrained_operator():
    """c_skip is the exact PF-ODE flow of N(0, sigma_data^2 I) data and G starts at zero, so
    a fresh operator reproduces that linear trajectory map exactly."""
    from fewstep import GaussianMixture

    sd, sigmas = 0.7, [20.0, 3.0, 0.4, 0.0]
    gm = GaussianMixture(torch.zeros(1, 3, dtype=torch.float64),
                         torch.full((1, 3), sd**2, dtype=torch.float64))
    op = TrajectoryOperator([3], sigmas=sigmas, width=8, sigma_data=sd).double()
    z = 80 * torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = op(z)
    assert u.shape == (6, 4, 3)
    for k, s in enumerate(sigmas):
        torch.testing.assert_close(u[:, k], gm.flow(z, 80.0, s), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op(z, 80.0), u[:, -1])  # the denoiser face: the endpoint
    torch.testing.assert_close(op(z, torch.full((6,), 80.0)), u[:, -1])


def test_image_shapes_and_grid_swap_keeps_weights():
    torch.manual_seed(3)
    op = TrajectoryOperator([1, 4, 4], sigmas=[5.0, 1.0, 0.0], width=16, modes=2)
    with torch.no_grad():
        op.out[-1].weight.normal_()
    z = 80 * torch.randn(2, 1, 4, 4)
    assert op(z).shape == (2, 3, 1, 4, 4)
    other = op.with_sigmas([9.0, 5.0, 1.0, 0.5, 0.0])
    assert other.sigmas == (9.0, 5.0, 1.0, 0.5, 0.0) and other(z).shape == (2, 5, 1, 4, 4)
    for k, v in op.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    rebuilt = build_model(other._spec)
    rebuilt.load_state_dict(other.state_dict())
    assert torch.equal(rebuilt(z), other(z))


@pytest.mark.parametrize("kwargs,match", [
    ({"shape": []}, "non-empty sample shape"),
    ({"sigmas": [1.0, 2.0, 0.0]}, "decrease strictly"),
    ({"sigmas": [1.0, 0.5]}, "to 0"),
    ({"sigmas": [90.0, 0.0]}, "below sigma_max=80"),
])
def test_bad_operator_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryOperator(**{"shape": [2], **kwargs})


def test_bad_calls():
    op = TrajectoryOperator([2], sigmas=[1.0, 0.0], width=8)
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"sigma_max=80 to its sample \(one step\); "
                                         r"called at sigma=2"):
        op(z, 2.0)
    with pytest.raises(ValueError, match="no conditioning"):
        op(z, 80.0, cond=torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \[2\]; got \[3\]"):
        op(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no sigma grid"):
        TrajectoryOperator([2], width=8)(z)
