"""fewstep consistency students as diffusers models (the reverse of :mod:`.diffusers`).

:func:`export_lcm` writes a trained (latent) consistency model as a diffusers folder:

- ``unet/``: :class:`FewstepLCMModel`, a ``ModelMixin``/``ConfigMixin`` whose config holds the
  student's architecture spec and the scheduler's noise table, weights in
  ``diffusion_pytorch_model.safetensors`` (``FewstepLCMModel.from_pretrained(path,
  subfolder="unet")``);
- ``scheduler/``: an ``LCMScheduler`` config (``LCMScheduler.from_pretrained(path,
  subfolder="scheduler")``), ``prediction_type="sample"``;
- ``model_index.json``: the folder is a standard diffusers pipeline directory, a
  ``DDPMPipeline`` (diffusers' plain ``unet`` + ``scheduler.step`` loop) whose ``unet`` is the
  model above (library ``fewstep.interop.export``, which diffusers takes from the modules
  already imported: ``import fewstep.interop`` first) and whose scheduler is the
  ``LCMScheduler``: ``DiffusionPipeline.from_pretrained(path)`` loads it and ``pipe(batch_size,
  generator=gens, num_inference_steps=k, output_type="pt")`` gives fewstep's samples mapped
  by DDPMPipeline's image post-processing ``(x / 2 + 0.5).clamp(0, 1)`` (tested). That loop
  passes no conditioning: a class- or w-conditioned student (an LCM) runs the same loop over
  ``pipe.unet`` and ``pipe.scheduler`` with ``cond=`` and ``w=`` keywords. For a latent
  student the pipeline's samples are latents (clamped by that post-processing; take them
  from the loop instead) and the decoder stays fewstep's (:meth:`fewstep.latent.LatentSpace
  .decode`): diffusers never sees the autoencoder.

The model is called as diffusers calls a UNet, ``model(x_t, timestep, **cond).sample`` on the
VP sample ``x_t = sqrt(abar_t) x`` of the scheduler's table; it evaluates the fewstep
consistency function ``f(x, sigma)`` at ``x = x_t / sqrt(abar_t)``, ``sigma =
sqrt((1 - abar_t) / abar_t)`` and returns the "sample" prediction that the LCM scheduler's
own boundary scalings map back to it: ``out = (f - c_skip(t) x_t) / c_out(t)``, so the
scheduler's ``denoised`` is exactly ``f``. Its re-noising ``sqrt(abar') denoised +
sqrt(1 - abar') z`` is fewstep's consistency sampler with ``sigma_min=0`` on the sigmas of the
scheduler's timesteps (:func:`lcm_sigmas`), so a standard diffusers LCM loop gives fewstep's
samples (tested at 1, 2 and 4 steps). Conditioning passes through by keyword (fewstep names:
``cond=`` class labels, ``w=`` the guidance scale of an LCM student, fewstep's convention
``D_u + w (D_c - D_u)``; diffusers' own LCM pipelines feed ``w - 1`` embedded as
``timestep_cond``, which this model does not take).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import ConfigMixin, LCMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ..denoiser import append_dims
from ..nets.precond import ConsistencyPrecond
from ..nets.spec import build_model, model_spec
from .diffusers import diffusers_process, source_config

__all__ = ["FewstepLCMModel", "FewstepLCMOutput", "export_lcm", "lcm_sigmas"]

LCM_SIGMA_DATA = 0.5  # LCMScheduler.get_scalings_for_boundary_condition_discrete's constant


class FewstepLCMOutput(BaseOutput):
    """``sample``: the model's "sample" prediction, shaped like its input."""

    sample: Tensor


class FewstepLCMModel(ModelMixin, ConfigMixin):
    """A fewstep consistency function as a diffusers model for ``LCMScheduler`` (module
    docstring). ``spec``: the student's architecture (:func:`~fewstep.nets.spec.model_spec`);
    ``scheduler``: the complete LCMScheduler config whose table maps timesteps to sigmas and
    whose ``timestep_scaling`` sets the boundary scalings the output inverts."""

    @register_to_config
    def __init__(self, spec: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None, in_channels: int | None = None,
                 sample_size: list[int] | None = None):
        # in_channels, sample_size: one sample's shape (C, *spatial), read by DDPMPipeline
        super().__init__()
        if spec is None or scheduler is None:
            raise ValueError("FewstepLCMModel needs spec= and scheduler= (use export_lcm)")
        self.f = build_model(spec)
        self._map = diffusers_process(scheduler)
        self._scaling = float(scheduler.get("timestep_scaling", 10.0))

    def forward(self, sample: Tensor, timestep: Tensor | float, return_dict: bool = True,
                **cond: Any) -> FewstepLCMOutput | tuple[Tensor]:
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        sigma = self._map.sigma_of_timestep(t.cpu())
        alpha = (1 + sigma**2).rsqrt()
        x = sample / append_dims(alpha.to(sample), sample.ndim)
        f = self.f(x, sigma.to(sample), **cond)
        st = t.to(sample.device) * self._scaling  # LCMScheduler's boundary scalings
        c_skip = LCM_SIGMA_DATA**2 / (st**2 + LCM_SIGMA_DATA**2)
        c_out = st / (st**2 + LCM_SIGMA_DATA**2).sqrt()
        c_skip, c_out = (append_dims(c.to(sample), sample.ndim) for c in (c_skip, c_out))
        out = (f - c_skip * sample) / c_out
        return FewstepLCMOutput(sample=out) if return_dict else (out,)


