"""The adversarial pieces every GAN-based method shares (DDGAN, SIDDM; UFOGen and ADD build on
them): the generator/discriminator pair, the non-saturating GAN losses and the R1 penalty.

**One loop, one optimiser, two players.** :func:`fewstep.train.train` runs one optimiser over
the student's parameters. A GAN method's student is therefore an :class:`AdversarialPair`
(generator + discriminator, one module), and its ``loss`` returns ``L_D + L_G`` built so that
each player gets only its own gradient:

- ``L_D`` sees the generator's samples under stop-gradient (``x_fake.detach()``), so it moves
  only the discriminator;
- ``L_G`` sees the discriminator through :func:`frozen` (its parameters detached), so it moves
  only the generator.

One backward pass and one optimiser step is then a *simultaneous* gradient step of both
players (SimGD; with R1 it is locally convergent for small steps, Mescheder et al. 2018,
Thm. 4.1), in place of the papers' alternating steps with two optimisers; both players share
the loop's learning rate and Adam betas (GANs usually want ``betas=(0.5, 0.9)``). Because
everything lives in the student, checkpoints, EMA and bitwise-exact resume come from the loop
unchanged. The pair's ``forward`` is the generator's, so a trained pair (or its EMA) is used
wherever its generator is.

A method using this module::

    @register_method
    @dataclass(frozen=True)
    class MyGAN(MethodBase):
        name: ClassVar[str] = "mygan"
        r1_gamma: float = 0.05

        def init_student(self, teacher_model, template):
            return check_pair(template, self.name)

        def loss(self, student, batch, ctx):
            G, D = student.generator, student.discriminator
            x_fake = G(...)                               # generator sample, with grad
            x_real = real.requires_grad_(self.r1_gamma > 0)
            d_real = D(x_real, c_noise)
            loss_D = (discriminator_loss(d_real, D(x_fake.detach(), c_noise))
                      + self.r1_gamma / 2 * r1_penalty(d_real, x_real))
            loss_G = generator_loss(frozen(D)(x_fake, c_noise))
            return loss_D + loss_G
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.functional import softplus

from ..nets.spec import buildable

__all__ = [
    "AdversarialPair",
    "check_pair",
    "discriminator_loss",
    "frozen",
    "generator_loss",
    "r1_penalty",
]


@buildable
class AdversarialPair(nn.Module):
    """A generator and its discriminator trained as one student (see the module docstring).
    ``pair(*args, **kw)`` is ``pair.generator(*args, **kw)``."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.generator(*args, **kwargs)


def check_pair(student: nn.Module, method: str) -> AdversarialPair:
    """``student`` if it is an :class:`AdversarialPair`, else a TypeError naming ``method``."""
    if not isinstance(student, AdversarialPair):
        raise TypeError(f"method {method!r} trains a generator and a discriminator: pass "
                        "AdversarialPair(generator, discriminator) as the student template; got "
                        f"{type(student).__name__}")
    return student


def frozen(module: nn.Module) -> Callable[..., Any]:
    """``module``'s forward with its parameters detached: gradients flow to the inputs (the
    generator's samples) but not into ``module`` (the discriminator in the generator's loss)."""
    params = {k: p.detach() for k, p in module.named_parameters()}
    return lambda *args, **kwargs: functional_call(module, params, args, kwargs)


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """``E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(x_fake)))]`` on logits, i.e.
    ``softplus(-d_real).mean() + softplus(d_fake).mean()`` (Goodfellow et al. 2014, Eq. 1)."""
    return softplus(-d_real).mean() + softplus(d_fake).mean()


def generator_loss(d_fake: Tensor) -> Tensor:
    """The non-saturating generator loss ``E[-log sigmoid(D(x_fake))]`` =
    ``softplus(-d_fake).mean()`` (Goodfellow et al. 2014, Sec. 3)."""
    return softplus(-d_fake).mean()


def r1_penalty(d_real: Tensor, x_real: Tensor) -> Tensor:
    """``E ||grad_x D(x)||^2`` over real samples (Mescheder et al. 2018, Eq. 9, without its
    ``gamma / 2``): ``d_real`` ``(batch,)`` logits computed from ``x_real``, which must require
    grad. Differentiable (``create_graph``), so the penalty trains the discriminator."""
    if not x_real.requires_grad:
        raise ValueError("r1_penalty needs the real samples to require grad: call "
                         "x_real.requires_grad_() before evaluating D on them")
    (grad,) = torch.autograd.grad(d_real.sum(), x_real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()
