"""DDGAN and SIDDM: the posterior, the levels, the split gradients, the sampler, resume."""

import math

import pytest
import torch

from fewstep import solvers
from fewstep.denoiser import CountingDenoiser
from fewstep.distill import DDGAN, SIDDM, LossContext, gan_pair, get_method
from fewstep.distill.diffusion_gan import posterior
from fewstep.nets.gan import vp_scale
from fewstep.train import TrainConfig, latest_checkpoint, train

METHODS = ("ddgan", "siddm")


def _ctx(seed=0, batch=16):
    return LossContext(None, None, torch.Generator().manual_seed(seed), batch)


def test_posterior_is_ddpms_in_vp_form():
    """(mean, std) times alpha_s are Ho et al. 2020's Eq. 7 mu~ and sqrt(beta~) in VP form."""
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(6, 3, generator=g), 5 * torch.randn(6, 3, generator=g)
    s_t, s_s = torch.tensor(4.0), torch.tensor(0.7)
    mean, std = posterior(x0, x_t, s_t, s_s)
    abar_t, abar_s = vp_scale(s_t) ** 2, vp_scale(s_s) ** 2
    alpha_t, beta_t = abar_t / abar_s, 1 - abar_t / abar_s
    mu = (abar_s.sqrt() * beta_t / (1 - abar_t) * x0
          + alpha_t.sqrt() * (1 - abar_s) / (1 - abar_t) * (vp_scale(s_t) * x_t))
    torch.testing.assert_close(vp_scale(s_s) * mean, mu)
    torch.testing.assert_close((vp_scale(s_s) * std) ** 2,
                               ((1 - abar_s) / (1 - abar_t) * beta_t).reshape(1, 1))


def test_posterior_by_gaussian_conditioning_and_at_level_zero():
    """x_s = x0 + s_s e1, x_t = x_s + sqrt(s_t^2 - s_s^2) e2: Cov(x_s, x_t) = s_s^2,
    Var(x_t) = s_t^2, so E[x_s | x_t] = x0 + (s_s^2 / s_t^2)(x_t - x0), Var = s_s^2 (1 - s_s^2 /
    s_t^2). At s_s = 0 the posterior is the point x0."""
    x0, x_t = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    mean, std = posterior(x0, x_t, torch.tensor([2.0]), torch.tensor([1.0]))
    assert mean.item() == pytest.approx(1 + 0.25 * 2) and std.item() ** 2 == pytest.approx(0.75)
    mean, std = posterior(x0, x_t, torch.tensor([2.0]), torch.tensor([0.0]))
    assert mean.item() == 1.0 and std.item() == 0.0


def test_levels_are_ddgans_vp_discretisation():
    """alphabar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2) at t = i / T, sigma^2 =
    (1 - alphabar) / alphabar, and the grid ends at the data (sigma 0)."""
    m = DDGAN(T=4, beta_min=0.1, beta_max=20.0)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    abar = torch.exp(-0.1 * t - 19.9 * t**2 / 2)
    torch.testing.assert_close(m.sigmas(), torch.cat([((1 - abar) / abar).sqrt(),
                                                      torch.zeros(1, dtype=torch.float64)]))
    assert len(DDGAN(T=2).sigmas()) == 3


def test_posterior_step_is_ddim_eta_1():
    """The sampler's step: DDIM with eta = 1 from sigma_t to sigma_s with denoised x0 draws
    posterior(x0, x_t) mean + std * (the solver's noise)."""
    x_t, x0 = torch.randn(4, 2), torch.randn(4, 2)
    sig = torch.tensor([3.0, 0.8], dtype=torch.float64)
    out = solvers.get("ddim")(lambda x, s: x0, x_t, torch.cat([sig, torch.zeros(1,
                              dtype=torch.float64)]), eta=1.0,
                              generator=torch.Generator().manual_seed(5))
    mean, std = posterior(x0, x_t, sig[0].float(), sig[1].float())
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, x0)  # the last step to sigma 0 returns the denoised x0
    one = solvers.get("ddim")(lambda x, s: x0, x_t, sig, eta=1.0,
                              generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(one, mean + std * noise)


def test_sampler_with_the_exact_conditional_generator_samples_the_data():
    """For data N(0, s^2), x0 | x_t ~ N(k x_t, k sigma^2) with k = s^2 / (s^2 + sigma^2): a
    generator drawing from it makes DDGAN's sampler exact, whatever T. Also: NFE = T, and
    per-row generators make rows independent of the batch."""
    s = 0.6

    def G(x, sigma, z):
        k = s**2 / (s**2 + sigma.reshape(-1, 1) ** 2)
        return k * x + (k * sigma.reshape(-1, 1) ** 2).sqrt() * z

    m = DDGAN(T=2)
    gens = solvers.sample_generators(0, 4000)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    counted = CountingDenoiser(G)
    out = m.sample(counted, z, gens)
    assert counted.rows == 2 * 4000
    assert out.mean().abs() < 0.03 and out.std().item() == pytest.approx(s, rel=0.03)
    head = m.sample(G, z[:3], solvers.sample_generators(0, 3))
    torch.testing.assert_close(head, out[:3])


@pytest.mark.parametrize("name", METHODS)
def test_loss_splits_gradients_between_the_players(name):
    """loss = L_D + L_G: the discriminator's gradient is L_D's alone, the generator's L_G's."""
    m = get_method(name)()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))

    def grads(which):
        torch.manual_seed(0)
        pair = gan_pair((2,), name, width=16, depth=1, emb_dim=8)
        loss_D, loss_G = m.losses(pair, x0, _ctx())
        {"D": loss_D, "G": loss_G, "sum": loss_D + loss_G}[which].backward()
        return ({k: p.grad for k, p in pair.generator.named_parameters()},
                {k: p.grad for k, p in pair.discriminator.named_parameters()})

    (g_sum, d_sum), (g_D, d_D), (g_G, d_G) = grads("sum"), grads("D"), grads("G")
    assert all(v is None for v in g_D.values()) and all(v is None for v in d_G.values())
    for k in d_sum:
        torch.testing.assert_close(d_sum[k], d_D[k])
    for k in g_sum:
        torch.testing.assert_close(g_sum[k], g_G[k])
    assert m.loss(gan_pair((2,), name, width=16, depth=1, emb_dim=8), x0, _ctx()).isfinite()


