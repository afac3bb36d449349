"""Consistency models as small loss objects: consistency distillation ("cd", Song et al. 2023),
improved consistency training ("ct", Song & Dhariwal 2023) and easy consistency tuning
("ect", Geng et al. 2024).

The student is a consistency function ``f(x, sigma)`` with the boundary condition
``f(x, sigma_min) = x`` (a :class:`~fewstep.nets.ConsistencyPrecond`); sample it with the
"consistency" solver. Every loss compares the student at a higher noise level with a
stop-gradient target at a lower one on the same trajectory:

- CD: the trajectory step is one teacher ODE step with any registered solver (Heun default);
  rows draw their own discretisation index and rows sharing an index are solved together in
  one solver call (``LossContext.teacher_solve_rows``); the target is an EMA network.
- CT / ECT: the step is the shared-noise estimate ``x0 + sigma z`` at both levels (no teacher);
  the target is the student itself under stop-gradient.

Distances (per sample): ``"l2"`` the mean squared difference (Song et al. 2023's squared l2
divided by the dimension) and ``"pseudo_huber"`` ``sqrt(|a - b|^2 + c^2) - c`` with
``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023, Sec. 3.3). LPIPS is not available: it needs
pretrained VGG/AlexNet weights that fewstep does not ship or download.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import append_dims
from ..nets.precond import ConsistencyPrecond
from ..schedules import karras
from .base import (
    Batch,
    LossContext,
    MethodBase,
    ema_update_,
    register_method,
    split_batch,
    warm_start,
)

__all__ = [
    "DISTANCES",
    "ConsistencyDistillation",
    "EasyConsistencyTuning",
    "ImprovedConsistencyTraining",
    "consistency_distance",
    "ect_r",
    "huber_c",
    "ict_num_scales",
    "karras_levels",
    "lognormal_index_probs",
    "pseudo_huber",
]

DISTANCES = ("l2", "pseudo_huber")


# --- distances -------------------------------------------------------------------------------


def huber_c(x: Tensor) -> float:
    """``c = 0.00054 sqrt(d)`` for samples of dimension d (Song & Dhariwal 2023, Sec. 3.3)."""
    return 0.00054 * math.sqrt(x[0].numel())


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Per-sample ``sqrt(|a - b|^2 + c^2) - c`` (Song & Dhariwal 2023, Eq. 9)."""
    sq = (a - b).flatten(1).pow(2).sum(1)
    return (sq + c * c).sqrt() - c


