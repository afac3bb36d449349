"""Teachers: a denoiser plus what the bench needs to score samples against it.

Built-ins are exact: Gaussian mixtures (closed-form denoiser and density) and the empirical
optimal denoiser of each built-in data set's train split (scored against its test split).
Trained teachers come from the zoo (``zoo:NAME``, see :mod:`fewstep.zoo`). A
class-conditional zoo teacher is benched class-balanced and guided: ``zoo:NAME@w=W`` conditions
row ``i`` of every call on class ``i mod K`` and applies classifier-free guidance of strength
``W`` in Meng et al.'s convention, ``(1 + W) D_c - W D_u`` (fewstep's CFG scale ``1 + W``; 2
evaluations per row; ``zoo:NAME`` is ``W = 0``, the conditional model alone); its reference
samples are the labelled test split, class-balanced, in the same order (see
:class:`GuidedRows`). A user brings a model by name, resolved on first use:

- ``checkpoint:PATH``: a ``fewstep train`` run directory or checkpoint (EMA weights), scored
  against the test split of the built-in data set it was trained on;
- ``diffusers:PATH``: a local diffusers pipeline or model directory;
- ``python:MODULE:ATTR``: ``MODULE.ATTR`` is a :class:`Teacher`; or a factory (a callable
  without required arguments) returning a :class:`Teacher` or a denoiser; or a denoiser
  ``D(x, sigma, **cond) -> x0_hat`` itself. A denoiser carries ``sample_shape`` (one sample's
  shape, a tuple) and may carry ``sigma_min`` (default 0.002), ``sigma_max`` (80) and ``data``
  (a built-in data set to score against; without it only the ODE error is measured).

:func:`register` adds a named builder.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from .. import data
from .. import data as fewstep_data
from .._registry import Registry
from ..analytic import EmpiricalDenoiser, GaussianMixture
from ..data.registry import NULL_LABEL
from ..denoiser import CFGDenoiser, Denoiser, as_batch_sigma

__all__ = ["PREFIXES", "GuidedRows", "Teacher", "available", "balanced_rows",
           "checkpoint_teacher", "get", "import_attr", "latent_teacher", "num_classes",
           "python_teacher", "register", "split_guidance", "trained_teacher", "zoo_teacher"]

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's range: every fewstep-trained model's


@dataclass(frozen=True)
class Teacher:
    """A denoiser with its sigma range and a source of reference samples to score against.

    ``decode`` maps the denoiser's samples to the space of the reference samples before they
    are scored (a latent teacher's autoencoder decoder, :mod:`fewstep.latent`); None: the
    samples are data already. The ODE error is measured on the undecoded samples."""

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
    decode: Callable[[Tensor], Tensor] | None = None

    def to_data(self, samples: Tensor) -> Tensor:
        """``samples`` in data space: decoded, for a latent teacher; unchanged otherwise."""
        return samples if self.decode is None else self.decode(samples)


_BUILDERS: Registry[Callable[[], Teacher]] = Registry(
    "teacher", hint=", or checkpoint:PATH, diffusers:PATH, python:MODULE:ATTR")


def register(name: str, builder: Callable[[], Teacher], overwrite: bool = False) -> None:
    """Register a teacher builder (called lazily, once)."""
    _BUILDERS.add(name, builder, overwrite=overwrite)
    get.cache_clear()


@functools.cache
def get(name: str) -> Teacher:
    """Build (once) and return the named teacher; ``diffusers:PATH``, ``checkpoint:PATH`` and
    ``python:MODULE:ATTR`` are loaded on first use (see the module docstring). Raises
    ValueError (or OSError for an unreadable file) naming a bad name, path or attribute."""
    prefix = name.split(":", 1)[0]
    if name in _BUILDERS or prefix not in PREFIXES:
        return _BUILDERS[name]()  # an unknown name raises UnknownNameError, listing the teachers
    teacher = PREFIXES[prefix](name.removeprefix(f"{prefix}:"))  # a failure registers nothing
    _BUILDERS.add(name, functools.partial(PREFIXES[prefix], name.removeprefix(f"{prefix}:")))
    return teacher


def diffusers_teacher(path: str, data: str | None = None) -> Teacher:
    """A local diffusers model (pipeline or model dir) as a teacher; ``data`` names a
    registered data set (e.g. a folder of reference images) to score samples against."""
    from ..interop import load_denoiser

    D = load_denoiser(path)
    cfg: Any = D.model.config  # a diffusers FrozenDict
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


def split_guidance(name: str) -> tuple[str, float | None]:
    """``"NAME@w=W"`` -> ``("NAME", W)``; a name without the suffix -> ``(name, None)``.
    ValueError naming a malformed or negative ``W``."""
    base, sep, suffix = name.partition("@")
    if not sep:
        return name, None
    try:
        if not suffix.startswith("w="):
            raise ValueError
        w = float(suffix.removeprefix("w="))
    except ValueError:
        raise ValueError(f"{name!r}: a guidance suffix looks like @w=2 (a number >= 0); got "
                         f"@{suffix}") from None
    if not (w >= 0 and w < float("inf")):
        raise ValueError(f"{name!r}: the guidance strength w must be a finite number >= 0; "
                         f"got {suffix.removeprefix('w=')}")
    return base, w


class GuidedRows(torch.nn.Module):
    """A class-conditional denoiser as the bench's unconditional ``D(x, sigma)``: row ``i`` of
    every call is conditioned on class ``i mod K`` (so a case's ``n`` samples, ``n`` a
    multiple of ``K``, are class-balanced; a prefix of the rows, as in the warm-up, keeps its
    labels), guided with strength ``w`` (Meng et al. 2023, Eq. 1: ``(1 + w) D_c - w D_u``).
    A teacher trained with label dropout applies it by classifier-free guidance
    (:class:`~fewstep.denoiser.CFGDenoiser` with scale ``1 + w``; ``w = 0`` is one
    conditional evaluation); a w-conditioned student (``takes_w``) is given ``w=`` instead.
    """

    def __init__(self, denoiser: Denoiser, num_classes: int, w: float, *,
                 takes_w: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.denoiser, self.num_classes, self.w, self.takes_w = denoiser, num_classes, w, takes_w

    @property
    def evaluations_per_row(self) -> int:
        """Network evaluations per row of a call: 2 under guidance (conditional and null
        label), else 1; the bench's row count (:class:`~fewstep.bench.meters.TimedDenoiser`)
        reads it."""
        return 1 if self.takes_w or self.w == 0 else 2

    def labels(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The classes of ``n`` rows: ``arange(n) % K``."""
        return torch.arange(n, device=device) % self.num_classes

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        c = self.labels(x.shape[0], x.device)
        sigma = as_batch_sigma(sigma, x)
        if self.takes_w:
            return self.denoiser(x, sigma, cond=c, w=torch.full((x.shape[0],), self.w,
                                                               dtype=x.dtype, device=x.device))
        if self.w == 0:
            return self.denoiser(x, sigma, cond=c)
        return CFGDenoiser(self.denoiser, 1 + self.w,
                           {"cond": torch.full_like(c, NULL_LABEL)})(x, sigma, cond=c)


def _balanced_held_out(ds: Any, num_classes: int, n: int, s: int) -> Tensor:
    """Class-balanced held-out samples from the labelled test split, row ``i`` of class
    ``i mod K``: ``m = min(n // K, rarest class's count)`` random rows per class (seed ``s``),
    so ``K m`` rows in all (the whole split is drawn for a finite set)."""
    finite = getattr(ds, "finite", True)
    batch = ds.load_labelled("test", seed=0) if finite else \
        ds.load_labelled("test", n=2 * n, seed=s)
    return batch["x"][balanced_rows(batch["cond"], num_classes, n, s)]


def balanced_rows(labels: Tensor, num_classes: int, n: int, seed: int) -> Tensor:
    """Indices of ``K m`` rows of ``labels``, ``m = min(n // K, rarest class's count)`` random
    ones per class (``seed``), ordered so that row ``i`` has class ``i mod K``."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.nonzero(labels == k).flatten() for k in range(num_classes)]
    m = min(n // num_classes, *(len(r) for r in rows))
    if m == 0:
        raise ValueError(f"no class-balanced sample of {n} rows: the rarest of {num_classes} "
                         "classes has too few rows")
    return torch.stack([r[torch.randperm(len(r), generator=g)[:m]] for r in rows], 1).flatten()


def _held_out(ds: Any, n: int, s: int) -> Tensor:
    if not getattr(ds, "finite", True):
        return ds.load("test", n=n, seed=s)
    test = ds.load("test", seed=0)  # a finite test split: all of it, at most n rows
    return test[torch.randperm(len(test), generator=torch.Generator().manual_seed(s))[:n]]


def available() -> list[str]:
    """Names of the registered teachers: built-ins, built zoo teachers, and the user's models
    loaded so far."""
    return _BUILDERS.names()


def trained_teacher(name: str, denoiser: Denoiser, data_name: str | None, *,
                    sample_shape: tuple[int, ...] | None = None, sigma_min: float = SIGMA_MIN,
                    sigma_max: float = SIGMA_MAX, description: str = "",
                    num_classes: int = 0) -> Teacher:
    """A trained denoiser as a teacher, scored against the test split of the built-in data set
    ``data_name`` (its shape and kind too); without one, ``sample_shape`` is needed and only
    the ODE error against the teacher's own reference solution is measured. With
    ``num_classes`` K > 0 (a :class:`GuidedRows` denoiser) the reference samples are the
    labelled test split, class-balanced, row ``i`` of class ``i mod K``."""
    if data_name is None:
        if sample_shape is None:
            raise ValueError(f"teacher {name!r}: no data set to score against and no "
                             "sample_shape; give one of them")
        return Teacher(name, denoiser, tuple(sample_shape), sigma_min, sigma_max, None,
                       kind="image" if len(sample_shape) == 3 else "vector",
                       description=description + "; no reference data")
    ds = data.get(data_name)

    def reference(n: int, s: int) -> Tensor:
        return _balanced_held_out(ds, num_classes, n, s) if num_classes else \
            _held_out(ds, n, s)

    if sample_shape is not None and tuple(sample_shape) != tuple(ds.shape):
        raise ValueError(f"teacher {name!r}: sample_shape {tuple(sample_shape)} differs from "
                         f"data set {data_name!r}'s {tuple(ds.shape)}")
    extra: dict[str, Any] = {"extractor": "digits_cnn"} if data_name == "digits" else {}
    if num_classes:
        extra["num_classes"] = num_classes
    return Teacher(name, denoiser, tuple(ds.shape), sigma_min, sigma_max, reference,
                   kind=ds.kind, extra=extra, description=f"{description}; scored against the "
                   f"{'class-balanced labelled ' if num_classes else ''}test split of "
                   f"{data_name} ({ds.licence})")


def num_classes(name: str) -> int:
    """The number of classes of a class-conditional zoo teacher or student ``zoo:NAME[@w=W]``
    (from its recipe, nothing loaded); 0 for every other name."""
    from .. import zoo

    if not name.startswith("zoo:"):
        return 0
    r = zoo.RECIPES.get(split_guidance(name.removeprefix("zoo:"))[0])
    return 0 if r is None else int(r.backbone.get("kwargs", {}).get("num_classes", 0))


def zoo_teacher(entry: str) -> Teacher:
    """The built zoo teacher ``entry`` (:mod:`fewstep.zoo`), e.g. ``checkerboard-edm``; a
    class-conditional one as ``NAME@w=W``, class-balanced and guided (see the module
    docstring)."""
    from .. import zoo

    base, w = split_guidance(entry)
    e = zoo.entry(base)
    if e.recipe.role != "teacher":
        raise ValueError(f"zoo:{entry} is a {e.recipe.method} {e.recipe.role}, not a teacher"
                         + (f"; bench it as the method student:zoo:{entry} on "
                            f"zoo:{e.recipe.teacher}" if e.recipe.teacher else ""))
    K = num_classes(f"zoo:{base}")
    if w is not None and not K:
        raise ValueError(f"zoo:{entry}: guidance (@w=) needs a class-conditional teacher; "
                         f"{base} has no class labels")
    D: Denoiser = zoo.load(base)
    guided = ""
    if K:
        D = GuidedRows(D, K, w or 0.0)
        guided = (f"; class-balanced ({K} classes, row i of class i mod {K}), guidance w="
                  f"{w or 0:g} ((1+w) D_c - w D_u, {1 if not w else 2} evaluations per row)")
    description = (f"{e.recipe.description}; {e.recipe.steps} steps, {e.cost.seconds:.0f} s to "
                   f"train (fewstep.zoo recipe {base}); weights sha256 {e.sha256[:12]}{guided}")
    if e.latent is None:
        return trained_teacher(f"zoo:{entry}", D, e.recipe.data, num_classes=K,
                               description=description)
    from ..latent import space

    return latent_teacher(f"zoo:{entry}", D, space(base), e.recipe.data, num_classes=K,
                          description=description)


def latent_teacher(name: str, denoiser: Denoiser, latent: Any, data_name: str, *,
                   num_classes: int = 0, description: str = "") -> Teacher:
    """A denoiser in the latent space ``latent`` (a :class:`fewstep.latent.LatentSpace`, or
    anything with ``shape``, one latent's shape, and ``decode``) as a teacher: it samples
    latents of that shape, which are decoded before they are scored against the test split of
    ``data_name`` (class-balanced for a ``num_classes``-class teacher, as
    :func:`trained_teacher`)."""
    pixel = trained_teacher(name, denoiser, data_name, num_classes=num_classes,
                            description=description)
    return dataclasses.replace(pixel, sample_shape=tuple(latent.shape), decode=latent.decode,
                               description=f"{pixel.description}; latent samples "
                               f"{tuple(latent.shape)}, decoded before scoring")


def checkpoint_teacher(path: str) -> Teacher:
    """The EMA denoiser of a ``fewstep train`` run directory or checkpoint at ``path``, scored
    against the built-in data set its record names."""
    from ..train import checkpoint_info, load_checkpoint

    try:
        info = checkpoint_info(path)
    except FileNotFoundError:
        raise ValueError(f"checkpoint:{path}: no checkpoint there (neither a checkpoint "
                         "directory nor a training run with checkpoints)") from None
    name = info.get("dataset")
    if name is None or name not in data.available():
        raise ValueError(f"checkpoint:{path} records no built-in data set (trained on tensors "
                         "or by an older fewstep); wrap it as python:MODULE:ATTR with a "
                         "sample_shape")
    return trained_teacher(f"checkpoint:{path}", load_checkpoint(path), name, description=(
        f"{info['method']['name']} model trained by fewstep at {path} ({info['step']} steps, "
        f"{info['cost']['seconds']:.0f} s)"))


def import_attr(spec: str) -> Any:
    """``MODULE:ATTR`` (ATTR may be dotted) imported; ValueError naming what is missing."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"python:{spec}: expected python:MODULE:ATTR, e.g. "
                         "python:my_models:teacher")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"python:{spec}: cannot import module {module!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"python:{spec}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def is_factory(obj: Any) -> bool:
    """True for a callable that takes no required arguments (a class or a function that
    builds the model), False for a denoiser ``D(x, sigma, ...)``."""
    if not callable(obj):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                       p.KEYWORD_ONLY)
                   for p in sig.parameters.values())


