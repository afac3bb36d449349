"""Adversarial Diffusion Distillation (Sauer et al. 2023), the method behind one-step "Turbo"
models."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import append_dims
from ..nets.backbone_disc import FrozenFeatureDiscriminator, backbone_of
from ..process import VPDiscrete
from ..schedules import karras
from .adversarial import AdversarialPair, check_pair
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start
from .gan_terms import adversarial_terms, backbone_copy, check_gan_loss, seeded

__all__ = ["ADD", "FEATURES"]

# The frozen feature network F of ADD's discriminator. Neither is a network that scores the
# bench (the digits CNN, Inception): a discriminator trained on the scoring features would
# optimise the metric itself.
FEATURES = ("teacher", "random")


@functools.cache
def _ddpm_sigmas() -> Tensor:
    """The 1000 noise levels of DDPM's linear-beta schedule (Ho et al. 2020) in sigma space,
    ADD's teacher timesteps ``t ~ U{0..999}``."""
    return VPDiscrete("linear").sigmas


def _reinitialised(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if hasattr(m, "reset_parameters") and m is not net:
            m.reset_parameters()  # type: ignore[operator]  # checked by hasattr
    return net


@register_method
@dataclass(frozen=True)
class ADD(MethodBase):
    """ADD (Sauer et al. 2023, Sec. 3, Eqs. 2-5) in sigma space. The student ``x_theta``
    (the teacher's weights at start) denoises data noised to one of its ``num_student_steps``
    levels ``s`` (``karras(n, student_sigma_min, sigma_max)``, ADD's ``T_student``), giving
    ``x_hat = x_theta(x0 + s eps, s)``, trained on

    - an adversarial loss (``gan_loss``, hinge as in the paper, R1 ``r1_gamma`` on the reals)
      through a discriminator on clean samples made of a FROZEN feature network ``F`` and
      trainable heads (:class:`FrozenFeatureDiscriminator`). ``features="teacher"``: the
      teacher's own backbone read at ``feature_sigma`` (the paper uses DINOv2; a pretrained
      network that knows the data is the point, and the teacher is the one fewstep has);
      ``"random"``: the student's architecture with fixed random weights (seed ``head_seed``),
      for teachers without a backbone. Neither is a network that scores the bench
      (the digits CNN, Inception), so the adversary does not optimise the metric itself;
    - the score-distillation loss ``distill_weight c(t) ||x_hat - sg(D_teacher(x_hat_t, t))||^2``
      with ``x_hat_t = sg(x_hat) + t eps'``, ``t`` uniform over DDPM's 1000 levels (clamped to
      ``[sigma_min, sigma_max]``) and the paper's exponential weighting ``c(t) = alpha_t =
      1 / sqrt(1 + t^2)``, ``distill_weight = lambda = 2.5``.

    Sampling (:meth:`sampling_sigmas`): ``x0 = x_theta(sigma_max z, sigma_max)`` in one step;
    ``k <= num_student_steps`` steps re-noise each estimate to the next of ``k`` of the student
    levels (the multistep consistency sampler with ``sigma_min = 0``)."""

    name: ClassVar[str] = "add"

    sampler: ClassVar[str | None] = "own_levels"
    num_student_steps: int = 4
    student_sigma_min: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    distill_weight: float = 2.5
    features: str = "teacher"
    feature_sigma: float = 0.5
    gan_loss: str = "hinge"
    r1_gamma: float = 1e-5
    head_hidden: int = 64
    head_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_student_steps < 1:
            raise ValueError(f"num_student_steps must be >= 1; got {self.num_student_steps}")
        if not 0 < self.sigma_min <= self.student_sigma_min <= self.sigma_max:
            raise ValueError("need 0 < sigma_min <= student_sigma_min <= sigma_max; got "
                             f"{self.sigma_min}, {self.student_sigma_min}, {self.sigma_max}")
        if self.features not in FEATURES:
            raise ValueError(f"unknown features {self.features!r}; available: "
                             f"{', '.join(FEATURES)}")
        if self.distill_weight < 0 or self.r1_gamma < 0:
            raise ValueError(f"distill_weight and r1_gamma must be >= 0; got "
                             f"{self.distill_weight}, {self.r1_gamma}")
        check_gan_loss(self.gan_loss)

    def student_levels(self) -> Tensor:
        """ADD's ``T_student``: ``num_student_steps`` levels from sigma_max down (float64)."""
        return karras(self.num_student_steps, self.student_sigma_min, self.sigma_max, self.rho,
                      final_zero=False)

    def sampling_sigmas(self, k: int) -> Tensor:
        """The ``k``-step sampling grid: ``k`` of the student levels, evenly spread from
        sigma_max, then 0 (``k + 1`` values, float64)."""
        n = self.num_student_steps
        if not 1 <= k <= n:
            raise ValueError(f"an ADD student with {n} levels samples in 1..{n} steps; got {k}")
        idx = torch.linspace(0, n - 1, k).round().long() if k > 1 else torch.zeros(1).long()
        return torch.cat([self.student_levels()[idx], torch.zeros(1, dtype=torch.float64)])

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The teacher's weights in the student; the discriminator's frozen ``F`` per
        ``features``, its heads fresh (seed ``head_seed``)."""
        if isinstance(template, AdversarialPair):  # already built (e.g. by the CLI)
            return template
        generator = warm_start(template, teacher_model)
        if self.features == "teacher" and backbone_of(teacher_model) is None:
            raise ValueError("add with features='teacher' reads the teacher's backbone; this "
                             f"teacher ({type(teacher_model).__name__}) has none: use "
                             "features='random'")
        net, sigma_data = backbone_copy(teacher_model if self.features == "teacher" else None,
                                        generator, "add")

        def build() -> FrozenFeatureDiscriminator:
            F = net if self.features == "teacher" else _reinitialised(net)
            return FrozenFeatureDiscriminator(F, self.feature_sigma, sigma_data, self.head_hidden)

        return AdversarialPair(generator, seeded(self.head_seed, build))

    def distill_sigma(self, n: int, like: Tensor, ctx: LossContext) -> Tensor:
        """``n`` teacher levels ``t``: DDPM's 1000 levels, uniform, clamped to the range."""
        table = _ddpm_sigmas().clamp(self.sigma_min, self.sigma_max)
        return table[ctx.randint(len(table), n)].to(like)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        pair = check_pair(student, self.name)
        x0, cond = split_batch(batch)
        levels = self.student_levels().to(x0)
        s = levels[ctx.randint(len(levels), x0.shape[0], device=x0.device)]
        x_hat = pair.generator(x0 + append_dims(s, x0.ndim) * ctx.randn_like(x0), s, **cond)
        d_term, g_term = adversarial_terms(pair.discriminator, x0, x_hat, self.gan_loss,
                                           self.r1_gamma, **cond)
        t = self.distill_sigma(x0.shape[0], x0, ctx)
        x_t = x_hat.detach() + append_dims(t, x0.ndim) * ctx.randn_like(x0)
        target = ctx.teacher_denoise(x_t, t, **cond)  # type: ignore[arg-type]  # labels only
        c = (1 + t**2).rsqrt()  # exponential weighting c(t) = alpha_t
        distill = (c * (x_hat - target).flatten(1).pow(2).mean(1)).mean()
        return g_term + self.distill_weight * distill + d_term
