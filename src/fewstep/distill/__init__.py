"""Training and distillation methods: small loss objects behind one registry, run by the shared
loop in :mod:`fewstep.train`."""

from . import (  # noqa: F401  (registry)
    add,
    autoencoder,
    consistency,
    diffusion_gan,
    direct,
    guided,
    knowledge,
    lcm,
    operator,
    progressive,
    rectified,
    teacher,
    ufogen,
)
from .add import ADD
from .adversarial import (
    AdversarialPair,
    check_pair,
    discriminator_loss,
    frozen,
    generator_loss,
    r1_penalty,
)
from .autoencoder import AutoencoderLoss
from .base import (
    CONSISTENCY_SAMPLERS,
    NETWORK_KINDS,
    OWN_SAMPLERS,
    STUDENT_SAMPLERS,
    WHOLE_NETWORKS,
    Batch,
    LossContext,
    Method,
    MethodBase,
    available_methods,
    edm_weight,
    get_method,
    network_kind,
    register_method,
    split_batch,
    student_methods,
    student_sampler,
    warm_start,
)
from .diffusion_gan import DDGAN, SIDDM, DiffusionGAN, gan_pair
from .direct import DirectCM
from .guided import GuidedDistillation, guided_output, sample_pd_stochastic
from .knowledge import KnowledgeDistillation
from .lcm import LatentConsistencyDistillation, LatentConsistencyFineTuning
from .operator import OperatorDistillation
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
from .ufogen import UFOGen

__all__ = [
    "ADD",
    "CONSISTENCY_SAMPLERS",
    "DDGAN",
    "NETWORK_KINDS",
    "OWN_SAMPLERS",
    "SIDDM",
    "STUDENT_SAMPLERS",
    "WHOLE_NETWORKS",
    "AdversarialPair",
    "AutoencoderLoss",
    "Batch",
    "DiffusionGAN",
    "DirectCM",
    "EDMLoss",
    "GuidedDistillation",
    "KnowledgeDistillation",
    "LatentConsistencyDistillation",
    "LatentConsistencyFineTuning",
    "LossContext",
    "Method",
    "MethodBase",
    "OperatorDistillation",
    "ProgressiveDistillation",
    "RectifiedFlowDistill",
    "RectifiedFlowLoss",
    "Reflow",
    "UFOGen",
    "available_methods",
    "check_pair",
    "discriminator_loss",
    "draw_couplings",
    "edm_weight",
    "frozen",
    "gan_pair",
    "generator_loss",
    "get_method",
    "guided_output",
    "network_kind",
    "r1_penalty",
    "rectified_flows",
    "register_method",
    "rf_sigmas",
    "sample_pd_stochastic",
    "split_batch",
    "straightness",
    "student_methods",
    "student_sampler",
    "warm_start",
]
