"""Training and distillation methods: small loss objects behind one registry, run by the shared
loop in :mod:`fewstep.train`."""

from . import consistency, direct, knowledge, progressive, teacher  # noqa: F401  (registry)
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
from .progressive import ProgressiveDistillation
from .teacher import EDMLoss

__all__ = [
    "Batch",
    "DirectCM",
    "EDMLoss",
    "KnowledgeDistillation",
    "LossContext",
    "Method",
    "MethodBase",
    "ProgressiveDistillation",
    "available_methods",
    "edm_weight",
    "get_method",
    "register_method",
    "split_batch",
    "warm_start",
]
