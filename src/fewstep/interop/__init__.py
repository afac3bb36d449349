"""diffusers in both directions (needs the ``diffusers`` package): a diffusers model as a
fewstep denoiser (:func:`load_denoiser`, :class:`DiffusersDenoiser`) and a fewstep solver as a
diffusers scheduler (:class:`FewstepScheduler`); a trained (latent) consistency model as a
diffusers model + ``LCMScheduler`` (:func:`export_lcm`). See docs/interop.md."""

from .diffusers import (
    PREDICTION_TYPES,
    DiffusersDenoiser,
    DiffusersProcess,
    diffusers_process,
    flow_shift,
    load_denoiser,
    prediction_from_config,
    process_from_scheduler_config,
    process_kind,
    source_config,
    time_scale,
)
from .export import FewstepLCMModel, export_lcm, lcm_sigmas
from .scheduler import FewstepScheduler, FewstepSchedulerOutput, probe, unhonoured_options

__all__ = [
    "PREDICTION_TYPES",
    "DiffusersDenoiser",
    "DiffusersProcess",
    "FewstepLCMModel",
    "FewstepScheduler",
    "FewstepSchedulerOutput",
    "diffusers_process",
    "export_lcm",
    "flow_shift",
    "lcm_sigmas",
    "load_denoiser",
    "prediction_from_config",
    "probe",
    "process_from_scheduler_config",
    "process_kind",
    "source_config",
    "time_scale",
    "unhonoured_options",
]
