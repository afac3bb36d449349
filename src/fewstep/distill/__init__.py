"""Training and distillation methods: small loss objects behind one registry, run by the shared
loop in :mod:`fewstep.train`."""

from . import consistency, direct, knowledge, lcm, progressive, rectified, teacher  # noqa: F401  (registry)
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
from .knowledge import KnowledgeDistillation
from .lcm import LatentConsistencyDistillation, LatentConsistencyFineTuning
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
    "KnowledgeDistillation",
    "LatentConsistencyDistillation",
    "LatentConsistencyFineTuning",
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
    "rectified_flows",
    "register_method",
    "rf_sigmas",
    "split_batch",
    "straightness",
    "warm_start",
]