def test_siddm_auxiliary_is_zero_on_the_forward_mean_and_scales_with_lambda():
    """r = a_t (x_t - x'): zero where the fake equals x_t; otherwise |r|^2 / (2 beta) per dim."""
    m = SIDDM(lambda_afd=2.0)
    x_t = torch.ones(3, 2)
    s_t, s_prev = torch.full((3,), 2.0), torch.full((3,), 1.0)
    assert m.auxiliary(x_t.clone(), x_t, s_t, s_prev).item() == 0.0
    a_t, a_p = 1 / math.sqrt(5), 1 / math.sqrt(2)
    beta = 1 - (a_t / a_p) ** 2
    got = m.auxiliary(torch.zeros(3, 2), x_t, s_t, s_prev).item()
    assert got == pytest.approx(2.0 * a_t**2 / (2 * beta))


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_loss_and_images_work(name):
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    values = []
    for _ in range(2):
        torch.manual_seed(0)
        pair = gan_pair((1, 8, 8), name, width=8, emb_dim=8)
        values.append(get_method(name)().loss(pair, x0, _ctx(batch=4)))
    assert torch.equal(values[0], values[1]) and values[0].isfinite()


@pytest.mark.parametrize("name", METHODS)
def test_resume_after_kill_is_bitwise_exact(tmp_path, name):
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))

    def run(out, callback=None):
        torch.manual_seed(0)
        pair = gan_pair((2,), name, width=16, depth=1, emb_dim=8)
        cfg = TrainConfig(steps=6, batch_size=32, lr=1e-3, betas=(0.5, 0.9), ema_decay=0.9,
                          checkpoint_every=2, log_every=1, progress=False,
                          out_dir=str(tmp_path / out))
        return train(get_method(name)(T=2), pair, data, cfg, callback=callback)

    full = run("full")

    def kill(step, info):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("killed", kill)
    assert latest_checkpoint(tmp_path / "killed").name == "step_00000004"
    resumed = run("killed")
    for a, b in ((full.student, resumed.student), (full.ema, resumed.ema)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k


@pytest.mark.parametrize("kw,match", [
    ({"T": 0}, "T .* must be an integer >= 1; got 0"),
    ({"T": 2.5}, "got 2.5"),
    ({"beta_min": 0.0}, "0 < beta_min <= beta_max"),
    ({"beta_min": 5.0, "beta_max": 1.0}, "beta_min=5.0, beta_max=1.0"),
    ({"r1_gamma": -1.0}, "r1_gamma must be finite and >= 0; got -1.0"),
])
@pytest.mark.parametrize("name", METHODS)
def test_bad_hyper_parameters_are_named(name, kw, match):
    with pytest.raises(ValueError, match=match):
        get_method(name)(**kw)


def test_bad_lambda_student_shape_and_conditioning():
    with pytest.raises(ValueError, match="lambda_afd must be finite and >= 0; got nan"):
        SIDDM(lambda_afd=float("nan"))
    with pytest.raises(TypeError, match="AdversarialPair"):
        DDGAN().init_student(None, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"vector .* or image"):
        gan_pair((2, 3), "ddgan")
    with pytest.raises(ValueError, match="unconditional"):
        DDGAN().loss(gan_pair((2,), "ddgan", width=8, depth=1, emb_dim=8),
                     {"x": torch.zeros(2, 2), "cond": torch.zeros(2)}, _ctx())
