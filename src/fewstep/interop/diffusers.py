"""diffusers models as fewstep denoisers.

A diffusers network is a function ``model(x_t, timestep, **cond)`` of a *process-space* sample
``x_t = alpha(t) x0 + std(t) eps`` and a scheduler-specific timestep; its scheduler config
names the noise process and what the network predicts. :class:`DiffusersDenoiser` turns it
into ``D(x, sigma, **cond) -> x0_hat`` with ``x = x_t / alpha`` and ``sigma = std / alpha``
(Karras et al. 2022, Eq. 4-6), so every fewstep solver runs on it unchanged.

Supported scheduler configs:

- **Discrete VP (DDPM-style)**: any config with ``beta_schedule`` in {linear, scaled_linear,
  squaredcos_cap_v2} or ``trained_betas`` (DDPM, DDIM, PNDM, DPMSolver*, UniPC, DEIS, Euler*,
  Heun, LMS, LCM, TCD, ...). The network takes the DDPM index ``t`` in ``[0, T-1]``; fewstep
  calls it at fractional ``t`` between table entries (log-sigma interpolated, as k-diffusion).
- **Flow matching**: ``FlowMatch*`` schedulers, or ``use_flow_sigmas=True``. ``x_t = (1-t) x0 +
  t eps`` with velocity ``eps - x0`` (Lipman et al. 2023; Liu et al. 2023); the network takes
  ``timestep = T t``. ``shift`` (static or dynamic) only moves the sampler's grid in ``t``, not
  the network, so the denoiser ignores it; sigma-space cannot hold ``t = 1`` (sigma = inf), so
  the process range is ``t <= 1 - 1/T``.
- Predictions ``epsilon``, ``v_prediction``, ``sample``, ``flow_prediction`` map to fewstep's
  ``eps``, ``v``, ``x0``, ``velocity``. Learned-variance networks (twice the input's channels:
  improved DDPM, DiT) have their variance half dropped.

- **Zero terminal SNR** (``rescale_betas_zero_snr=True``, Lin et al. 2024): the last
  timestep has alpha = 0, sigma = inf. The finite process is the table without its last entry
  (``t <= T - 2``); the terminal evaluation is :meth:`DiffusersDenoiser.terminal_step` (the
  network sees pure noise at its last timestep, then one DDIM step to a finite sigma), as
  trailing-spacing pipelines do. Flow matching has the same terminal point at ``t = 1``.

A scheduler config is read *complete* (:func:`source_config`): the values it stores over the
defaults of the scheduler class it names, so ``LCMScheduler()``'s scaled-linear betas are kept
whether or not diffusers marked them as defaults. :func:`diffusers_process` turns it into the
network map both :class:`DiffusersDenoiser` and the scheduler use.

Unsupported, with an error naming the value: other beta schedules (sigmoid, exp, laplace),
EDM-style continuous timesteps (``timestep_type="continuous"``, EDM* schedulers: c_in/c_noise
preconditioning), VE/score-SDE schedulers, and any other prediction type; an eps-prediction
network cannot be evaluated at zero SNR (x0 = (x_t - eps) / 0).
Sampler-side options (clip_sample, thresholding, timestep_spacing, steps_offset, karras
sigmas, ...) describe a sampler, not the network, and are ignored here.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..denoiser import PREDICTIONS, CFGDenoiser, append_dims
from ..process import NoiseProcess, RectifiedFlow, VPDiscrete, ddpm_betas

__all__ = [
    "PREDICTION_TYPES",
    "Coefficients",
    "DiffusersDenoiser",
    "DiffusersProcess",
    "diffusers_process",
    "drop_learned_variance",
    "flow_shift",
    "load_denoiser",
    "prediction_from_config",
    "process_from_scheduler_config",
    "process_kind",
    "scheduler_class",
    "source_config",
    "time_scale",
]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0",
                    "flow_prediction": "velocity", "flow": "velocity"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine"}
PROCESS_KINDS = ("vp_discrete", "flow")
_META = ("_use_default_values", "_diffusers_version")  # bookkeeping, not options


_DEFAULTS: dict[str, dict[str, Any]] = {}


def _init_defaults(cls: Any) -> dict[str, Any]:
    """The keyword defaults of a scheduler class's ``__init__`` (cached per class), without
    the arguments the class keeps out of its config (``ignore_for_config``)."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _DEFAULTS:
        params = inspect.signature(cls.__init__).parameters
        ignore = {"self", *(getattr(cls, "ignore_for_config", None) or ())}
        _DEFAULTS[key] = {k: p.default for k, p in params.items() if k not in ignore
                          and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return _DEFAULTS[key]


@functools.cache
def _diffusers_schedulers() -> dict[str, type]:
    import diffusers

    return {n: getattr(diffusers, n) for n in dir(diffusers) if n.endswith("Scheduler")
            and isinstance(getattr(diffusers, n, None), type)}


def scheduler_class(config: Mapping[str, Any]) -> Any:
    """The scheduler class a config belongs to: the one its ``_class_name`` names, else the
    unique diffusers scheduler whose ``__init__`` takes exactly the config's keys (a config
    read from a live scheduler, ``sched.config``, carries no class name but holds every
    argument); None when neither identifies one (``*Parallel`` twins are not counted)."""
    from .scheduler import FewstepScheduler

    name = config.get("_class_name")
    known = {**_diffusers_schedulers(), "FewstepScheduler": FewstepScheduler}
    if name:
        return known.get(str(name))
    keys = {k for k in config if not k.startswith("_")}
    found = [c for n, c in known.items() if "Parallel" not in n
             and set(_init_defaults(c)) == keys]
    return found[0] if len(found) == 1 else None


def source_config(config: Any) -> dict[str, Any]:
    """The complete config of a scheduler: a mapping, a scheduler (its ``.config``) or a path
    to a config JSON / directory, with the defaults of the class it belongs to
    (:func:`scheduler_class`) filled in under its stored values and ``_class_name`` set where
    the class is known. diffusers' ``from_config`` drops the values a scheduler was built with
    by default (``_use_default_values``); this keeps them."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "scheduler_config.json" if path.is_dir() else path
        config = json.loads(path.read_text())
    elif hasattr(config, "config") and not isinstance(config, Mapping):  # a scheduler object
        config = {**config.config, "_class_name": type(config).__name__}
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a scheduler config mapping, scheduler or path; got "
                        f"{type(config).__name__}")
    stored = {k: v for k, v in config.items() if k not in _META}
    cls = scheduler_class(stored)
    if cls is None:
        return stored
    return {**_init_defaults(cls), **stored, "_class_name": cls.__name__}


def process_kind(config: Any) -> str:
    """The noise process a scheduler config describes: "vp_discrete" or "flow"."""
    config = source_config(config)
    name = str(config.get("_class_name") or "")
    if config.get("noise_process") is not None:  # a FewstepScheduler config
        kind = config["noise_process"]
        if kind not in PROCESS_KINDS:
            raise ValueError(f"unknown noise_process {kind!r}; expected one of {PROCESS_KINDS}")
        return str(kind)
    if name.startswith("FlowMatch") or config.get("use_flow_sigmas"):
        return "flow"
    if name.startswith("EDM") or config.get("timestep_type") == "continuous" \
            or "sigma_data" in config:
        raise ValueError(f"scheduler {name or 'config'} uses EDM-style continuous timesteps "
                         "(c_noise = log(sigma)/4 with c_in input scaling); not supported")
    if config.get("trained_betas") is not None or "beta_schedule" in config:
        return "vp_discrete"
    if not name and "shift" in config:  # an unsaved FlowMatch config carries no class name
        return "flow"
    raise ValueError(f"scheduler config {name or dict(config)!r} is neither a DDPM-style "
                     "discrete VP config (beta_schedule / trained_betas) nor flow matching "
                     "(FlowMatch* or use_flow_sigmas); supported: " + ", ".join(PROCESS_KINDS))


def time_scale(config: Any) -> float:
    """Network timestep per unit of process time: 1 for DDPM indices, T for flow matching."""
    config = source_config(config)
    return float(config.get("num_train_timesteps", 1000)) if process_kind(config) == "flow" \
        else 1.0


def _shift(shift: float, t: float) -> float:
    return shift * t / (1 + (shift - 1) * t)


def _betas(config: Mapping[str, Any]) -> Tensor:
    """float64 betas of a discrete VP config, rescaled to zero terminal SNR if it says so
    (Lin et al. 2024, Alg. 1, diffusers' own implementation)."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    else:
        schedule = config.get("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f"unsupported beta_schedule {schedule!r}; supported: "
                             f"{sorted(BETA_SCHEDULES)} or trained_betas")
        kw = {}
        if schedule != "squaredcos_cap_v2":
            kw = {"beta_start": float(config.get("beta_start", 1e-4)),
                  "beta_end": float(config.get("beta_end", 0.02))}
        betas = ddpm_betas(BETA_SCHEDULES[schedule], T, **kw)
    if config.get("rescale_betas_zero_snr"):
        from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

        betas = rescale_zero_terminal_snr(betas)
    return betas


def _vp_process(config: Mapping[str, Any]) -> VPDiscrete:
    betas = _betas(config)
    # zero terminal SNR: beta_T = 1 (alpha_bar = 0, sigma = inf) is the terminal point, kept
    # out of the finite process; dropping it leaves every other alpha_bar unchanged
    return VPDiscrete(betas[:-1] if config.get("rescale_betas_zero_snr") else betas)


def _flow_process(config: Mapping[str, Any]) -> RectifiedFlow:
    T = int(config.get("num_train_timesteps", 1000))
    shift = 1.0 if config.get("use_dynamic_shifting") else float(
        config.get("shift", config.get("flow_shift", 1.0)))  # UniPC/DPM-Solver: flow_shift
    return RectifiedFlow(t_min=_shift(shift, 1 / T), t_max=1 - 1 / T)


def process_from_scheduler_config(config: Any) -> NoiseProcess:
    """The finite fewstep noise process of a scheduler config (see the module docstring)."""
    return diffusers_process(config).process


def prediction_from_config(config: Any) -> str:
    """fewstep prediction name (eps / v / x0 / velocity) of a config's ``prediction_type``;
    flow-matching schedulers without one predict the velocity."""
    config = source_config(config)
    default = "flow_prediction" if process_kind(config) == "flow" else "epsilon"
    kind = config.get("prediction_type") or default
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {kind!r}; supported: "
                         f"{sorted(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


def flow_shift(n: int, process: NoiseProcess, *, shift: float = 1.0,
               final_zero: bool = True) -> Tensor:
    """Uniform grid in u mapped by the flow time shift ``t = s u / (1 + (s - 1) u)`` (Esser et
    al. 2024, Eq. 23), between the process's t_max and t_min; returns sigmas = t / (1 - t)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0; got {shift}")

    def inverse(t: float) -> float:
        return t / (shift - (shift - 1) * t)

    u = torch.linspace(inverse(process.t_max), inverse(process.t_min), n, dtype=torch.float64)
    t = shift * u / (1 + (shift - 1) * u)
    sigmas = t / (1 - t)
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if final_zero else sigmas


class Coefficients(NamedTuple):
    """The network map at one sigma, as Python floats (float64): the network sees
    ``x_t = alpha x`` at ``timestep``; ``x0_hat = c_x x + c_out out`` in sigma space, or
    ``c_xt x_t + c_out out`` from the process sample (the only form at sigma = inf)."""

    alpha: float
    timestep: float
    c_x: float
    c_xt: float
    c_out: float

    def x0(self, out: Tensor, x: Tensor) -> Tensor:
        """``x0_hat`` from the network output at sigma-space sample ``x`` (one or two fused
        kernels)."""
        return _linear(x, self.c_x, out, self.c_out)

    def x0_from_process(self, out: Tensor, x_t: Tensor) -> Tensor:
        return _linear(x_t, self.c_xt, out, self.c_out)


def _linear(x: Tensor, c_x: float, out: Tensor, c_out: float) -> Tensor:
    if c_x == 0:
        return out if c_out == 1 else out * c_out
    if c_x == 1:
        return torch.add(x, out, alpha=c_out)
    return torch.add(x * c_x, out, alpha=c_out)


class DiffusersProcess:
    """What a diffusers network means, from its scheduler config: the finite sigma-space
    ``process``, the ``prediction``, network ``timestep = scale * t`` and the terminal process
    time at which sigma = inf (``t = T - 1`` under zero terminal SNR, ``t = 1`` for flow
    matching; None for an ordinary DDPM table). Coefficients are cached per sigma."""

    def __init__(self, process: NoiseProcess, prediction: str, scale: float,
                 terminal: float | None):
        self.process, self.prediction, self.scale, self.terminal = (process, prediction,
                                                                    scale, terminal)
        self._cache: dict[float, Coefficients] = {}

    def sigma_of_timestep(self, timesteps: Tensor) -> Tensor:
        """float64 sigmas of network timesteps; the terminal timestep has sigma = inf."""
        t = torch.as_tensor(timesteps).to(torch.float64) / self.scale
        sigma = self.process.sigma(t).to(torch.float64)
        if self.terminal is not None:
            sigma = torch.where(t >= self.terminal, math.inf, sigma)
        return sigma

    def timestep_of_sigma(self, sigmas: Tensor) -> Tensor:
        """float64 network timesteps of sigmas (inf -> the terminal timestep)."""
        sigmas = torch.as_tensor(sigmas).to(torch.float64)
        t = self.process.t(sigmas)
        if self.terminal is not None:
            t = torch.where(torch.isinf(sigmas), self.terminal, t)
        return t * self.scale

    def check_terminal(self) -> None:
        """Raise unless the network can be evaluated at sigma = inf."""
        if self.terminal is None:
            raise ValueError("sigma = inf (zero SNR) exists only for zero-terminal-SNR configs "
                             "(rescale_betas_zero_snr=True) and flow matching (t = 1)")
        self.coefficients(math.inf)

    def coefficients(self, sigma: float) -> Coefficients:
        """The cached :class:`Coefficients` at ``sigma`` (float64; inf = the terminal time)."""
        c = self._cache.get(sigma)
        if c is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            c = self._cache[sigma] = self._coefficients(sigma)
        return c

    def _coefficients(self, sigma: float) -> Coefficients:
        if math.isinf(sigma):
            if self.terminal is None:
                self.check_terminal()
            t = torch.tensor(float(self.terminal), dtype=torch.float64)  # type: ignore[arg-type]
            a, s, da, ds = 0.0, 1.0, -1.0, 1.0  # x_t = eps; flow: alpha = 1 - t, std = t
        else:
            t = self.process.t(torch.tensor(sigma, dtype=torch.float64))
            a, s = float(self.process.alpha(t)), float(self.process.std(t))
            da = ds = 0.0
            if self.prediction == "velocity":
                da, ds = float(self.process.d_alpha_dt(t)), float(self.process.d_std_dt(t))
        fn = PREDICTIONS[self.prediction]
        try:  # x0_hat is linear in (x_t, out): read its two coefficients off the map
            c_out, c_xt = float(fn(1.0, 0.0, a, s, da, ds)), float(fn(0.0, 1.0, a, s, da, ds))
        except ZeroDivisionError:
            raise ValueError(f"a {self.prediction}-prediction network cannot give x0 at zero "
                             "SNR (sigma = inf, alpha = 0: x0 = (x_t - std eps) / 0); zero "
                             "terminal SNR needs v_prediction (Lin et al. 2024, Sec. 3.2) or "
                             "sample prediction") from None
        return Coefficients(a, float(t) * self.scale, c_xt * a, c_xt, c_out)

    def x0(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """Per-row map for a ``(batch,)`` tensor of distinct finite sigmas (float64 math)."""
        t = self.process.t(sigma.to(torch.float64))
        a, s = self.process.alpha(t), self.process.std(t)
        da = ds = None
        if self.prediction == "velocity":
            da, ds = self.process.d_alpha_dt(t), self.process.d_std_dt(t)
        fn = PREDICTIONS[self.prediction]

        def rows(v: Any) -> Any:
            return append_dims(v.to(x.dtype), x.ndim) if isinstance(v, Tensor) else v

        c_out, c_xt = (rows(fn(o, xt, a, s, da, ds)) for o, xt in ((1.0, 0.0), (0.0, 1.0)))
        return c_xt * rows(a) * x + c_out * out


def diffusers_process(config: Any) -> DiffusersProcess:
    """The network map of a scheduler config (a mapping, scheduler or path), read complete
    (:func:`source_config`): the one function :class:`DiffusersDenoiser` and
    :class:`~fewstep.interop.FewstepScheduler` build their noise process with."""
    config = source_config(config)
    kind = process_kind(config)
    prediction = prediction_from_config(config)
    if kind == "flow":
        return DiffusersProcess(_flow_process(config), prediction, time_scale(config), 1.0)
    terminal = float(int(config.get("num_train_timesteps", 1000)) - 1) \
        if config.get("rescale_betas_zero_snr") else None
    return DiffusersProcess(_vp_process(config), prediction, 1.0, terminal)


def drop_learned_variance(out: Tensor, x: Tensor) -> Tensor:
    """Keep the mean half of an output with twice the input's channels: a learned-variance
    network (Nichol & Dhariwal 2021, Sec. 3.1; DiT) whose variance fewstep does not use."""
    return out[:, : x.shape[1]] if out.ndim > 1 and out.shape[1] == 2 * x.shape[1] else out


def _expand(cond: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """Broadcast batch-1 tensors (one prompt / label for the whole batch) to ``batch`` rows."""
    return {k: v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) and v.ndim
            and v.shape[0] == 1 and batch > 1 else v for k, v in cond.items()}


def _one_sigma(sigma: Tensor | float) -> float | None:
    """The common value of a scalar or per-row sigma, or None if the rows differ."""
    if not isinstance(sigma, Tensor):
        return float(sigma)
    if sigma.numel() == 1:
        return float(sigma)
    lo, hi = torch.aminmax(sigma)
    lo_, hi_ = float(lo), float(hi)
    return lo_ if lo_ == hi_ else None


class _Raw(nn.Module):
    """The unguided denoiser: the model called as diffusers does (keyword float32
    ``timestep``, ``return_dict=False``, input in the model's dtype), the output mapped to
    x0_hat with cached per-sigma coefficients. At sigma = inf (internal use by
    :meth:`DiffusersDenoiser.terminal_step`) ``x`` is the process sample, pure noise."""

    def __init__(self, model: nn.Module, process: DiffusersProcess):
        super().__init__()
        self.model, self.map = model, process
        self._timesteps: dict[tuple[float, int, torch.device], Tensor] = {}

    def _timestep(self, value: float, batch: int, device: torch.device) -> Tensor:
        key = (value, batch, device)
        t = self._timesteps.get(key)
        if t is None:
            if len(self._timesteps) > 4096:
                self._timesteps.clear()
            t = self._timesteps[key] = torch.full((batch,), value, dtype=torch.float32,
                                                  device=device)
        return t

    def network(self, x_t: Tensor, t: Tensor, cond: Mapping[str, Any]) -> Tensor:
        dtype = getattr(self.model, "dtype", x_t.dtype)
        out = self.model(x_t.to(dtype), timestep=t, return_dict=False, **cond)
        out = out if isinstance(out, Tensor) else out[0]
        return drop_learned_variance(out, x_t).to(x_t.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        value = _one_sigma(sigma)
        if value is None:  # rows at different sigmas: per-row float64 coefficients
            sigma = torch.as_tensor(sigma)
            t = self.map.timestep_of_sigma(sigma).to(torch.float32).to(x.device)
            a = append_dims(self.map.process.alpha(self.map.process.t(
                sigma.to(torch.float64))).to(x.dtype), x.ndim)
            return self.map.x0(self.network(a * x, t, cond), x, sigma)
        c = self.map.coefficients(value)
        t = self._timestep(c.timestep, x.shape[0], x.device)
        if math.isinf(value):
            return c.x0_from_process(self.network(x, t, cond), x)
        return c.x0(self.network(x * c.alpha, t, cond), x)


class DiffusersDenoiser(nn.Module):
    """A diffusers network (UNet2DModel, UNet2DConditionModel, a transformer, any module called
    as ``model(x_t, timestep=..., **cond)``) as a sigma-space denoiser for the noise process
    of its scheduler config, with optional classifier-free guidance (Ho & Salimans 2022).

    Conditioning is passed through by name (``class_labels=``, ``encoder_hidden_states=``,
    ...); batch-1 tensors are broadcast. With ``guidance_scale``, ``uncond`` holds the
    unconditional inputs (a null class label, empty-prompt embeddings) for :class:`CFGDenoiser`.
    sigma and the network timestep are computed in float64 from the sigma given (pass a float
    or float64 tensor to keep it exact) and reach the network as float32; only the sample is
    cast to the model's dtype.
    """

    def __init__(self, model: nn.Module, scheduler_config: Any, *,
                 guidance_scale: float | None = None, uncond: Mapping[str, Any] | None = None):
        super().__init__()
        if (guidance_scale is None) != (uncond is None):
            raise ValueError("classifier-free guidance needs both guidance_scale= and uncond= "
                             "(the unconditional inputs, e.g. {'class_labels': null_labels} or "
                             "{'encoder_hidden_states': empty_prompt_embeds})")
        self.map = diffusers_process(scheduler_config)
        self.process, self.prediction = self.map.process, self.map.prediction
        self.model = model
        self.raw = _Raw(model, self.map)
        self.guidance_scale = guidance_scale
        self.uncond = dict(uncond or {})

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        """The largest finite sigma (zero terminal SNR: the last timestep before the terminal
        one, whose sigma is inf; see :meth:`terminal_step`)."""
        return self.process.sigma_max

    def initial_sample(self, noise: Tensor, sigma: float) -> Tensor:
        """Sigma-space start ``x = noise / alpha(sigma)`` for a pipeline's unit-variance start
        noise (which diffusers treats as the process sample at its first timestep)."""
        if math.isinf(sigma):
            raise ValueError("sigma = inf has no sigma-space sample: start with "
                             "terminal_step(noise, sigmas[1]) (one evaluation on pure noise)")
        return noise / self.map.coefficients(float(sigma)).alpha

    def terminal_step(self, noise: Tensor, sigma_next: float, **cond: Any) -> Tensor:
        """The first evaluation at sigma = inf (zero terminal SNR, or flow matching's t = 1):
        the network sees the pure noise ``noise`` at its terminal timestep; one DDIM step
        (exact at this point: eps_hat = noise) gives the sigma-space sample
        ``x0_hat + sigma_next * noise`` from which a solver continues on ``sigmas[1:]``.
        Raises ``ValueError`` for configs without a terminal point or eps prediction."""
        self.map.check_terminal()
        return torch.add(self(noise, math.inf, **cond), noise, alpha=float(sigma_next))

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        if cond:
            cond = _expand(cond, x.shape[0])
        if self.guidance_scale is None:
            return self.raw(x, sigma, **cond)
        cfg = CFGDenoiser(self.raw, self.guidance_scale, _expand(self.uncond, x.shape[0]))
        return cfg(x, sigma, **cond)


def _pipeline_component(root: Path) -> str:
    index = json.loads((root / "model_index.json").read_text())
    for name in ("transformer", "unet"):
        if isinstance(index.get(name), list) and index[name][0] is not None:
            return name
    found = sorted(k for k in index if not k.startswith("_"))
    raise ValueError(f"{root} holds a pipeline without a 'unet' or 'transformer' component "
                     f"(components: {found})")


def _load_model(model_dir: Path, torch_dtype: torch.dtype | None) -> nn.Module:
    import diffusers

    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no model config.json in {model_dir}")
    cls_name = json.loads(config_file.read_text()).get("_class_name")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"{config_file} names class {cls_name!r}, which is not a diffusers "
                         "model class")
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return cls.from_pretrained(str(model_dir), local_files_only=True, **kw)


def _find_scheduler_config(root: Path, model_dir: Path) -> Path:
    candidates = [root / "scheduler" / "scheduler_config.json",
                  model_dir / "scheduler_config.json",
                  model_dir.parent / "scheduler" / "scheduler_config.json"]
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"no scheduler config found (looked at {[str(p) for p in candidates]})"
                            "; pass scheduler_config= (a mapping, scheduler or path)")


def load_denoiser(path: str | Path, subfolder: str | None = None, *,
                  scheduler_config: Any = None, guidance_scale: float | None = None,
                  uncond: Mapping[str, Any] | None = None, torch_dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> DiffusersDenoiser:
    """Load a local diffusers pipeline directory (model_index.json with a unet/transformer and
    a scheduler) or a bare model directory plus a scheduler config as a
    :class:`DiffusersDenoiser`; only local files are read (``local_files_only=True``)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a local directory (load_denoiser never downloads)")
    if subfolder is None and (root / "model_index.json").exists():
        subfolder = _pipeline_component(root)
    model_dir = root / subfolder if subfolder else root
    model = _load_model(model_dir, torch_dtype).eval()
    if device is not None:
        model = model.to(device)
    if scheduler_config is None:
        scheduler_config = _find_scheduler_config(root, model_dir)
    return DiffusersDenoiser(model, scheduler_config, guidance_scale=guidance_scale,
                             uncond=uncond)
