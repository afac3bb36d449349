"""Adversarial terms for methods that train a generator and its discriminator as one module
(:class:`~fewstep.nets.backbone_disc.WithDiscriminator`) under fewstep's single optimiser.

One backward pass of ``loss = g_term + d_term`` gives each player its own gradient:

- the generator's term calls the discriminator through :func:`frozen_call` (detached
  parameters), so it moves only the generator;
- the discriminator's term sees detached fakes, so it moves only the discriminator.

Adam's per-parameter statistics make one optimiser over both the same as two with equal
settings (the loop's global gradient clipping then acts on both together).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import relu, softplus

from ..nets.backbone_disc import WithDiscriminator, backbone_of

__all__ = ["GAN_LOSSES", "adversarial_terms", "backbone_copy", "check_gan_loss", "frozen_call",
           "gan_loss", "r1_penalty", "seeded", "unwrap_pair"]


def frozen_call(module: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    """``module(*args, **kwargs)`` with every parameter detached: gradients reach the inputs,
    never the module."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args, kwargs)


def _nonsaturating(real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    # D: -log sigmoid(D(x)) - log(1 - sigmoid(D(G))); G: -log sigmoid(D(G)) (Goodfellow 2014)
    return softplus(-real).mean() + softplus(fake).mean(), softplus(-fake_g).mean()


def _hinge(real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    # D: max(0, 1 - D(x)) + max(0, 1 + D(G)); G: -D(G) (Lim & Ye 2017; ADD, Eq. 3)
    return relu(1 - real).mean() + relu(1 + fake).mean(), -fake_g.mean()


GAN_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "nonsaturating": _nonsaturating,
    "hinge": _hinge,
}


def gan_loss(kind: str, real: Tensor, fake: Tensor, fake_g: Tensor) -> tuple[Tensor, Tensor]:
    """``(discriminator term, generator term)`` of the GAN loss ``kind`` from the logits of
    real samples, of detached fakes (``fake``, for D) and of fakes through a frozen D
    (``fake_g``, for G); each ``(batch,)``."""
    return GAN_LOSSES[check_gan_loss(kind)](real, fake, fake_g)


def check_gan_loss(kind: str) -> str:
    """``kind`` if it names a GAN loss, else a ValueError listing them."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; available: {', '.join(GAN_LOSSES)}")
    return kind


def r1_penalty(logits: Tensor, real: Tensor) -> Tensor:
    """``E ||grad_x D(x)||^2 / 2`` over real samples ``real`` (which must require grad) with
    ``logits = D(real)`` (Mescheder et al. 2018, Eq. 9 without gamma); differentiable in D's
    parameters."""
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean() / 2


def unwrap_pair(student: nn.Module, method: str) -> WithDiscriminator:
    """The :class:`WithDiscriminator` a GAN method trains (unwrapping a distributed wrapper's
    ``.module``), or a clear error naming ``method``."""
    pair = getattr(student, "module", student)
    if not isinstance(pair, WithDiscriminator):
        raise TypeError(f"{method} trains a generator with its discriminator: the student must "
                        f"come from {method}.init_student (got a {type(pair).__name__})")
    return pair


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


def adversarial_terms(D: nn.Module, real: Tensor, fake: Tensor, kind: str, r1_gamma: float,
                      *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """``(discriminator term + r1_gamma R1, generator term)`` of ``D(real, *args, **kwargs)``
    against ``D(fake, ...)``: D sees detached fakes, G sees a frozen D (see the module
    docstring), so their sum trains both players in one backward pass."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    # R1 differentiates a gradient: attention must use the twice-differentiable math kernel
    with sdpa_kernel(SDPBackend.MATH) if r1_gamma > 0 else contextlib.nullcontext():
        d_real = D(real, *args, **kwargs)
    d_term, g_term = gan_loss(kind, d_real, D(fake.detach(), *args, **kwargs),
                              frozen_call(D, fake, *args, **kwargs))
    if r1_gamma > 0:
        d_term = d_term + r1_gamma * r1_penalty(d_real, real)
    return d_term, g_term
