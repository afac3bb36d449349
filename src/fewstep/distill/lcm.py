"""Latent consistency models (Luo et al. 2023): latent consistency distillation ("lcd") on the
classifier-free-guidance-augmented PF-ODE, and latent consistency fine-tuning ("lcf").

Nothing here is specific to latents: the methods train on whatever ``x`` the batch holds
(autoencoder latents for a latent teacher, pixels for a pixel one) against any
class-conditional denoiser ``D(x, sigma, cond=labels)`` trained with label dropout (the null
label -1, :data:`fewstep.data.NULL_LABEL`).

Guidance scale convention: fewstep's ``w`` is the CFG scale of :class:`~fewstep.CFGDenoiser`,
``D_w = D_u + w (D_c - D_u)`` (w = 1: conditional, no guidance). Luo et al. write the same
ODE with ``(1 + omega) eps_c - omega eps_u`` (their Eq. 10), so ``w = 1 + omega``; their
``omega in [2, 14]`` is ``w in [3, 15]``.

The student is a w-conditioned consistency function ``f(x, sigma, cond=labels, w=w)``: a
:class:`~fewstep.nets.ConsistencyPrecond` around a net built with ``w_embedding=True``
(``MLPDenoiserNet`` / ``UNet``); warm-started from the teacher its w embedding starts at zero.
Sample it with the ``consistency`` solver at a chosen w: ``cond={"cond": labels, "w": w}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..data.registry import NULL_LABEL
from ..denoiser import CFGDenoiser
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start
from .consistency import (
    ConsistencyDistillation,
    _check_distance,
    _self_consistency,
    check_consistency_student,
    karras_levels,
)

__all__ = ["LatentConsistencyDistillation", "LatentConsistencyFineTuning", "draw_w"]

GUIDANCE_KEY = "w"  # the student's (and CFGDenoiser(scale=None)'s) per-row guidance keyword


def _check_w_range(w_min: float, w_max: float) -> None:
    if not (0.0 <= w_min <= w_max) or w_max != w_max:
        raise ValueError(f"need 0 <= w_min <= w_max; got w_min={w_min}, w_max={w_max}")


def _labels(cond: dict[str, Tensor], key: str, method: str) -> None:
    if key not in cond:
        raise ValueError(f"{method} trains a class-conditional student: the batch needs labels "
                         f"under {key!r} (e.g. Dataset.load_labelled()); got keys "
                         f"{sorted(cond) or '(none)'}")


def draw_w(ctx: LossContext, w_min: float, w_max: float, like: Tensor) -> Tensor:
    """``(batch,)`` guidance scales ``w ~ U[w_min, w_max]`` from the loop's generator (one
    draw per row even when ``w_min == w_max``, so the random stream does not depend on it)."""
    return w_min + (w_max - w_min) * ctx.rand(like.shape[0], like=like)


@register_method
@dataclass(frozen=True)
class LatentConsistencyDistillation(ConsistencyDistillation):
    """LCD (Luo et al. 2023, Alg. 1): per row ``n ~ U{0..N-1-k}``, ``w ~ U[w_min, w_max]``,
    ``x = x0 + s_{n+k} z``; the target is one ``solver`` step of the guided teacher
    ``D_u + w (D_c - D_u)`` from ``s_{n+k}`` to ``s_n`` (the skipping step ``k``; each guided
    evaluation costs two teacher rows, counted), evaluated by the EMA target ``f^-`` (decay
    ``mu``); the loss is ``d(f(x, s_{n+k}, c, w), f^-(x_hat, s_n, c, w))`` with ``d`` l2 or
    pseudo-Huber. The other fields are :class:`ConsistencyDistillation`'s; with ``k = 1`` and
    ``w_min = w_max = w`` this is CD on the teacher ``CFGDenoiser(D, w, null)`` (tested).

    For Euler (DDIM) the guided solver step equals the paper's combination of the conditional
    and unconditional solver steps, ``x + w Psi_c + (1 - w) Psi_u`` (their Eq. 11, the
    solver being linear in D); higher-order solvers solve the guided ODE itself."""

    name: ClassVar[str] = "lcd"

    sampler: ClassVar[str | None] = "lcm"
    k: int = 1
    w_min: float = 1.0
    w_max: float = 4.0
    cond_key: str = "cond"
    null_label: int = NULL_LABEL

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_w_range(self.w_min, self.w_max)
        if not 1 <= self.k <= self.N - 1:
            raise ValueError(f"the skipping step k must lie in [1, N - 1] = [1, {self.N - 1}]; "
                             f"got k={self.k}")

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The w-conditioned consistency student, warm-started from the teacher where their
        tensors match (the w embedding, absent from the teacher, keeps its zero init)."""
        check_consistency_student(template, self.sigma_min, "LCD")
        return warm_start(template, teacher_model, new=(".embed.w.",))

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        _labels(cond, self.cond_key, "LCD")
        x, s_hi, s_lo = self._pair(x0, ctx, self.k)
        w = draw_w(ctx, self.w_min, self.w_max, x0)
        guided = CFGDenoiser(ctx.require_teacher(), None, {self.cond_key: self.null_label})
        return self._distill(student, x, s_hi, s_lo, {**cond, GUIDANCE_KEY: w}, ctx, guided)


@register_method
@dataclass(frozen=True)
class LatentConsistencyFineTuning(MethodBase):
    """LCF (Luo et al. 2023, Sec. 4.4): adapt a trained LCM to new data without a teacher, by
    consistency training with the skipping step: per row ``n ~ U{0..N-1-k}``, shared noise
    ``z``, loss ``d(f(x0 + s_{n+k} z, s_{n+k}, c, w), sg f(x0 + s_n z, s_n, c, w)) /
    (s_{n+k} - s_n)`` (the CT/ECT loss of :mod:`.consistency`, Song & Dhariwal 2023's
    weighting), ``w ~ U[w_min, w_max]`` fed to the student's w input so every scale it was
    distilled at is tuned (without a teacher the target at every w is the new data).

    The student is the trained LCM itself (e.g. ``load_checkpoint(lcd_run)``), passed as the
    template; a ``teacher`` given to ``train`` is never evaluated."""

    name: ClassVar[str] = "lcf"

    sampler: ClassVar[str | None] = "lcm"
    N: int = 50
    k: int = 5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    w_min: float = 1.0
    w_max: float = 4.0
    cond_key: str = "cond"
    distance: str = "pseudo_huber"
    c: float | None = None

    def __post_init__(self) -> None:
        _check_distance(self.distance, self.c)
        _check_w_range(self.w_min, self.w_max)
        if self.N < 2 or not 1 <= self.k <= self.N - 1:
            raise ValueError(f"need N >= 2 and 1 <= k <= N - 1; got N={self.N}, k={self.k}")

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The trained LCM (the template), as given."""
        check_consistency_student(template, self.sigma_min, "LCF")
        return template

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        _labels(cond, self.cond_key, "LCF")
        sig = karras_levels(self.N, self.sigma_min, self.sigma_max, self.rho).to(x0)
        n = ctx.randint(self.N - self.k, x0.shape[0], device=x0.device)
        w = draw_w(ctx, self.w_min, self.w_max, x0)
        return _self_consistency(student, x0, sig[n + self.k], sig[n],
                                 {**cond, GUIDANCE_KEY: w}, ctx, self.sigma_min, self.distance,
                                 self.c)