def consistency_distance(name: str, a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """Per-sample distance ``d(a, b)`` by name: ``l2`` (mean square) or ``pseudo_huber``
    (``c`` defaults to :func:`huber_c`)."""
    if name == "l2":
        return (a - b).flatten(1).pow(2).mean(1)
    if name == "pseudo_huber":
        return pseudo_huber(a, b, huber_c(a) if c is None else c)
    if name == "lpips":
        raise ValueError("LPIPS is not available: it needs pretrained network weights that "
                         "fewstep does not ship; use 'l2' or 'pseudo_huber'")
    raise ValueError(f"unknown distance {name!r}; expected one of {DISTANCES}")


# --- discretisations and schedules -----------------------------------------------------------


def karras_levels(N: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The N boundaries ``sigma_1 < ... < sigma_N`` of Song et al. 2023, Sec. 5 (Karras et al.
    2022, Eq. 5), ascending, float64."""
    return karras(N, sigma_min, sigma_max, rho, final_zero=False).flip(0)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's doubling curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with
    ``K' = floor(K / (log2 floor(s1 / s0) + 1))`` (Song & Dhariwal 2023, Eq. 8)."""
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** (step // max(k_prime, 1)), s1) + 1


def lognormal_index_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """``p(i) ∝ erf((log s_{i+1} - P_mean) / (sqrt2 P_std)) - erf((log s_i - P_mean) /
    (sqrt2 P_std))`` over the N - 1 intervals of ascending ``sigmas`` (Song & Dhariwal 2023,
    Sec. 3.5): the lognormal mass of each interval."""
    cdf = torch.erf((sigmas.double().log() - p_mean) / (math.sqrt(2) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def ect_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's shrinking gap: ``r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t)))``, clamped at 0
    (Geng et al. 2024, Sec. 3 mapping function, stage offset as in their code)."""
    ratio = 1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=0)


# --- shared pieces ---------------------------------------------------------------------------


def check_consistency_student(template: nn.Module, sigma_min: float, name: str) -> None:
    if not isinstance(template, ConsistencyPrecond):
        raise ValueError(f"{name} trains a boundary-respecting consistency function: pass "
                         f"ConsistencyPrecond(net, sigma_min, sigma_data) as the student, not "
                         f"{type(template).__name__}")
    if not math.isclose(template.sigma_min, sigma_min):
        raise ValueError(f"the student's sigma_min={template.sigma_min} differs from the "
                         f"method's sigma_min={sigma_min}")


def _check_distance(name: str, c: float | None) -> None:
    """Raise for an unknown distance or a pseudo-Huber ``c`` that is not a positive finite
    number (``c = 0`` makes the gradient of ``sqrt(|a - b|^2 + c^2)`` NaN at ``a = b``)."""
    if name not in DISTANCES:
        consistency_distance(name, torch.zeros(1, 1), torch.zeros(1, 1))  # raises, with reason
    if c is not None and not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
        raise ValueError(f"pseudo-Huber c must be a positive finite number (or None for "
                         f"0.00054 sqrt(d)); got c={c!r}")


def _rows(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v, x.ndim)


# --- methods ---------------------------------------------------------------------------------


@register_method
@dataclass(frozen=True)
class ConsistencyDistillation(MethodBase):
    """CD (Song et al. 2023, Alg. 2): ``d(f(x_{n+1}, s_{n+1}), f^-(Phi(x_{n+1}), s_n))`` with
    ``x_{n+1} = x0 + s_{n+1} z``, one teacher ``solver`` step ``Phi`` and an EMA target ``f^-``
    of decay ``mu`` (0: the student under stop-gradient); ``n`` uniform per row."""

    name: ClassVar[str] = "cd"

    sampler: ClassVar[str | None] = "consistency"
    N: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    solver: str = "heun"
    mu: float = 0.95
    distance: str = "l2"
    c: float | None = None  # pseudo-Huber constant; None: 0.00054 sqrt(d)

    def __post_init__(self) -> None:
        _check_distance(self.distance, self.c)
        if self.N < 2 or not 0 <= self.mu < 1:
            raise ValueError(f"need N >= 2 and 0 <= mu < 1; got N={self.N}, mu={self.mu}")

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The consistency student, initialised from the teacher when architectures match."""
        check_consistency_student(template, self.sigma_min, "CD")
        return warm_start(template, teacher_model)

    def on_step(self, step: int, student: nn.Module, ctx: LossContext) -> None:
        """``theta^- <- mu theta^- + (1 - mu) theta`` (Alg. 2, last line), before each step."""
        if self.mu == 0:
            return
        target = ctx.state.get("target")
        if target is None:
            ctx.state["target"] = _frozen_copy(student)
            return
        ema_update_(target, student, self.mu)  # the loop's EMA update, with decay mu

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        x, s_hi, s_lo = self._pair(x0, ctx, 1)
        return self._distill(student, x, s_hi, s_lo, cond, ctx)

    def _pair(self, x0: Tensor, ctx: LossContext, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_{n+k}, s_{n+k}, s_n)``: ``n`` uniform in ``[0, N - 1 - k]`` per row on the
        Karras levels and ``x_{n+k} = x0 + s_{n+k} z``."""
        sig = karras_levels(self.N, self.sigma_min, self.sigma_max, self.rho).to(x0)
        n = ctx.randint(self.N - k, x0.shape[0], device=x0.device)
        s_lo, s_hi = sig[n], sig[n + k]
        return x0 + _rows(s_hi, x0) * ctx.randn_like(x0), s_hi, s_lo

    def _distill(self, student: nn.Module, x: Tensor, s_hi: Tensor, s_lo: Tensor,
                 cond: dict[str, Any], ctx: LossContext, teacher: Any = None) -> Tensor:
        """``d(f(x, s_hi), f^-(Phi(x; s_hi -> s_lo), s_lo))``: one ``solver`` step of
        ``teacher`` (default: the context's) per row, counted; ``cond`` goes to both the
        teacher and the student."""
        x_hat = ctx.teacher_solve_rows(self.solver, x, torch.stack([s_hi, s_lo], 1),
                                       teacher=teacher, row_cond=cond)
        if self.mu > 0 and "target" not in ctx.state:  # loss called without on_step
            ctx.state["target"] = _frozen_copy(student)
        target = ctx.state["target"] if self.mu > 0 else student
        with torch.no_grad():
            y = target(x_hat, s_lo, **cond)
        return consistency_distance(self.distance, student(x, s_hi, **cond), y, self.c).mean()


@register_method
@dataclass(frozen=True)
class ImprovedConsistencyTraining(MethodBase):
    """iCT (Song & Dhariwal 2023): ``lambda_i d(f(x0 + s_{i+1} z, s_{i+1}), sg f(x0 + s_i z,
    s_i))`` with ``lambda_i = 1 / (s_{i+1} - s_i)``, lognormal index sampling, the doubling
    ``N`` curriculum over ``total_steps`` and pseudo-Huber; no teacher, no EMA target."""

    name: ClassVar[str] = "ct"

    sampler: ClassVar[str | None] = "consistency"
    total_steps: int = 10_000
    s0: int = 10
    s1: int = 1280
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0
    distance: str = "pseudo_huber"
    c: float | None = None

    def __post_init__(self) -> None:
        _check_distance(self.distance, self.c)

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """Trained from scratch: the template as given."""
        check_consistency_student(template, self.sigma_min, "CT")
        return template

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        N = ict_num_scales(ctx.step, self.total_steps, self.s0, self.s1)
        sig = karras_levels(N, self.sigma_min, self.sigma_max, self.rho)
        p = lognormal_index_probs(sig, self.p_mean, self.p_std)
        i = torch.multinomial(p, x0.shape[0], replacement=True, generator=ctx.generator)
        sig, i = sig.to(x0), i.to(x0.device)
        s_lo, s_hi = sig[i], sig[i + 1]
        return _self_consistency(student, x0, s_hi, s_lo, cond, ctx, self.sigma_min,
                                 self.distance, self.c)


@register_method
@dataclass(frozen=True)
class EasyConsistencyTuning(MethodBase):
    """ECT (Geng et al. 2024): start from the teacher's weights, draw ``t`` lognormal and
    ``r = ect_r(t, stage)`` with ``stage = step // double_every`` (the gap ``t - r`` halves
    every stage for q = 2), loss ``d(f(x0 + t z, t), sg f(x0 + r z, r)) / (t - r)``; at
    ``r <= sigma_min`` the target is ``x0 + r z`` (the boundary condition)."""

    name: ClassVar[str] = "ect"

    sampler: ClassVar[str | None] = "consistency"
    double_every: int = 1000
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.1
    p_std: float = 2.0
    distance: str = "pseudo_huber"
    c: float | None = None

    def __post_init__(self) -> None:
        _check_distance(self.distance, self.c)
        if self.double_every < 1 or self.q <= 1:
            raise ValueError(f"need double_every >= 1 and q > 1; got {self.double_every}, "
                             f"{self.q}")

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        """The teacher's weights (an EDMPrecond) in the consistency student (same ``net``)."""
        check_consistency_student(template, self.sigma_min, "ECT")
        if teacher_model is None or not any(True for _ in teacher_model.parameters()):
            raise ValueError("ECT tunes a trained diffusion model: pass a teacher with weights "
                             "(e.g. EDMPrecond(net)) whose net matches the student's")
        return warm_start(template, teacher_model)

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        u = torch.randn(x0.shape[0], generator=ctx.generator, dtype=torch.float64)
        t = (self.p_mean + self.p_std * u).exp().clamp(self.sigma_min, self.sigma_max)
        r = ect_r(t, ctx.step // self.double_every, self.q, self.k, self.b)
        t, r = t.to(x0), r.to(x0)
        return _self_consistency(student, x0, t, r, cond, ctx, self.sigma_min, self.distance,
                                 self.c)


def _self_consistency(student: nn.Module, x0: Tensor, t: Tensor, r: Tensor,
                      cond: dict[str, Any], ctx: LossContext, sigma_min: float, distance: str,
                      c: float | None) -> Tensor:
    """``d(f(x0 + t z, t), sg f(x0 + r z, r)) / (t - r)`` with shared noise z (CT, ECT); below
    sigma_min the target is the boundary value ``x0 + r z``."""
    z = ctx.randn_like(x0)
    x_r = x0 + _rows(r, x0) * z
    with torch.no_grad():
        inside = _rows(r > sigma_min, x0)
        y = torch.where(inside, student(x_r, r.clamp(min=sigma_min), **cond), x_r)
    pred = student(x0 + _rows(t, x0) * z, t, **cond)
    return (consistency_distance(distance, pred, y, c) / (t - r)).mean()


def _frozen_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).eval().requires_grad_(False)