def lcm_sigmas(scheduler: Any) -> Tensor:
    """float64 sigmas of a scheduler's current timesteps (after ``set_timesteps``), with the
    trailing 0: the grid on which fewstep's ``consistency`` sampler (``sigma_min=0``) takes the
    scheduler's steps."""
    m = diffusers_process(scheduler.config)
    return torch.cat([m.sigma_of_timestep(scheduler.timesteps.cpu()),
                      torch.zeros(1, dtype=torch.float64)])


def export_lcm(student: nn.Module, path: str | Path, *,
               scheduler_config: dict[str, Any] | None = None,
               sample_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``student`` (a :class:`~fewstep.nets.ConsistencyPrecond`, e.g.
    ``load_checkpoint(lcd_run)``) as a diffusers pipeline directory: ``path/unet``,
    ``path/scheduler`` (an ``LCMScheduler`` with ``prediction_type="sample"``;
    ``scheduler_config`` overrides its defaults, e.g. the beta table of the latent teacher's
    autoencoder pipeline) and ``path/model_index.json`` (a ``DDPMPipeline``; module
    docstring). ``sample_shape`` is one sample's shape, ``(C, H, W)`` (a latent student: the
    latent's shape) or ``(dim,)``; it may be left out for an MLP student (``(dim,)``).
    Returns ``path``. The folder is written beside ``path`` and renamed into place, so an
    interrupted export leaves nothing at ``path``. Raises ValueError for a student that is not
    a consistency function, a convolutional student without ``sample_shape``, a scheduler
    config fewstep cannot map, a ``prediction_type`` other than ``sample``, or an existing
    non-empty ``path``."""
    if not isinstance(student, ConsistencyPrecond):
        raise ValueError(f"export_lcm writes a consistency function (ConsistencyPrecond); got "
                         f"{type(student).__name__}")
    spec = model_spec(student)
    if spec is None:
        raise ValueError("the student's architecture has no spec (build it from fewstep.nets)")
    shape = _sample_shape(spec, sample_shape)
    given = dict(scheduler_config or {})
    if given.get("prediction_type", "sample") != "sample":
        raise ValueError(f"the exported model predicts the sample; got prediction_type="
                         f"{given['prediction_type']!r}")
    given["prediction_type"] = "sample"
    diffusers_process({"_class_name": "LCMScheduler", **given})  # raises, named, if unmappable
    scheduler: Any = LCMScheduler(**given)  # diffusers types its mixins loosely
    full = source_config(scheduler)
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty; export to a new folder")
    model = FewstepLCMModel(spec=spec, scheduler=json.loads(json.dumps(full, default=_plain)),
                            in_channels=shape[0], sample_size=list(shape[1:]))
    model.f.load_state_dict(student.state_dict())
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        scheduler.save_config(str(tmp / "scheduler"))
        index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "LCMScheduler"],
                 "unet": [FewstepLCMModel.__module__, "FewstepLCMModel"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _sample_shape(spec: dict[str, Any], given: tuple[int, ...] | None) -> tuple[int, ...]:
    """One sample's shape: ``given`` (checked against the network's input width), else an
    MLP's ``(dim,)``."""
    kwargs = spec["kwargs"]["net"]["kwargs"] if "net" in spec["kwargs"] else {}
    width = kwargs.get("in_channels", kwargs.get("dim"))
    if given is None:
        if "dim" not in kwargs:
            raise ValueError("export_lcm needs sample_shape=(C, H, W) for a convolutional "
                             "student (one sample's, or one latent's, shape)")
        return (int(kwargs["dim"]),)
    shape = tuple(int(n) for n in given)
    if not shape or min(shape) < 1 or (width is not None and shape[0] != width):
        raise ValueError(f"sample_shape={tuple(given)} does not fit the student (its input has "
                         f"{width} channels or features)")
    return shape


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
