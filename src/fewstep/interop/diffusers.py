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

Unsupported, with an error naming the value: other beta schedules (sigmoid, exp, laplace),
zero terminal SNR (``rescale_betas_zero_snr``: sigma = inf at the last timestep), EDM-style
continuous timesteps (``timestep_type="continuous"``, EDM* schedulers: c_in/c_noise
preconditioning), VE/score-SDE schedulers, and any other prediction type.
Sampler-side options (clip_sample, thresholding, timestep_spacing, steps_offset, karras
sigmas, ...) describe a sampler, not the network, and are ignored here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import PREDICTIONS, CFGDenoiser, ModelDenoiser, append_dims
from ..process import NoiseProcess, RectifiedFlow, VPDiscrete, ddpm_betas

__all__ = [
    "PREDICTION_TYPES",
    "DiffusersDenoiser",
    "drop_learned_variance",
    "flow_shift",
    "load_denoiser",
    "prediction_from_config",
    "process_from_scheduler_config",
    "process_kind",
    "time_scale",
    "x0_from_output",
]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0",
                    "flow_prediction": "velocity", "flow": "velocity"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine"}
PROCESS_KINDS = ("vp_discrete", "flow")


def _config(config: Any) -> Mapping[str, Any]:
    """Accept a config mapping, a scheduler (its ``.config``) or a path to a config JSON/dir."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "scheduler_config.json" if path.is_dir() else path
        return json.loads(path.read_text())
    if hasattr(config, "config") and not isinstance(config, Mapping):  # a scheduler object
        return {**config.config, "_class_name": type(config).__name__}
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a scheduler config mapping, scheduler or path; got "
                        f"{type(config).__name__}")
    return config


def process_kind(config: Any) -> str:
    """The noise process a scheduler config describes: "vp_discrete" or "flow"."""
    config = _config(config)
    name = str(config.get("_class_name") or "")
    if config.get("noise_process") is not None:  # a FewstepScheduler config
        kind = config["noise_process"]
        if kind not in PROCESS_KINDS:
            raise ValueError(f"unknown noise_process {kind!r}; expected one of {PROCESS_KINDS}")
        return kind
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
    config = _config(config)
    return float(config.get("num_train_timesteps", 1000)) if process_kind(config) == "flow" \
        else 1.0


def _shift(shift: float, t: float) -> float:
    return shift * t / (1 + (shift - 1) * t)


def _vp_process(config: Mapping[str, Any]) -> VPDiscrete:
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True (zero terminal SNR) puts sigma = inf at "
                         "the last timestep, which sigma-space cannot represent; not supported")
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return VPDiscrete(torch.as_tensor(config["trained_betas"], dtype=torch.float64))
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"unsupported beta_schedule {schedule!r}; supported: "
                         f"{sorted(BETA_SCHEDULES)} or trained_betas")
    kw = {}
    if schedule != "squaredcos_cap_v2":
        kw = {"beta_start": float(config.get("beta_start", 1e-4)),
              "beta_end": float(config.get("beta_end", 0.02))}
    return VPDiscrete(ddpm_betas(BETA_SCHEDULES[schedule], T, **kw))


def _flow_process(config: Mapping[str, Any]) -> RectifiedFlow:
    T = int(config.get("num_train_timesteps", 1000))
    shift = 1.0 if config.get("use_dynamic_shifting") else float(
        config.get("shift", config.get("flow_shift", 1.0)))  # UniPC/DPM-Solver: flow_shift
    return RectifiedFlow(t_min=_shift(shift, 1 / T), t_max=1 - 1 / T)


def process_from_scheduler_config(config: Any) -> NoiseProcess:
    """The fewstep noise process of a diffusers scheduler config (see the module docstring)."""
    config = _config(config)
    return _flow_process(config) if process_kind(config) == "flow" else _vp_process(config)


def prediction_from_config(config: Any) -> str:
    """fewstep prediction name (eps / v / x0 / velocity) of a config's ``prediction_type``;
    flow-matching schedulers without one predict the velocity."""
    config = _config(config)
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


def x0_from_output(process: NoiseProcess, prediction: str, out: Tensor, x: Tensor,
                   sigma: float) -> Tensor:
    """x0_hat from a network output at sigma-space sample ``x`` (the map of ModelDenoiser)."""
    t = process.t(torch.tensor([sigma], dtype=torch.float64))
    a, s = process.alpha(t), process.std(t)
    da = ds = None
    if prediction == "velocity":
        da, ds = (append_dims(v.to(x.dtype), x.ndim) for v in
                  (process.d_alpha_dt(t), process.d_std_dt(t)))
    a, s = (append_dims(v.to(x.dtype), x.ndim) for v in (a, s))
    return PREDICTIONS[prediction](out, a * x, a, s, da, ds)


def drop_learned_variance(out: Tensor, x: Tensor) -> Tensor:
    """Keep the mean half of an output with twice the input's channels: a learned-variance
    network (Nichol & Dhariwal 2021, Sec. 3.1; DiT) whose variance fewstep does not use."""
    return out[:, : x.shape[1]] if out.ndim > 1 and out.shape[1] == 2 * x.shape[1] else out


class _Network(nn.Module):
    """``(x_t, t, **cond) -> raw output`` in diffusers' calling convention: keyword timestep
    scaled to the network's units, ``return_dict=False``, the model's own dtype."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        dtype = getattr(self.model, "dtype", x_t.dtype)
        out = self.model(x_t.to(dtype), timestep=t * self.scale, return_dict=False, **cond)
        out = out if isinstance(out, Tensor) else out[0]
        return drop_learned_variance(out, x_t).to(x_t.dtype)


