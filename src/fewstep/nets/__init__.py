"""Small backbones ``F(x_in, c_noise, cond=None)`` and the preconditioning that turns them into
sigma-space denoisers (EDM) or consistency functions."""

from .autoencoder import ConvAutoencoder, kl_normal
from .backbone_disc import (
    FeatureHeads,
    FrozenFeatureDiscriminator,
    NoisyDiscriminator,
)
from .embedding import CondEmbedding, SinusoidalEmbedding
from .mlp import COND_TYPES, MLPDenoiserNet, NoiseEmbedding
from .operator import FourierTemporalConv, FourierTemporalLayer, TrajectoryOperator
from .precond import (
    ConsistencyPrecond,
    EDMPrecond,
    FlowPrecond,
    consistency_scalings,
    edm_scalings,
    flow_scalings,
)
from .spec import build_model, buildable, model_spec
from .unet import UNet

__all__ = [
    "COND_TYPES",
    "CondEmbedding",
    "ConsistencyPrecond",
    "ConvAutoencoder",
    "EDMPrecond",
    "FeatureHeads",
    "FlowPrecond",
    "FourierTemporalConv",
    "FourierTemporalLayer",
    "FrozenFeatureDiscriminator",
    "MLPDenoiserNet",
    "NoiseEmbedding",
    "NoisyDiscriminator",
    "SinusoidalEmbedding",
    "TrajectoryOperator",
    "UNet",
    "build_model",
    "buildable",
    "consistency_scalings",
    "edm_scalings",
    "flow_scalings",
    "kl_normal",
    "model_spec",
]
