"""A neural operator over the time axis of a PF-ODE trajectory (Zheng et al. 2023, DSNO/DFNO).

The network maps the start noise ``z`` (at ``sigma_max``) to the whole solution trajectory
``u(sigma_1), ..., u(sigma_K)`` in one evaluation, the last point (``sigma_K = 0``) being the
sample. Layers that act on each time slot alone (a residual MLP block with an embedding of the
slot's noise level) alternate with temporal convolution layers

    (T u)(t) = u(t) + act((K u)(t)),    (K u)(t) = F^{-1}(R . F u)(t) + b,

whose kernel ``R`` lives in Fourier space on the first ``modes`` frequencies of the slot axis
(Zheng et al. 2023, Sec. 4 and Fig. 1; Li et al. 2021, Eq. 4-5 for the Fourier layer).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import NoiseEmbedding, _Block
from .spec import build_model, buildable, model_spec

__all__ = ["FourierTemporalConv", "FourierTemporalLayer", "TrajectoryOperator"]


class FourierTemporalConv(nn.Module):
    """Circular convolution along the last axis whose kernel is given by its first ``modes``
    Fourier coefficients ``R`` (complex, ``(c_in, c_out, modes)``, stored as real pairs):
    ``(K u)_o(t) = irfft_t( sum_i R[i, o, m] rfft(u_i)[m] )`` with the coefficients above
    ``modes`` zero. Input ``(..., c_in, K)``, output ``(..., c_out, K)``; any length ``K`` (the
    frequencies above ``K // 2`` are dropped). Computed in float32 at least."""

    def __init__(self, c_in: int, c_out: int, modes: int):
        super().__init__()
        if modes < 1:
            raise ValueError(f"modes must be >= 1; got {modes}")
        self.modes = modes
        scale = 1 / math.sqrt(c_in * modes)
        self.weight = nn.Parameter(scale * torch.randn(2, c_in, c_out, modes))

    def kernel(self, length: int) -> Tensor:
        """The equivalent real kernel ``k[i, o, s]`` of length ``length``: ``(K u)_o(t) =
        sum_i sum_s k[i, o, s] u_i((t - s) mod length)``."""
        m = min(self.modes, length // 2 + 1)
        R = torch.complex(self.weight[0, ..., :m], self.weight[1, ..., :m])
        return torch.fft.irfft(R, n=length)

    def forward(self, u: Tensor) -> Tensor:
        length = u.shape[-1]
        m = min(self.modes, length // 2 + 1)
        dtype = torch.promote_types(u.dtype, torch.float32)  # no FFT in half precision
        U = torch.fft.rfft(u.to(dtype), dim=-1)[..., :m]
        w = self.weight[..., :m].to(dtype)
        R = torch.complex(w[0], w[1])
        V = torch.einsum("...im,iom->...om", U, R)
        return torch.fft.irfft(V, n=length, dim=-1).to(u.dtype)


class FourierTemporalLayer(nn.Module):
    """``(T u)(t) = u(t) + SiLU((K u)(t) + b)`` over ``(..., channels, K)``, with ``K`` a
    :class:`FourierTemporalConv` and ``b`` a per-channel bias (Zheng et al. 2023, Eq. 9)."""

    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.conv = FourierTemporalConv(channels, channels, modes)
        self.bias = nn.Parameter(torch.zeros(channels, 1))
        self.act = nn.SiLU()

    def forward(self, u: Tensor) -> Tensor:
        return u + self.act(self.conv(u) + self.bias)


@buildable
class TrajectoryOperator(nn.Module):
    """Noise ``z ~ N(0, sigma_max^2 I)`` -> the PF-ODE trajectory at the decreasing noise levels
    ``sigmas`` (the last one 0, the sample), in one evaluation.

    Per slot ``k`` the output is ``u_k = c_skip(sigma_k) z + sigma_data G_k(z / sigma_max)``
    with ``c_skip(sigma) = sqrt(sigma^2 + sd^2) / sqrt(sigma_max^2 + sd^2)``, the exact flow of
    data ``N(0, sd^2 I)`` (so the network learns the departure from a Gaussian data set, as
    EDM's c_skip does). ``G``: a linear lift of ``z / sigma_max`` to ``width`` channels shared by
    all slots, then ``depth`` pairs of (a per-slot residual MLP block conditioned on an
    embedding of ``ln(sigma_k) / 4``, a :class:`FourierTemporalLayer` over the slots with
    ``modes`` Fourier modes), then a zero-initialised linear projection.

    Called as ``op(z)`` it returns the trajectory, shape ``(batch, K, *shape)``; called as a
    denoiser ``op(z, sigma_max)`` it returns the endpoint ``u_K`` (a one-step student:
    ``x0 = D(sigma_max z, sigma_max)``). ``sigmas`` None builds an operator without a grid (a
    template for :class:`~fewstep.distill.operator.OperatorDistillation`, which sets it);
    :meth:`with_sigmas` gives the same weights on another grid.

    Raises ValueError for an empty shape, a grid that is not strictly decreasing, not below
    ``sigma_max`` or not ending at 0, and (when called) for a noise level other than
    ``sigma_max``, conditioning, or a missing grid.
    """

    def __init__(self, shape: Sequence[int], sigmas: Sequence[float] | None = None,
                 sigma_max: float = 80.0, width: int = 128, depth: int = 2, modes: int = 4,
                 emb_dim: int = 64, sigma_data: float = 0.5):
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be a non-empty sample shape; got {list(shape)}")
        self.sigma_max, self.sigma_data = float(sigma_max), float(sigma_data)
        self.sigmas = None if sigmas is None else tuple(float(s) for s in sigmas)
        if self.sigmas is not None:
            s = self.sigmas
            if (not s or s[-1] != 0 or s[0] >= self.sigma_max
                    or any(a <= b for a, b in itertools.pairwise(s))):
                raise ValueError(f"sigmas must decrease strictly from below sigma_max="
                                 f"{self.sigma_max:g} to 0; got {list(s)}")
        dim = math.prod(self.shape)
        self.embed = NoiseEmbedding(emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.temporal = nn.ModuleList(FourierTemporalLayer(width, modes) for _ in range(depth))
        last = nn.Linear(width, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), last)

    def c_skip(self, sigma: Tensor) -> Tensor:
        """``sqrt(sigma^2 + sd^2) / sqrt(sigma_max^2 + sd^2)``: the skip weight of ``z``."""
        sd2 = self.sigma_data**2
        return (sigma**2 + sd2).sqrt() / math.sqrt(self.sigma_max**2 + sd2)

    def trajectory(self, z: Tensor) -> Tensor:
        """``(batch, *shape)`` noise at ``sigma_max`` -> ``(batch, K, *shape)`` trajectory."""
        if self.sigmas is None:
            raise ValueError("this TrajectoryOperator has no sigma grid: train it with the "
                             "'dfno' method (or build it with sigmas=[..., 0])")
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"expected samples of shape {list(self.shape)}; got "
                             f"{list(z.shape[1:])}")
        s = torch.tensor(self.sigmas, dtype=torch.float64)
        e = self.embed(0.25 * s.clamp(min=1e-3).log().float().to(z.device))  # (K, emb_dim)
        z_flat = z.flatten(1)
        h = self.inp((z_flat / self.sigma_max).to(self.inp.weight.dtype))[:, None, :]
        h = h.expand(-1, len(s), -1)  # (batch, K, width)
        for block, temporal in zip(self.blocks, self.temporal, strict=True):
            h = block(h, e)
            h = temporal(h.transpose(1, 2)).transpose(1, 2)
        G = self.out(h).to(z.dtype)
        u = self.c_skip(s).to(z)[None, :, None] * z_flat[:, None, :] + self.sigma_data * G
        return u.reshape(z.shape[0], len(s), *self.shape)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None, **cond: Tensor) -> Tensor:
        """``op(z)``: the trajectory; ``op(z, sigma_max)``: its endpoint (a denoiser face)."""
        if cond:
            raise ValueError(f"a TrajectoryOperator takes no conditioning; got {sorted(cond)}")
        if sigma is None:
            return self.trajectory(x)
        sig = torch.as_tensor(sigma, dtype=torch.float64)
        if not torch.allclose(sig, torch.tensor(self.sigma_max, dtype=torch.float64),
                              rtol=1e-6, atol=0):
            raise ValueError(f"a TrajectoryOperator maps noise at sigma_max={self.sigma_max:g} "
                             f"to its sample (one step); called at sigma="
                             f"{sig.flatten()[0].item():g}")
        return self.trajectory(x)[:, -1]

    def with_sigmas(self, sigmas: Sequence[float]) -> TrajectoryOperator:
        """The same weights on the grid ``sigmas`` (a new module; the Fourier kernel and the
        noise embedding do not depend on the number of slots)."""
        spec = model_spec(self)
        assert spec is not None  # a buildable class
        new = build_model({**spec, "kwargs": {**spec["kwargs"], "sigmas": list(sigmas)}})
        new.load_state_dict(self.state_dict())
        return new.to(next(self.parameters()))  # type: ignore[return-value]