def python_teacher(spec: str) -> Teacher:
    """``python:MODULE:ATTR`` as a teacher (see the module docstring for what ATTR may be)."""
    name = f"python:{spec}"
    obj = import_attr(spec)
    if is_factory(obj) and not isinstance(obj, Teacher):
        obj = obj()
    if isinstance(obj, Teacher):
        return dataclasses.replace(obj, name=name)
    if not callable(obj):
        raise ValueError(f"{name} is a {type(obj).__name__}, not a Teacher, a factory or a "
                         "denoiser D(x, sigma, **cond)")
    shape = getattr(obj, "sample_shape", None)
    data_name = getattr(obj, "data", None)
    if shape is None and data_name is None:
        raise ValueError(f"{name}: a denoiser needs a sample_shape attribute (one sample's "
                         "shape) or a data attribute naming a built-in data set")
    return trained_teacher(name, obj, data_name,
                           sample_shape=None if shape is None else tuple(shape),
                           sigma_min=float(getattr(obj, "sigma_min", SIGMA_MIN)),
                           sigma_max=float(getattr(obj, "sigma_max", SIGMA_MAX)),
                           description=f"user denoiser {name}")


PREFIXES: dict[str, Callable[[str], Teacher]] = {
    "diffusers": diffusers_teacher, "checkpoint": checkpoint_teacher,
    "python": python_teacher, "zoo": zoo_teacher}


def _mixture_teacher(name: str, dim: int, components: int, seed: int) -> Teacher:
    gm = GaussianMixture.random(dim, components, spread=1.0, std=0.25, seed=seed).float()
    means, variances = cast(Tensor, gm.means), cast(Tensor, gm.variances)  # buffers

    def reference(n: int, s: int) -> Tensor:
        return cast(Tensor, gm.sample(n, generator=torch.Generator().manual_seed(10_000 + s)))

    stds = variances.sqrt().max(1).values
    return Teacher(name, gm, (dim,), 0.002, 80.0, reference, log_prob=gm.log_prob,
                   modes=(means, stds),
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


def _register_zoo() -> None:
    """Every built zoo teacher as ``zoo:NAME`` (built lazily, on first use)."""
    from .. import zoo

    for name in zoo.available():
        if zoo.RECIPES[name].role == "teacher" and zoo.built(name):
            register(f"zoo:{name}", functools.partial(zoo_teacher, name))


_register_zoo()
