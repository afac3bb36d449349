"""Guided distillation (Meng et al. 2023, "On distillation of guided diffusion models").

A class-conditional teacher trained with label dropout gives, by classifier-free guidance,

    x_hat_w(x, sigma, c) = (1 + w) D(x, sigma, c) - w D(x, sigma, null)        (Meng Eq. 1)

Meng et al. write the guidance strength ``w`` so that ``w = 0`` is the plain conditional model;
fewstep's :class:`~fewstep.denoiser.CFGDenoiser` computes ``D_u + s (D_c - D_u)``, the same
thing with scale ``s = 1 + w``. Everything here, the students' ``w=`` input and the bench's
``@w=`` teacher suffix, uses Meng's ``w``.

- Stage 1 (:class:`GuidedDistillation`, method ``"guided"``): one student ``D(x, sigma,
  cond=c, w=w)`` with a guidance-scale embedding matches ``x_hat_w`` for ``w ~ U[w_min,
  w_max]`` (Meng Sec. 3.1, Eq. 3; x-prediction with EDM's weighting here). It starts from the
  teacher's weights; the w embedding is zero-initialised, so at step 0 it equals the
  unguided conditional teacher at every w.
- Stage 2: progressive distillation of that student, halving its steps each round, is
  fewstep's :class:`~fewstep.distill.progressive.ProgressiveDistillation` with
  ``guidance=(w_min, w_max)`` (each row's w is drawn from the range and passed to both the
  student and its teacher). Sample it with DDIM on the PD grid, or with
  :func:`sample_pd_stochastic`, Meng et al.'s stochastic sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..data.registry import NULL_LABEL
from ..denoiser import append_dims
from ..solvers.common import Callback, Generator, emit, lerp, prepare, randn_like
from ..solvers.driver import SolverFunction, Steps
from .base import (
    Batch,
    LossContext,
    MethodBase,
    edm_weight,
    register_method,
    split_batch,
    warm_start,
)
from .teacher import lognormal_sigma

__all__ = ["W_EMBEDDING", "GuidedDistillation", "guidance_range", "guided_output",
           "pd_stochastic_steps", "sample_pd_stochastic", "sample_w"]

W_EMBEDDING = ".embed.w."  # the guidance-scale embedding a w-conditioned student adds


def guided_output(d_c: Tensor, d_u: Tensor, w: Tensor | float) -> Tensor:
    """``x_hat_w = (1 + w) d_c - w d_u`` (Meng et al. 2023, Eq. 1; fewstep's CFG scale is
    ``1 + w``); ``w`` a float or a per-row ``(batch,)`` tensor."""
    w = append_dims(w, d_c.ndim) if isinstance(w, Tensor) else w
    return d_c + w * (d_c - d_u)


def guidance_range(w_range: Sequence[float]) -> tuple[float, float]:
    """``(w_min, w_max)`` checked: two finite numbers with ``0 <= w_min <= w_max``; ValueError
    naming the bad range otherwise."""
    try:
        w_min, w_max = (float(v) for v in w_range)
    except (TypeError, ValueError):
        raise ValueError(f"a guidance range is two numbers (w_min, w_max); got "
                         f"{w_range!r}") from None
    if not (math.isfinite(w_min) and math.isfinite(w_max) and 0 <= w_min <= w_max):
        raise ValueError(f"a guidance range needs 0 <= w_min <= w_max; got {w_range!r}")
    return w_min, w_max


def sample_w(ctx: LossContext, x0: Tensor, w_range: Sequence[float]) -> Tensor:
    """One guidance strength per row of ``x0``, ``w ~ U[w_min, w_max]`` (Meng et al. 2023,
    Sec. 3.1), from the loop's generator; shape ``(batch,)``."""
    w_min, w_max = guidance_range(w_range)
    return w_min + (w_max - w_min) * ctx.rand(x0.shape[0], like=x0)


def _labels(cond: dict[str, Tensor], method: str) -> Tensor:
    if "cond" not in cond:
        raise ValueError(f"{method} needs class labels in the batch (key 'cond', e.g. "
                         "Dataset.load_labelled)")
    return cond["cond"]


@register_method
@dataclass(frozen=True)
class GuidedDistillation(MethodBase):
    """Stage 1 of guided distillation: ``student(x, sigma, cond=c, w=w)`` matches the teacher's
    guided ``x_hat_w`` (:func:`guided_output`) at EDM's training noise levels, with EDM's
    weight (see the module docstring). The teacher is evaluated once per step on the
    conditional and null-label rows together (two evaluations per row).

    Raises ValueError for a bad range and, at the first step, for a batch without labels."""

    name: ClassVar[str] = "guided"

    sampler: ClassVar[str | None] = "ddim"
    w_min: float = 0.0
    w_max: float = 4.0
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        guidance_range((self.w_min, self.w_max))

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The teacher's weights in a template with a (zero-initialised) w embedding."""
        return warm_start(template, teacher_model, new=(W_EMBEDDING,))

    @torch.no_grad()
    def target(self, x: Tensor, sigma: Tensor, c: Tensor, w: Tensor,
               ctx: LossContext) -> Tensor:
        """The teacher's ``x_hat_w`` at ``(x, sigma)`` for labels ``c``: one counted call on
        the null-label and conditional rows together."""
        null = torch.full_like(c, NULL_LABEL)
        d_u, d_c = ctx.teacher_denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                       cond=torch.cat([null, c])).chunk(2)
        return guided_output(d_c, d_u, w)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        c = _labels(cond, "guided distillation")
        sigma = lognormal_sigma(x0, ctx, self.P_mean, self.P_std)
        w = sample_w(ctx, x0, (self.w_min, self.w_max))
        x = x0 + append_dims(sigma, x0.ndim) * ctx.randn_like(x0)
        err = student(x, sigma, **{**cond, "w": w}) - self.target(x, sigma, c, w, ctx)
        return (edm_weight(sigma, self.sigma_data) * err.flatten(1).pow(2).mean(1)).mean()


def pd_stochastic_steps(x: Tensor, sigmas: Tensor, *, generator: Generator = None,
                        callback: Callback = None) -> Steps:
    """Meng et al.'s N-step stochastic sampler (2023, Sec. 3.3) on a grid ``s_0 > ... > s_N =
    0`` (e.g. a PD student's ``method.sigmas(N)``): from ``x`` at ``s_i`` one deterministic
    DDIM step of twice the step length, to ``s_{i+2}``, then one stochastic step back to
    ``s_{i+1}`` by the forward process, ``x + sqrt(s_{i+1}^2 - s_{i+2}^2) eps``; the last
    step (from ``s_{N-1}``) is a plain DDIM step to 0. N evaluations, as the deterministic
    sampler; with ``N = 1`` it is DDIM."""
    s = prepare(x, sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = yield x, s[i]
        if i == n - 1:
            x = lerp(denoised, x, s[i + 1] / s[i])  # the last step: DDIM to s_N = 0
        else:
            x = lerp(denoised, x, s[i + 2] / s[i])  # DDIM from s_i to s_{i+2}
            x = torch.add(x, randn_like(x, generator),
                          alpha=math.sqrt(s[i + 1] ** 2 - s[i + 2] ** 2))  # back to s_{i+1}
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


sample_pd_stochastic = SolverFunction(pd_stochastic_steps, "sample_pd_stochastic")
