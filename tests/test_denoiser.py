import pytest
import torch

from fewstep.denoiser import PREDICTIONS, CFGDenoiser, CountingDenoiser, ModelDenoiser
from fewstep.process import EDM, RectifiedFlow, VPContinuous, VPDiscrete

PROCESSES = [VPDiscrete("linear"), VPContinuous("cosine"), EDM(), RectifiedFlow()]


def oracle(process, x0, eps, prediction):
    """A 'network' that knows x0 and eps and returns the target of its parameterisation."""

    def model(x_t, t):
        a, s = process.alpha(t.double())[:, None], process.std(t.double())[:, None]
        torch.testing.assert_close(x_t, a * x0 + s * eps)  # the adapter scaled x correctly
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "v":
            return a * eps - s * x0
        da, ds = process.d_alpha_dt(t.double())[:, None], process.d_std_dt(t.double())[:, None]
        return da * x0 + ds * eps

    return model


@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_adapter_recovers_x0(process, prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 6, 3, generator=g, dtype=torch.float64).unbind(0)
    t = torch.linspace(0.2, 0.8, 6, dtype=torch.float64) * (process.t_max - process.t_min) \
        + process.t_min
    sigma = process.sigma(t)
    D = ModelDenoiser(oracle(process, x0, eps, prediction), process, prediction)
    torch.testing.assert_close(D(x0 + sigma[:, None] * eps, sigma), x0, rtol=1e-6, atol=1e-6)


def test_unknown_prediction_raises():
    with pytest.raises(ValueError, match="'score'"):
        ModelDenoiser(lambda x, t: x, EDM(), "score")


def test_sigma_shape_is_checked():
    D = ModelDenoiser(lambda x, t: x, EDM(), "x0")
    with pytest.raises(ValueError, match="sigma has shape"):
        D(torch.zeros(3, 2), torch.ones(2))


def _cond_denoiser(x, sigma, label):
    return x * 0 + label[:, None].to(x.dtype)


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_combines_conditional_and_unconditional(batched):
    counter = CountingDenoiser(_cond_denoiser)
    uncond = {"label": torch.zeros(4)} if batched else {"label": torch.zeros(4, 1)[:, 0] * 1.0}
    if not batched:  # different shapes force two calls
        uncond = {"label": torch.zeros(4, dtype=torch.float64)}
    cfg = CFGDenoiser(counter, scale=3.0, uncond=uncond)
    x = torch.randn(4, 2)
    out = cfg(x, torch.ones(4), label=torch.full((4,), 2.0))
    torch.testing.assert_close(out, torch.full((4, 2), 6.0))  # 0 + 3 * (2 - 0)
    assert counter.rows == 8  # guidance doubles the per-sample evaluations


def test_cfg_scale_one_is_conditional():
    cfg = CFGDenoiser(_cond_denoiser, 1.0, {"label": torch.zeros(3)})
    out = cfg(torch.randn(3, 2), 1.0, label=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 2.0, 3.0]))


def test_counting_denoiser_counts_calls_and_rows():
    c = CountingDenoiser(lambda x, s: x)
    c(torch.zeros(5, 2), 1.0)
    c(torch.zeros(5, 2), 0.5)
    assert (c.nfe, c.rows, c.sigmas) == (2, 10, [1.0, 0.5])


class _CountingProcess(VPDiscrete):
    """VPDiscrete that counts its float64 schedule look-ups (``t`` of sigma)."""

    def __init__(self):
        super().__init__("linear")
        self.lookups = 0

    def t(self, sigma):
        self.lookups += 1
        return super().t(sigma)


@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_shared_sigma_is_looked_up_once_and_equals_the_rowwise_map(prediction):
    """Every solver asks for one noise level shared by the batch: the schedule is computed
    once per (sigma, batch, dtype, device) and reused (it cost ~200 us per call), and the
    cached path equals the per-row path to float64 rounding."""
    proc = _CountingProcess()

    def model(x_t, t):
        return torch.sin(x_t) * t[:, None]

    D = ModelDenoiser(model, proc, prediction)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shared = torch.tensor(2.5, dtype=torch.float64).expand(5)
    first = D(x, shared)
    for _ in range(3):
        torch.testing.assert_close(D(x, shared), first, rtol=0, atol=0)
    assert proc.lookups == 1
    rowwise = D(x, torch.tensor([2.5, 2.5, 2.5, 2.5, 2.6], dtype=torch.float64))[:4]
    torch.testing.assert_close(first[:4], rowwise, rtol=1e-12, atol=1e-12)
    D.process = VPDiscrete("cosine")  # a new process drops the cached values
    assert not torch.equal(D(x, shared), first)
