"""UFOGen: one-step generation by a diffusion GAN initialised from the teacher (Xu et al. 2023,
"UFOGen: You Forward Once Large Scale Text-to-Image Generation via Diffusion GANs")."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..denoiser import append_dims
from ..nets.backbone_disc import NoisyDiscriminator
from ..schedules import karras
from .adversarial import AdversarialPair, check_pair
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start
from .gan_terms import adversarial_terms, backbone_copy, check_gan_loss, seeded

__all__ = ["UFOGen"]


@functools.cache
def _levels(num_scales: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    return karras(num_scales + 1, sigma_min, sigma_max, rho, final_zero=False)


@register_method
@dataclass(frozen=True)
class UFOGen(MethodBase):
    """UFOGen (Xu et al. 2023, Sec. 4, Eq. 8) in sigma space on the grid
    ``t_0 = sigma_max > ... > t_T = sigma_min`` (``karras(T + 1)``, ``T = num_scales``): for data
    ``x0``, a level ``t = t_i`` and ``s = t_{i+1}`` (``i`` uniform),

    - the generator ``G`` (the teacher's weights at start) predicts ``x0' = G(x0 + t eps, t)``;
    - the fake ``x'_s = x0' + s eps''`` is a draw of ``q(x_s | x0')`` (UFOGen's change to
      SIDDM/DDGAN: the forward marginal, not the posterior given ``x_t``), the real
      ``x_s = x0 + s eps'`` one of ``q(x_s | x0)``; a time-conditional discriminator
      ``D(x_s, s)`` (the teacher's backbone with new heads, :class:`NoisyDiscriminator`) tells
      them apart under ``gan_loss`` with an R1 penalty ``r1_gamma`` on the reals;
    - the reconstruction term ``rec_weight ||x0' - x0||^2`` (the KL term of SIDDM's bound,
      ``gamma_t = 1`` here) pulls ``x0'`` to the data point.

    The generator and discriminator are one module, an
    :class:`~fewstep.distill.adversarial.AdversarialPair`, trained by one backward pass.
    Sampling is one evaluation ``x0 = G(sigma_max z, sigma_max)``; image-to-image is one
    evaluation from a noised input, ``G(x_in + t z, t)`` (:func:`fewstep.edit.stroke_guided`
    with ``solver="ddim", nfe=1``). The teacher is used only to initialise both players."""

    name: ClassVar[str] = "ufogen"

    sampler: ClassVar[str | None] = "one_step"
    num_scales: int = 1
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    rec_weight: float = 0.1
    gan_loss: str = "nonsaturating"
    r1_gamma: float = 0.05
    head_hidden: int = 64
    head_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_scales < 1:
            raise ValueError(f"num_scales must be >= 1; got {self.num_scales}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got {self.sigma_min}, "
                             f"{self.sigma_max}")
        if self.rec_weight < 0 or self.r1_gamma < 0:
            raise ValueError(f"rec_weight and r1_gamma must be >= 0; got {self.rec_weight}, "
                             f"{self.r1_gamma}")
        check_gan_loss(self.gan_loss)

    def levels(self) -> Tensor:
        """The grid ``t_0 = sigma_max > ... > t_T = sigma_min`` (float64, ``T + 1`` levels)."""
        return _levels(self.num_scales, self.sigma_min, self.sigma_max, self.rho)

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The teacher's weights in the generator and, with new heads, in the discriminator."""
        if isinstance(template, AdversarialPair):  # already built (e.g. by the CLI)
            return template
        generator = warm_start(template, teacher_model)
        net, sigma_data = backbone_copy(teacher_model, generator, "ufogen")
        disc = seeded(self.head_seed, lambda: NoisyDiscriminator(net, sigma_data,
                                                                 self.head_hidden))
        return AdversarialPair(generator, disc)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        pair = check_pair(student, self.name)
        x0, cond = split_batch(batch)
        levels = self.levels().to(x0)
        i = ctx.randint(self.num_scales, x0.shape[0], device=x0.device)
        t, s = levels[i], levels[i + 1]
        x0_g = pair.generator(x0 + append_dims(t, x0.ndim) * ctx.randn_like(x0), t, **cond)
        real = x0 + append_dims(s, x0.ndim) * ctx.randn_like(x0)
        fake = x0_g + append_dims(s, x0.ndim) * ctx.randn_like(x0)
        d_term, g_term = adversarial_terms(pair.discriminator, real, fake, self.gan_loss,
                                           self.r1_gamma, s, **cond)
        rec = (x0_g - x0).flatten(1).pow(2).mean(1).mean()
        return g_term + self.rec_weight * rec + d_term
