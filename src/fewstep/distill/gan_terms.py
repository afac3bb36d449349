"""What UFOGen and ADD add to the shared adversarial pieces of
:mod:`fewstep.distill.adversarial` (the pair, ``frozen``, the non-saturating losses, R1): a
registry of GAN losses with the hinge loss ADD uses, :func:`adversarial_terms` (both players'
terms for one backward pass, with R1), and the discriminator's initialisation from the
teacher's backbone."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import relu

from .._registry import Registry
from ..nets.backbone_disc import backbone_of
from .adversarial import discriminator_loss, frozen, generator_loss, r1_penalty

__all__ = ["GAN_LOSSES", "adversarial_terms", "backbone_copy", "check_gan_loss", "gan_loss",
           "seeded"]


def _nonsaturating(real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    return discriminator_loss(real, fake), generator_loss(fake_g)


def _hinge(real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    # D: max(0, 1 - D(x)) + max(0, 1 + D(G)); G: -D(G) (Lim & Ye 2017; ADD, Eq. 3)
    return relu(1 - real).mean() + relu(1 + fake).mean(), -fake_g.mean()


GAN_LOSSES: Registry[Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = Registry(
    "GAN loss", {"nonsaturating": _nonsaturating, "hinge": _hinge})


def check_gan_loss(kind: str) -> str:
    """``kind`` if it names a GAN loss, else :class:`~fewstep._registry.UnknownNameError` (a
    ValueError) listing them."""
    GAN_LOSSES[kind]
    return kind


def gan_loss(kind: str, real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    """``(discriminator term, generator term)`` of the GAN loss ``kind`` from the logits of
    real samples, of detached fakes (``fake``, for D) and of fakes through a frozen D
    (``fake_g``, for G); each ``(batch,)``."""
    return GAN_LOSSES[check_gan_loss(kind)](real, fake, fake_g)


def adversarial_terms(D: nn.Module, real: Tensor, fake: Tensor, kind: str, r1_gamma: float,
                      *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """``(discriminator term + r1_gamma / 2 R1, generator term)`` of ``D(real, *args,
    **kwargs)`` against ``D(fake, ...)``: D sees detached fakes, G sees ``frozen(D)``, so their
    sum trains both players in one backward pass (:mod:`fewstep.distill.adversarial`)."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    # R1 differentiates a gradient: attention must use the twice-differentiable math kernel
    with sdpa_kernel(SDPBackend.MATH) if r1_gamma > 0 else contextlib.nullcontext():
        d_real = D(real, *args, **kwargs)
    d_term, g_term = gan_loss(kind, d_real, D(fake.detach(), *args, **kwargs),
                              frozen(D)(fake, *args, **kwargs))
    if r1_gamma > 0:
        d_term = d_term + r1_gamma / 2 * r1_penalty(d_real, real)
    return d_term, g_term


def backbone_copy(teacher_model: nn.Module | None, generator: nn.Module,
                  method: str) -> tuple[nn.Module, float]:
    """``(backbone, sigma_data)``: a copy of the teacher's backbone (``teacher.net`` with
    ``features``) and its sigma_data, or, for a teacher without one (an analytic teacher), a
    copy of the generator's. Raises TypeError when neither has a fewstep backbone."""
    for model in (teacher_model, generator):
        net = backbone_of(model)
        if net is not None:
            return copy.deepcopy(net), float(getattr(model, "sigma_data", 0.5))
    raise TypeError(f"{method} builds its discriminator on a denoiser backbone: pass a "
                    "preconditioned fewstep network (e.g. EDMPrecond(MLPDenoiserNet(...)) or "
                    f"EDMPrecond(UNet(...))); got a {type(generator).__name__} student")


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with torch's global generator seeded to ``seed`` and restored afterwards,
    so a freshly initialised discriminator head is the same in every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
