"""Diffusion-GAN hybrids: DDGAN ("ddgan", Xiao et al. 2022) and SIDDM ("siddm", Xu et al. 2023).

Both train a generator ``G(x_t, z, t) -> x0'`` for a discrete VP process of ``T`` (2-4) large
steps, and sample like DDPM with the generator in place of the Gaussian reverse step: draw
``x0' = G(x_t, z, t)`` with fresh latent noise ``z``, then ``x_{t-1} ~ q(x_{t-1} | x_t, x0')``
(the Gaussian posterior). Everything is in sigma-space (``x = x_vp / alpha``), where the
posterior step is exactly DDIM's ``eta = 1`` step, so the sampler is the registered ``ddim``
solver on the method's own grid :meth:`DiffusionGAN.sigmas` (native NFE = T).

- **DDGAN** matches the joint ``q(x_{t-1}, x_t)`` with a discriminator ``D(x_{t-1}, x_t, t)``
  (Xiao et al. 2022, Eq. 4-5; non-saturating loss and R1 on the real ``x_{t-1}``).
- **SIDDM** matches the marginal ``q(x_{t-1})`` with ``D(x_{t-1}, t)`` and the conditional
  ``q(x_t | x_{t-1})`` -- a known Gaussian -- through the auxiliary forward diffusion (AFD)
  term ``KL(p(x_t | x'_{t-1}) || q(x_t | x_{t-1}))`` (Xu et al. 2023, Sec. 3). Of that KL this
  implements the cross-entropy part ``E[-log q(x_t | x'_{t-1})] =
  |x_t^vp - sqrt(alpha_t) x'^vp_{t-1}|^2 / (2 beta_t)`` + const (per dimension, weight
  ``lambda_afd``), the regression the authors' 2-D code uses; the entropy part of the
  generator's implicit conditional is not estimated.

The levels are DDGAN's: ``alphabar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2)`` at
``t = i / T`` (the linear VP SDE, :class:`~fewstep.process.VPContinuous`), and level 0 is the
data. Student: an :class:`~fewstep.distill.adversarial.AdversarialPair` of a
:class:`~fewstep.nets.gan.LatentPrecond` generator and a discriminator
(:class:`~fewstep.nets.gan.MLPDiscriminator` or :class:`~fewstep.nets.gan.ConvDiscriminator`,
taking ``x_t`` beside ``x_{t-1}`` for DDGAN and not for SIDDM); :func:`gan_pair` builds one.
Training is simultaneous (see :mod:`~fewstep.distill.adversarial`). No teacher is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import solvers
from ..denoiser import append_dims
from ..nets import MLPDenoiserNet, UNet
from ..nets.gan import ConvDiscriminator, LatentPrecond, MLPDiscriminator, vp_scale
from ..process import VPContinuous
from ..solvers.common import Generator as GeneratorArg
from .adversarial import (
    AdversarialPair,
    check_pair,
    discriminator_loss,
    frozen,
    generator_loss,
    r1_penalty,
)
from .base import Batch, LossContext, MethodBase, register_method, split_batch

__all__ = ["DDGAN", "SIDDM", "DiffusionGAN", "gan_pair", "posterior"]


def posterior(x0: Tensor, x_t: Tensor, sigma_t: Tensor, sigma_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``q(x_s | x_t, x0)`` for ``sigma_s < sigma_t`` in
    sigma-space: ``x0 + (s_s^2 / s_t^2) (x_t - x0)`` and ``(s_s / s_t) sqrt(s_t^2 - s_s^2)``.
    This is DDPM's posterior (Ho et al. 2020, Eq. 6-7) divided by ``alpha_s``; ``sigma_t``,
    ``sigma_s`` are ``(batch,)`` (or scalars), the std comes back broadcastable to x."""
    s_t, s_s = (append_dims(torch.as_tensor(s, dtype=x_t.dtype, device=x_t.device), x_t.ndim)
                for s in (sigma_t, sigma_s))
    ratio = s_s / s_t
    return torch.lerp(x0, x_t, ratio**2), ratio * (s_t**2 - s_s**2).sqrt()