def _expand(cond: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """Broadcast batch-1 tensors (one prompt / label for the whole batch) to ``batch`` rows."""
    return {k: v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) and v.ndim
            and v.shape[0] == 1 and batch > 1 else v for k, v in cond.items()}


class DiffusersDenoiser(nn.Module):
    """A diffusers network (UNet2DModel, UNet2DConditionModel, a transformer, any module called
    as ``model(x_t, timestep=..., **cond)``) as a sigma-space denoiser for the noise process
    of its scheduler config, with optional classifier-free guidance (Ho & Salimans 2022).

    Conditioning is passed through by name (``class_labels=``, ``encoder_hidden_states=``,
    ...); batch-1 tensors are broadcast. With ``guidance_scale``, ``uncond`` holds the
    unconditional inputs (a null class label, empty-prompt embeddings) for :class:`CFGDenoiser`.
    """

    def __init__(self, model: nn.Module, scheduler_config: Any, *,
                 guidance_scale: float | None = None, uncond: Mapping[str, Any] | None = None):
        super().__init__()
        config = _config(scheduler_config)
        if (guidance_scale is None) != (uncond is None):
            raise ValueError("classifier-free guidance needs both guidance_scale= and uncond= "
                             "(the unconditional inputs, e.g. {'class_labels': null_labels} or "
                             "{'encoder_hidden_states': empty_prompt_embeds})")
        self.process = process_from_scheduler_config(config)
        self.prediction = prediction_from_config(config)
        self.model = model
        net = _Network(model, time_scale(config))
        self.denoiser = ModelDenoiser(net, self.process, self.prediction)
        self.guidance_scale = guidance_scale
        self.uncond = dict(uncond or {})

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def initial_sample(self, noise: Tensor, sigma: float) -> Tensor:
        """Sigma-space start ``x = noise / alpha(sigma)`` for a pipeline's unit-variance start
        noise (which diffusers treats as the process sample at its first timestep)."""
        return noise / self.process.alpha_of_sigma(torch.tensor(sigma, dtype=torch.float64)).item()

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        cond = _expand(cond, x.shape[0])
        if self.guidance_scale is None:
            return self.denoiser(x, sigma, **cond)
        cfg = CFGDenoiser(self.denoiser, self.guidance_scale, _expand(self.uncond, x.shape[0]))
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
