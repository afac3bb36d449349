"""Training and distillation methods: small loss objects behind one registry, run by the shared
loop in :mod:`fewstep.train`."""

from . import (  # noqa: F401  (registry)
    consistency,
    direct,
    guided,
    knowledge,
    progressive,
    rectified,
    teacher,
)
from .base import (
    Batch,
    LossContext,
    Method,
    MethodBase,
    available_methods,
    edm_weight,
    get_method,
    register_method,
    split_batch,
    warm_start,
)
from .direct import DirectCM
from .guided import GuidedDistillation, guided_output, sample_pd_stochastic
from .knowledge import KnowledgeDistillation
from .progressive import ProgressiveDistillation
from .rectified import (
    RectifiedFlowDistill,
    RectifiedFlowLoss,
    Reflow,
    draw_couplings,
    rectified_flows,
    rf_sigmas,
    straightness,
)
from .teacher import EDMLoss

__all__ = [
    "Batch",
    "DirectCM",
    "EDMLoss",
    "GuidedDistillation",
    "KnowledgeDistillation",
    "LossContext",
    "Method",
    "MethodBase",
    "ProgressiveDistillation",
    "RectifiedFlowDistill",
    "RectifiedFlowLoss",
    "Reflow",
    "available_methods",
    "draw_couplings",
    "edm_weight",
    "get_method",
    "guided_output",
    "rectified_flows",
    "register_method",
    "rf_sigmas",
    "sample_pd_stochastic",
    "split_batch",
    "straightness",
    "warm_start",
]
