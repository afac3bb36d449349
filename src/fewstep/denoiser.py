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
    "X0_COEFFICIENTS",
    "CFGDenoiser",
    "CountingDenoiser",
    "Denoiser",
    "ModelDenoiser",
    "NonFiniteError",
    "append_dims",
    "as_batch_sigma",
    "uniform_sigma",
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


# x0_hat = c_xt * x_t + c_out * out: each prediction's coefficients from (alpha, std, d_alpha,
# d_std) at the evaluation's time, on the network's own x_t (the sigma-space sample is
# x = x_t / alpha, so its coefficient is c_xt * alpha). In x_t no prediction divides by alpha
# except eps, so v and velocity stay finite at zero terminal SNR (alpha = 0).
def _coef_eps(a, s, da, ds):
    # x_t = alpha x0 + std eps: x0 = (x_t - std eps) / alpha.
    return 1.0 / a, -s / a


def _coef_x0(a, s, da, ds):
    return 0.0, 1.0


def _coef_v(a, s, da, ds):
    # v = alpha eps - std x0 (Salimans & Ho 2022, Sec. 4): x0 = (alpha x_t - std v) / (a^2 + s^2).
    n = a**2 + s**2
    return a / n, -s / n


def _coef_velocity(a, s, da, ds):
    # u = alpha' x0 + std' eps (Lipman et al. 2023; Liu et al. 2023); solve the 2x2 system.
    n = ds * a - s * da
    return ds / n, -s / n


X0_COEFFICIENTS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "eps": _coef_eps,
    "x0": _coef_x0,
    "v": _coef_v,
    "velocity": _coef_velocity,
}


def _prediction_map(coef: Callable[..., tuple[Any, Any]]) -> Callable[..., Tensor]:
    def x0_hat(out: Tensor, x_t: Tensor, a: Any, s: Any, da: Any, ds: Any) -> Tensor:
        c_xt, c_out = coef(a, s, da, ds)
        return c_xt * x_t + c_out * out
    return x0_hat


# Each prediction maps (network output, x_t, alpha, std, d_alpha, d_std) to x0_hat.
PREDICTIONS: dict[str, Callable[..., Tensor]] = {
    k: _prediction_map(c) for k, c in X0_COEFFICIENTS.items()}


def uniform_sigma(sigma: Tensor | float) -> float | None:
    """The common value of a per-row sigma when every row has it (a float, a 1-element
    tensor, an expanded scalar or equal entries), else None."""
    if not isinstance(sigma, Tensor):
        return float(sigma)
    if sigma.numel() == 1 or (sigma.ndim == 1 and sigma.stride(0) == 0):
        return float(sigma.reshape(-1)[0])
    if sigma.ndim != 1:
        return None
    values = sigma.tolist()
    return values[0] if values.count(values[0]) == len(values) else None


