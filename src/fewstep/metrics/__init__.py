"""Sample-quality metrics: distribution distances, feature-space scores and CI summaries."""

from fewstep.metrics.distribution import (
    SlicedReference,
    energy_distance,
    mmd,
    mode_coverage,
    nll,
    sliced_wasserstein,
)
from fewstep.metrics.features import (
    ChecksumError,
    FeatureExtractor,
    IdentityExtractor,
    extract_features,
    feature_stats,
    file_sha256,
    frechet_distance,
    frechet_distance_from_features,
    kid,
    load_extractor_weights,
    prdc,
)
from fewstep.metrics.stats import Summary, holm, mean_ci, paired_p, range_ci

__all__ = [
    "ChecksumError",
    "FeatureExtractor",
    "IdentityExtractor",
    "SlicedReference",
    "Summary",
    "energy_distance",
    "extract_features",
    "feature_stats",
    "file_sha256",
    "frechet_distance",
    "frechet_distance_from_features",
    "holm",
    "kid",
    "load_extractor_weights",
    "mean_ci",
    "mmd",
    "mode_coverage",
    "nll",
    "paired_p",
    "prdc",
    "range_ci",
    "sliced_wasserstein",
]