@dataclass(frozen=True)
class DiffusionGAN(MethodBase):
    """What DDGAN and SIDDM share: the ``T`` levels, the pair sampling, the generator's
    posterior sample, the non-saturating loss with R1 (weight ``r1_gamma / 2``) and the
    sampler. Subclasses choose the discriminator's inputs (:meth:`critic`) and an extra
    generator term (:meth:`auxiliary`)."""

    T: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    r1_gamma: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T (the number of denoising steps) must be an integer >= 1; got "
                             f"{self.T!r}")
        if not 0 < self.beta_min <= self.beta_max < math.inf:
            raise ValueError(f"need 0 < beta_min <= beta_max < inf; got beta_min="
                             f"{self.beta_min}, beta_max={self.beta_max}")
        if not 0 <= self.r1_gamma < math.inf:
            raise ValueError(f"r1_gamma must be finite and >= 0; got {self.r1_gamma}")

    def sigmas(self) -> Tensor:
        """The sampling grid ``[sigma_T, ..., sigma_1, 0]`` (float64): ``sigma_i`` is the
        sigma-space level of ``alphabar(i / T)``."""
        t = torch.arange(self.T, 0, -1, dtype=torch.float64) / self.T
        vp = VPContinuous("linear", self.beta_min, self.beta_max)
        return torch.cat([vp.sigma(t), t.new_zeros(1)])

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return check_pair(template, self.name)

    def critic(self, D: Any, x_prev: Tensor, c_noise: Tensor, x_t: Tensor) -> Tensor:
        raise NotImplementedError

    def auxiliary(self, x_fake: Tensor, x_t: Tensor, s_t: Tensor, s_prev: Tensor) -> Tensor:
        """An extra generator loss term (none by default)."""
        return x_t.new_zeros(())

    def losses(self, pair: AdversarialPair, x0: Tensor, ctx: LossContext
               ) -> tuple[Tensor, Tensor]:
        """``(L_D, L_G)`` for one batch of data ``x0`` (Xiao et al. 2022, Alg. 1): ``L_D`` moves
        only the discriminator, ``L_G`` only the generator."""
        G, D = pair.generator, pair.discriminator
        sig = self.sigmas().flip(0).to(x0)  # sig[i] = sigma_i, sig[0] = 0
        t = ctx.randint(self.T, x0.shape[0], device=x0.device) + 1
        s_t, s_prev = sig[t], sig[t - 1]
        # q(x_{t-1} | x0), then the forward step q(x_t | x_{t-1})
        x_prev = x0 + append_dims(s_prev, x0.ndim) * ctx.randn_like(x0)
        x_t = x_prev + append_dims((s_t**2 - s_prev**2).sqrt(), x0.ndim) * ctx.randn_like(x0)
        # x0' = G(x_t, z, t); x'_{t-1} ~ q(x_{t-1} | x_t, x0')
        mean, std = posterior(G(x_t, s_t, z=ctx.randn_like(x0)), x_t, s_t, s_prev)
        x_fake = mean + std * ctx.randn_like(x0)
        # the discriminator sees VP-scaled samples and c_noise = ln(sigma_t) / 4
        a_prev, a_t = (append_dims(vp_scale(s), x0.ndim) for s in (s_prev, s_t))
        c_noise, y = s_t.log() / 4, a_t * x_t
        real = (a_prev * x_prev).requires_grad_(self.r1_gamma > 0)
        d_real = self.critic(D, real, c_noise, y)
        loss_D = discriminator_loss(d_real, self.critic(D, (a_prev * x_fake).detach(), c_noise, y))
        if self.r1_gamma > 0:
            loss_D = loss_D + self.r1_gamma / 2 * r1_penalty(d_real, real)
        loss_G = generator_loss(self.critic(frozen(D), a_prev * x_fake, c_noise, y))
        return loss_D, loss_G + self.auxiliary(x_fake, x_t, s_t, s_prev)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        if cond:
            raise ValueError(f"{self.name} trains unconditional generators; the batch has "
                             f"conditioning {sorted(cond)}")
        loss_D, loss_G = self.losses(check_pair(getattr(student, "module", student), self.name),
                                     x0, ctx)
        return loss_D + loss_G

    @torch.no_grad()
    def sample(self, G: Any, z: Tensor, generator: GeneratorArg = None) -> Tensor:
        """``T`` steps from ``x_T = sigma_T z``: ``x0' = G(x_t, sigma_t, z=fresh noise)`` then
        ``x_{t-1} ~ q(x_{t-1} | x_t, x0')`` (Xiao et al. 2022, Sec. 3.3), i.e. DDIM with
        ``eta = 1`` on :meth:`sigmas`; ``generator`` (one per row, or one) draws both noises.
        ``G`` is the generator or the pair (or a wrapper calling it)."""
        def latent_denoiser(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
            return G(x, sigma, z=solvers.randn_like(x, generator), **cond)

        sigmas = self.sigmas()
        return solvers.get("ddim")(latent_denoiser, float(sigmas[0]) * z, sigmas, eta=1.0,
                                   generator=generator)


@register_method
@dataclass(frozen=True)
class DDGAN(DiffusionGAN):
    """Denoising diffusion GAN: ``D(x_{t-1}, x_t, t)`` on the joint (Xiao et al. 2022)."""

    name: ClassVar[str] = "ddgan"

    sampler: ClassVar[str | None] = "gan"

    def critic(self, D: Any, x_prev: Tensor, c_noise: Tensor, x_t: Tensor) -> Tensor:
        return D(x_prev, c_noise, x_t)


@register_method
@dataclass(frozen=True)
class SIDDM(DiffusionGAN):
    """Semi-implicit DDM: ``D(x_{t-1}, t)`` on the marginal plus ``lambda_afd`` times the
    auxiliary forward-diffusion cross-entropy (Xu et al. 2023)."""

    name: ClassVar[str] = "siddm"

    sampler: ClassVar[str | None] = "gan"
    lambda_afd: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.lambda_afd < math.inf:
            raise ValueError(f"lambda_afd must be finite and >= 0; got {self.lambda_afd}")

    def critic(self, D: Any, x_prev: Tensor, c_noise: Tensor, x_t: Tensor) -> Tensor:
        return D(x_prev, c_noise)

    def auxiliary(self, x_fake: Tensor, x_t: Tensor, s_t: Tensor, s_prev: Tensor) -> Tensor:
        """``lambda_afd E[|x_t^vp - sqrt(alpha_t) x'^vp_{t-1}|^2 / (2 beta_t)]`` per dimension,
        with ``x_t^vp - sqrt(alpha_t) x'^vp_{t-1} = a_t (x_t - x'_{t-1})`` (``a = vp_scale``)
        and ``beta_t = 1 - a_t^2 / a_{t-1}^2``."""
        a_t, a_prev = vp_scale(s_t), vp_scale(s_prev)
        beta = 1 - (a_t / a_prev) ** 2
        r = append_dims(a_t, x_t.ndim) * (x_t - x_fake)
        return self.lambda_afd * (r.flatten(1).pow(2).mean(1) / (2 * beta)).mean()


def gan_pair(shape: tuple[int, ...], method: str, *, width: int = 128, depth: int = 2,
             emb_dim: int = 64) -> AdversarialPair:
    """A default student for ``method`` ("ddgan" or "siddm") on samples of ``shape``: for
    vectors ``(d,)`` an MLP generator on ``[x, z]`` and an MLP discriminator; for images
    ``(c, h, w)`` a UNet generator (``width`` channels) and a conv discriminator (``width / 4``).
    DDGAN's discriminator takes ``x_t``; SIDDM's does not."""
    if method not in ("ddgan", "siddm"):
        raise ValueError(f"gan_pair builds students of 'ddgan' or 'siddm'; got {method!r}")
    c = shape[0]
    cond = c if method == "ddgan" else 0
    if len(shape) == 1:
        net: nn.Module = MLPDenoiserNet(2 * c, hidden=width, depth=depth, emb_dim=emb_dim)
        disc: nn.Module = MLPDiscriminator(c, cond, hidden=width, depth=depth, emb_dim=emb_dim)
    elif len(shape) == 3:
        net = UNet(2 * c, channels=width, emb_dim=emb_dim)
        disc = ConvDiscriminator(c, cond, width=max(width // 4, 8), emb_dim=emb_dim)
    else:
        raise ValueError(f"gan_pair takes vector (d,) or image (c, h, w) shapes; got {shape}")
    return AdversarialPair(LatentPrecond(net, c), disc)
