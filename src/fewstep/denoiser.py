"""The one interface: a denoiser ``D(x, sigma, **cond) -> x0_hat`` in sigma-space.

``x = x0 + sigma * eps`` (Karras et al. 2022, Eq. 2); ``sigma`` is a tensor of shape
``(batch,)`` (a 0-d tensor or float is broadcast). Adapters turn networks that predict
eps, x0, v or a flow velocity in some :class:`~fewstep.process.NoiseProcess` into a
denoiser; :class:`CFGDenoiser` and :class:`CountingDenoiser` are denoisers too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .process import NoiseProcess

__all__ = [
    "PREDICTIONS",
    "CFGDenoiser",
    "CountingDenoiser",
    "Denoiser",
    "ModelDenoiser",
    "NonFiniteError",
    "append_dims",
    "as_batch_sigma",
]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, **cond) -> x0_hat`` with ``x0_hat.shape == x.shape``."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor: ...


class NonFiniteError(FloatingPointError):
    """A denoiser returned NaN or inf."""


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so ``v`` broadcasts against an ``ndim`` tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Return sigma as a ``(batch,)`` tensor on x's device and dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma has shape {tuple(sigma.shape)}; expected () or ({x.shape[0]},)")
    return sigma


# Each prediction maps (network output, x_t, alpha, std, d_alpha, d_std) to x0_hat.
def _x0_from_eps(out, x_t, a, s, da, ds):
    return (x_t - s * out) / a


def _x0_from_x0(out, x_t, a, s, da, ds):
    return out


def _x0_from_v(out, x_t, a, s, da, ds):
    # v = alpha eps - std x0 (Salimans & Ho 2022, Sec. 4); solve with x_t = alpha x0 + std eps.
    return (a * x_t - s * out) / (a**2 + s**2)


def _x0_from_velocity(out, x_t, a, s, da, ds):
    # u = alpha' x0 + std' eps (Lipman et al. 2023; Liu et al. 2023); solve the 2x2 system.
    return (ds * x_t - s * out) / (ds * a - s * da)


PREDICTIONS: dict[str, Callable[..., Tensor]] = {
    "eps": _x0_from_eps,
    "x0": _x0_from_x0,
    "v": _x0_from_v,
    "velocity": _x0_from_velocity,
}


class ModelDenoiser(nn.Module):
    """Wrap ``model(x_t, t, **cond)`` predicting eps / x0 / v / velocity in ``process`` as
    a sigma-space denoiser (Karras et al. 2022, Table 1: scaling and time conditioning).

    ``time_fn`` maps the process time to what the network takes (identity by default).
    """

    def __init__(self, model: Callable[..., Tensor], process: NoiseProcess,
                 prediction: str = "eps", time_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of "
                             f"{sorted(PREDICTIONS)}")
        self.model, self.process, self.prediction = model, process, prediction
        self.time_fn = time_fn or (lambda t: t)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_batch_sigma(sigma, x)
        t = self.process.t(sigma.to(torch.float64))
        a, s = self.process.alpha(t), self.process.std(t)
        da = ds = None
        if self.prediction == "velocity":
            da, ds = self.process.d_alpha_dt(t), self.process.d_std_dt(t)
            da, ds = (append_dims(v.to(x.dtype), x.ndim) for v in (da, ds))
        a, s = (append_dims(v.to(x.dtype), x.ndim) for v in (a, s))
        x_t = a * x
        out = self.model(x_t, self.time_fn(t.to(x.dtype)), **cond)
        return PREDICTIONS[self.prediction](out, x_t, a, s, da, ds)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance ``D_u + w (D_c - D_u)`` (Ho & Salimans 2022, Eq. 6).

    The conditional and unconditional calls share one batched call when every
    conditioning value is a tensor of matching shape; otherwise two calls are made.
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: dict[str, Any]):
        super().__init__()
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), dict(uncond)

    def _batchable(self, cond: dict[str, Any]) -> bool:
        if set(cond) != set(self.uncond):
            return False
        return all(isinstance(cond[k], Tensor) and isinstance(self.uncond[k], Tensor)
                   and cond[k].shape == self.uncond[k].shape for k in cond)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_batch_sigma(sigma, x)
        if self._batchable(cond) and cond:
            both = {k: torch.cat([self.uncond[k], cond[k]]) for k in cond}
            d_u, d_c = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                     **both).chunk(2)
        else:
            d_u = self.denoiser(x, sigma, **self.uncond)
            d_c = self.denoiser(x, sigma, **cond)
        return d_u + self.scale * (d_c - d_u)


class CountingDenoiser(nn.Module):
    """Counts calls (``nfe``) and evaluated rows (``rows``; ``rows / batch`` is the NFE per
    sample, which classifier-free guidance doubles whether it batches or not)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser, self.nfe, self.rows = denoiser, 0, 0
        self.sigmas: list[float] = []

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        self.nfe += 1
        self.rows += x.shape[0]
        s = sigma if isinstance(sigma, Tensor) else as_batch_sigma(sigma, x)
        self.sigmas.append(float(s.reshape(-1)[0]))
        return self.denoiser(x, s, **cond)