class ModelDenoiser(nn.Module):
    """Wrap ``model(x_t, t, **cond)`` predicting eps / x0 / v / velocity in ``process`` as
    a sigma-space denoiser (Karras et al. 2022, Table 1: scaling and time conditioning).

    ``time_fn`` maps the process time to what the network takes (identity by default). The
    schedule look-ups of a noise level every row shares (what every solver asks) are computed
    once in float64 and cached per (sigma, batch, dtype, device), so a call costs the network
    and two fused element-wise operations: ``x_t = alpha x`` and ``x0 = c_x x + c_out out``.
    """

    _CACHE_SIZE = 4096

    def __init__(self, model: Callable[..., Tensor], process: NoiseProcess,
                 prediction: str = "eps", time_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of "
                             f"{sorted(PREDICTIONS)}")
        self.model, self.process, self.prediction = model, process, prediction
        self.time_fn = time_fn or (lambda t: t)
        self._cache: dict[tuple[Any, ...], tuple[Tensor, float, float, float]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("process", "prediction", "time_fn") and "_cache" in self.__dict__:
            self._cache.clear()  # the cached coefficients depend on these
        super().__setattr__(name, value)

    def _schedule(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(t, alpha, c_x, c_out) at float64 ``sigma``."""
        t = self.process.t(sigma)
        a, s = self.process.alpha(t), self.process.std(t)
        da = ds = None
        if self.prediction == "velocity":
            da, ds = self.process.d_alpha_dt(t), self.process.d_std_dt(t)
        c_xt, c_out = X0_COEFFICIENTS[self.prediction](a, s, da, ds)
        return t, a, torch.as_tensor(c_xt * a, dtype=torch.float64), c_out

    def _uniform(self, value: float, x: Tensor) -> tuple[Tensor, float, float, float]:
        """Cached network time (a ``(batch,)`` tensor) and Python-float alpha, c_x, c_out."""
        key = (value, x.shape[0], x.dtype, x.device)
        hit = self._cache.get(key)
        if hit is None:
            t, a, c_x, c_out = self._schedule(torch.tensor([value], dtype=torch.float64))
            t_net = self.time_fn(t.to(device=x.device, dtype=x.dtype).expand(x.shape[0]))
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            hit = self._cache[key] = (t_net, float(a), float(c_x), float(c_out))
        return hit

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        value = uniform_sigma(sigma)
        if value is None or (isinstance(sigma, Tensor) and sigma.ndim
                             and sigma.shape != (x.shape[0],)):
            return self._rowwise(x, as_batch_sigma(sigma, x), cond)
        t_net, a, c_x, c_out = self._uniform(value, x)
        out = self.model(x if a == 1.0 else x * a, t_net, **cond)
        if c_x == 1.0:
            return torch.add(x, out, alpha=c_out)
        if c_x == 0.0:
            return out if c_out == 1.0 else out * c_out
        return torch.add(out * c_out, x, alpha=c_x)

    def _rowwise(self, x: Tensor, sigma: Tensor, cond: dict[str, Any]) -> Tensor:
        """A batch of distinct noise levels: the schedule per row, in float64."""
        t, a, c_x, c_out = self._schedule(sigma.to(torch.float64))
        a_, c_x, c_out = (append_dims(torch.as_tensor(v).to(x.dtype), x.ndim)
                          for v in (a, c_x, c_out))
        out = self.model(a_ * x, self.time_fn(t.to(x.dtype)), **cond)
        return c_x * x + c_out * out


class CFGDenoiser(nn.Module):
    """Classifier-free guidance ``D_u + w (D_c - D_u)`` (Ho & Salimans 2022, Eq. 6).

    The conditional and unconditional calls share one batched call when every
    conditioning value is a tensor of matching shape; otherwise two calls are made.

    ``scale`` is a float, or ``None`` for a per-row scale passed at each call as the keyword
    ``w`` (a ``(batch,)`` tensor, kept from the network): the CFG-augmented PF-ODE of latent
    consistency distillation, whose w varies over a batch (Luo et al. 2023, Eq. 10). An
    ``uncond`` value that is a number (e.g. the null label -1) is filled to the conditional
    value's shape at each call, so one wrapper serves any batch. Each input row costs two
    network rows (``rows_per_sample``, read by :class:`CountingDenoiser`).
    """

    rows_per_sample = 2

    def __init__(self, denoiser: Denoiser, scale: float | None, uncond: dict[str, Any]):
        super().__init__()
        self.denoiser, self.uncond = denoiser, dict(uncond)
        self.scale = None if scale is None else float(scale)

    def _batchable(self, cond: dict[str, Any], uncond: dict[str, Any]) -> bool:
        if set(cond) != set(uncond):
            return False
        return all(isinstance(cond[k], Tensor) and isinstance(uncond[k], Tensor)
                   and cond[k].shape == uncond[k].shape for k in cond)

    def _uncond(self, cond: dict[str, Any]) -> dict[str, Any]:
        return {k: torch.full_like(cond[k], v) if isinstance(v, int | float) and k in cond
                and isinstance(cond[k], Tensor) else v for k, v in self.uncond.items()}

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = as_batch_sigma(sigma, x)
        if self.scale is None:
            if "w" not in cond:
                raise ValueError("CFGDenoiser(scale=None) takes the per-row guidance scale as "
                                 "the keyword w= (a (batch,) tensor)")
            w: Tensor | float = append_dims(torch.as_tensor(cond.pop("w"), dtype=x.dtype,
                                                            device=x.device), x.ndim)
        else:
            w = self.scale
        uncond = self._uncond(cond)
        if self._batchable(cond, uncond) and cond:
            both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
            d_u, d_c = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                     **both).chunk(2)
        else:
            d_u = self.denoiser(x, sigma, **uncond)
            d_c = self.denoiser(x, sigma, **cond)
        return d_u + w * (d_c - d_u)


class CountingDenoiser(nn.Module):
    """Counts calls (``nfe``) and evaluated rows (``rows``; ``rows / batch`` is the NFE per
    sample, which classifier-free guidance doubles whether it batches or not: a wrapped
    denoiser's ``rows_per_sample``, 2 for :class:`CFGDenoiser`, multiplies its rows)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser, self.nfe, self.rows = denoiser, 0, 0
        self.sigmas: list[float] = []

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        self.nfe += 1
        self.rows += x.shape[0] * getattr(self.denoiser, "rows_per_sample", 1)
        s = sigma if isinstance(sigma, Tensor) else as_batch_sigma(sigma, x)
        self.sigmas.append(float(s.reshape(-1)[0]))
        return self.denoiser(x, s, **cond)
