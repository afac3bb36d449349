"""Teachers: a denoiser plus what the bench needs to score samples against it.

Built-ins are exact: Gaussian mixtures (closed-form denoiser and density) and the empirical
optimal denoiser of each built-in data set's train split (scored against its test split).
Users add their own with :func:`register`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import data
from .. import data as fewstep_data
from ..analytic import EmpiricalDenoiser, GaussianMixture
from ..denoiser import Denoiser

__all__ = ["Teacher", "available", "get", "register"]


@dataclass(frozen=True)
class Teacher:
    """A denoiser with its sigma range and a source of reference samples to score against."""

    name: str
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    reference_samples: Callable[[int, int], Tensor] | None  # (n, seed) -> held-out samples
    kind: str = "vector"  # "vector" or "image"
    log_prob: Callable[[Tensor], Tensor] | None = None
    modes: tuple[Tensor, Tensor] | None = None  # (means (K, d), stds (K,)) for mode coverage
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_BUILDERS: dict[str, Callable[[], Teacher]] = {}


def register(name: str, builder: Callable[[], Teacher], overwrite: bool = False) -> None:
    """Register a teacher builder (called lazily, once)."""
    if name in _BUILDERS and not overwrite:
        raise ValueError(f"teacher {name!r} is already registered")
    _BUILDERS[name] = builder
    get.cache_clear()


@functools.cache
def get(name: str) -> Teacher:
    """Build (once) and return the named teacher; ``diffusers:PATH`` loads a local diffusers
    model on first use."""
    if name not in _BUILDERS and name.startswith("diffusers:"):
        _BUILDERS[name] = functools.partial(diffusers_teacher, name.removeprefix("diffusers:"))
    if name not in _BUILDERS:
        raise ValueError(f"unknown teacher {name!r}; available: {', '.join(available())}, "
                         "or diffusers:PATH")
    return _BUILDERS[name]()


def diffusers_teacher(path: str, data: str | None = None) -> Teacher:
    """A local diffusers model (pipeline or model dir) as a teacher; ``data`` names a
    registered data set (e.g. a folder of reference images) to score samples against."""
    from ..interop import load_denoiser

    D = load_denoiser(path)
    cfg = D.model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else \
        (cfg.sample_size, cfg.sample_size)
    shape = (cfg.in_channels, *size)
    reference = None
    if data is not None:
        ds = fewstep_data.get(data)

        def reference(n: int, s: int) -> Tensor:
            return _held_out(ds, n, s)

    return Teacher(f"diffusers:{path}", D, shape, float(D.sigma_min), float(D.sigma_max),
                   reference, kind="image",
                   description=f"diffusers model at {path} ({type(D.model).__name__}, "
                   f"{D.prediction} prediction)" + (f"; reference data: {data}" if data else
                                                      "; no reference data"))


def _held_out(ds: Any, n: int, s: int) -> Tensor:
    if not getattr(ds, "finite", True):
        return ds.load("test", n=n, seed=s)
    test = ds.load("test", seed=0)  # a finite test split: all of it, at most n rows
    return test[torch.randperm(len(test), generator=torch.Generator().manual_seed(s))[:n]]


def available() -> list[str]:
    return sorted(_BUILDERS)


def _mixture_teacher(name: str, dim: int, components: int, seed: int) -> Teacher:
    gm = GaussianMixture.random(dim, components, spread=1.0, std=0.25, seed=seed).float()

    def reference(n: int, s: int) -> Tensor:
        return gm.sample(n, generator=torch.Generator().manual_seed(10_000 + s))

    stds = gm.variances.sqrt().max(1).values
    return Teacher(name, gm, (dim,), 0.002, 80.0, reference, log_prob=gm.log_prob,
                   modes=(gm.means, stds),
                   description=f"exact {components}-component Gaussian mixture in {dim}-d")


def _empirical_teacher(name: str, n_train: int = 2000) -> Teacher:
    ds = data.get(name)
    train = ds.load("train", seed=0)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_train]]

    def reference(n: int, s: int) -> Tensor:
        return _held_out(ds, n, s)

    extra = {"extractor": "digits_cnn"} if name == "digits" else {}
    return Teacher(name, EmpiricalDenoiser(train), tuple(ds.shape), 0.002, 80.0, reference,
                   kind=ds.kind, extra=extra, description=f"empirical optimal denoiser of {name} "
                   f"({len(train)} train points); scored against the test split; {ds.licence}")


for _dim, _k in ((2, 8), (16, 8), (64, 16)):
    register(f"gmm{_dim}", functools.partial(_mixture_teacher, f"gmm{_dim}", _dim, _k, _dim))
for _name in data.available():
    register(_name, functools.partial(_empirical_teacher, _name))
