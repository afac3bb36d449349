"""diffusers' schedulers as bench methods (``diffusers:NAME``) on the same sigma-space
denoiser, start noise and sigma range as fewstep's solvers.

The teacher is presented to diffusers as a discrete-time eps-prediction model: a 1000-step
VP table whose sigmas run log-uniformly from the teacher's sigma_min to sigma_max (passed as
``trained_betas``), with ``use_karras_sigmas=True`` where the scheduler supports it, so both
sides walk the same Karras sigmas. The model is called at the timestep diffusers chooses
(rounded by some schedulers), exactly as a discrete-time network would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._registry import Registry, UnknownNameError
from ..denoiser import Denoiser
from ..process import VPDiscrete

__all__ = ["NOTES", "PEERS", "PeerSpec", "PreparedPeer", "UnreachableNFEError", "available",
           "run_peer", "vp_table"]


class UnreachableNFEError(ValueError):
    """The peer cannot spend exactly the requested NFE."""


@dataclass(frozen=True)
class PeerSpec:
    """A diffusers scheduler class with its configuration and NFE -> steps map."""

    cls_name: str
    config: dict[str, Any]
    sigma_space: bool = False  # Euler/Heun keep x in sigma-space; the rest in VP space
    steps: Callable[[int], int] = lambda nfe: nfe
    min_nfe: int = 1


def _heun_steps(nfe: int) -> int:
    if nfe % 2 == 0:
        raise UnreachableNFEError(f"diffusers Heun spends 2N-1 evaluations; nfe={nfe} is even")
    return (nfe + 1) // 2


_KARRAS = {"use_karras_sigmas": True}
PEERS: Registry[PeerSpec] = Registry("peer", {
    "ddim": PeerSpec("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False,
                                       "set_alpha_to_one": True}),
    "dpmpp_2m": PeerSpec("DPMSolverMultistepScheduler",
                         {**_KARRAS, "algorithm_type": "dpmsolver++", "solver_order": 2,
                          "final_sigmas_type": "zero"}),
    "dpmpp_3m": PeerSpec("DPMSolverMultistepScheduler",
                         {**_KARRAS, "algorithm_type": "dpmsolver++", "solver_order": 3,
                          "final_sigmas_type": "zero"}),
    "unipc": PeerSpec("UniPCMultistepScheduler",
                      {**_KARRAS, "solver_order": 3, "solver_type": "bh2",
                       "final_sigmas_type": "zero"}),
    "deis": PeerSpec("DEISMultistepScheduler", {**_KARRAS, "solver_order": 3}),
    "euler": PeerSpec("EulerDiscreteScheduler", dict(_KARRAS), sigma_space=True),
    "heun": PeerSpec("HeunDiscreteScheduler", dict(_KARRAS), sigma_space=True,
                     steps=_heun_steps, min_nfe=1),
})


def available() -> list[str]:
    """Peer method names as the bench spells them."""
    return [f"diffusers:{k}" for k in PEERS]


def vp_table(sigma_min: float, sigma_max: float, T: int = 1000) -> Tensor:
    """Betas whose sigma-space table ``sqrt((1-ab)/ab)`` is log-uniform on [min, max]."""
    sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), T, dtype=torch.float64)
    ab = 1 / (1 + sigmas**2)
    return 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])


def _eps_model(D: Denoiser, proc: VPDiscrete) -> Callable[[Tensor, Tensor], Tensor]:
    def eps(x_vp: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_vp.shape[0])
        sigma = proc.sigma(t).to(x_vp)
        x = x_vp * (1 + sigma**2).sqrt().reshape(-1, *[1] * (x_vp.ndim - 1))
        s = sigma.reshape(-1, *[1] * (x_vp.ndim - 1))
        return (x - D(x, sigma)) / s

    return eps


class PreparedPeer:
    """A diffusers scheduler built and set to its timesteps: a peer's whole set-up, done.

    Construction (scheduler and ``set_timesteps``) is the peer's set-up; the bench times it
    apart from sampling, as it times fewstep's ``plan``. :meth:`model` is the teacher as
    diffusers sees it (the sigma-space denoiser behind a discrete-time eps adapter); the
    bench times the adapter as network time on both sides of a comparison. :meth:`sample`
    runs the scheduler once: a scheduler carries state between steps, so a prepared peer
    samples once only.
    """

    def __init__(self, name: str, nfe: int, sigma_min: float, sigma_max: float):
        """Build peer ``name`` for ``nfe`` evaluations over [sigma_min, sigma_max]. Raises
        ValueError for an unknown peer, UnreachableNFEError for a budget it cannot spend."""
        import diffusers

        key = name.removeprefix("diffusers:")
        if key not in PEERS:
            raise UnknownNameError(f"unknown peer {name!r}; available: {', '.join(available())}")
        self.name, self.spec, self.sigma_max = name, PEERS[key], sigma_max
        if nfe < self.spec.min_nfe:
            raise UnreachableNFEError(f"nfe={nfe} is below the minimum of {self.spec.min_nfe} "
                                      f"for {name}")
        betas = vp_table(sigma_min, sigma_max)
        self.process = VPDiscrete(betas)
        self.scheduler = getattr(diffusers, self.spec.cls_name)(
            num_train_timesteps=len(betas), trained_betas=betas.numpy(), **self.spec.config)
        self.steps = self.spec.steps(nfe)  # solver steps (Heun: one per 2 scheduler calls)
        self.scheduler.set_timesteps(self.steps)
        self.used = False

    def model(self, denoiser: Denoiser) -> Callable[[Tensor, Tensor], Tensor]:
        """``eps(x_vp, t)``: the sigma-space ``denoiser`` as a discrete-time eps model."""
        return _eps_model(denoiser, self.process)

    def sample(self, eps: Callable[[Tensor, Tensor], Tensor], x: Tensor) -> Tensor:
        """Sample from sigma-space start noise ``x`` (at sigma_max) with the eps model ``eps``
        (see :meth:`model`); returns the sigma = 0 sample. Raises RuntimeError on reuse."""
        if self.used:
            raise RuntimeError(f"{self.name}: a prepared peer samples once; prepare another")
        self.used = True
        sched = self.scheduler
        sample = x if self.spec.sigma_space else x / math.sqrt(1 + self.sigma_max**2)
        for t in sched.timesteps:
            model_in = sched.scale_model_input(sample, t)
            sample = sched.step(eps(model_in, t), t, sample).prev_sample
        return sample


def run_peer(name: str, denoiser: Denoiser, x: Tensor, nfe: int, sigma_min: float,
             sigma_max: float) -> Tensor:
    """Sample with diffusers scheduler ``name`` from sigma-space start noise ``x`` (at
    ``sigma_max``), spending ``nfe`` evaluations; returns the sigma = 0 sample."""
    peer = PreparedPeer(name, nfe, sigma_min, sigma_max)
    return peer.sample(peer.model(denoiser), x)


# What a reader of the report should know about each peer as configured here.
NOTES: dict[str, str] = {
    "ddim": "diffusers' DDIM has no Karras option; it runs its own 'trailing' timesteps "
            "(same sigma_max, different spacing from fewstep's Karras plan)",
    "dpmpp_2m": "with use_karras_sigmas diffusers rounds the timesteps it feeds the model, so "
                "the network sees up to ~0.5% different noise levels than the solver assumes",
    "dpmpp_3m": "with use_karras_sigmas diffusers rounds the timesteps it feeds the model, so "
                "the network sees up to ~0.5% different noise levels than the solver assumes",
    "unipc": "with use_karras_sigmas diffusers rounds the timesteps it feeds the model; its "
             "bh1 variant returns NaN when the last sigma is 0 (so the bench runs bh2)",
    "deis": "diffusers' DEIS with Karras sigmas repeats the last sigma, so its final step "
            "has zero length: N evaluations make N-1 real steps ending at sigma_min (no final "
            "denoising), and at NFE 1 it returns the start noise rescaled to VP, unsampled; it "
            "also rounds Karras timesteps. Compare with fewstep's deis_logrho",
}
