"""The zoo: small trained teachers and students, each made by a recipe in the repository.

Each entry is a :class:`~fewstep.zoo.recipes.Recipe` and, once built, a record beside its
weights in the package (``fewstep/zoo/weights/NAME.json`` and ``NAME.safetensors``: the EMA
weights). The record holds the recipe, the architecture spec, the sha256 of the weights file and
the training cost (optimiser steps, seconds, teacher evaluations in full-batch units), so an
entry loads without any download and a student's bench row can say what it cost to make.

    >>> from fewstep import zoo
    >>> D = zoo.load("checkerboard-edm")          # a denoiser D(x, sigma)
    >>> zoo.entry("checkerboard-cd").cost.seconds  # what the student cost to train

:func:`build` reruns a recipe (resuming an interrupted build from its run directory) and
returns the new record; CPU training with one thread is deterministic, so on the machine and
torch build that recorded an entry the rebuilt weights hash the same (``fewstep zoo build``
checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import atomic_write
from .recipes import RECIPES, SIGMA_MIN, Recipe, recipe

__all__ = ["RECIPES", "Entry", "Recipe", "available", "build", "built",
           "entry", "load", "recipe", "sha256", "weights_dir"]



@dataclass(frozen=True)
class Cost:
    """What making an entry spent: optimiser steps, wall-clock seconds, and teacher network
    evaluations in units of one full training batch (``recipe.batch_size`` rows)."""

    steps: int
    seconds: float
    teacher_nfe: float


@dataclass(frozen=True)
class Entry:
    """A built zoo entry: its recipe, architecture, weights hash and training cost."""

    name: str
    recipe: Recipe
    model: dict[str, Any]  # fewstep.nets spec of the whole (preconditioned) denoiser
    method: dict[str, Any]  # {"name", "params"}: the method as trained (all its fields)
    sha256: str  # of the weights file
    cost: Cost
    weights: Path
    environment: dict[str, Any]  # torch version and threads of the build
    latent: dict[str, Any] | None = None  # a latent teacher's {"autoencoder", "scale"}

    @property
    def parameters(self) -> int:
        """Number of weights."""
        return sum(t.numel() for t in load_file(self.weights).values())


def weights_dir() -> Path:
    """Where the package keeps built entries."""
    return Path(str(resources.files("fewstep.zoo") / "weights"))


def available() -> list[str]:
    """Every recipe name, teachers first (built or not; see :func:`built`)."""
    return sorted(RECIPES, key=lambda n: (RECIPES[n].role != "teacher", n))


def built(name: str, root: Path | None = None) -> bool:
    """Whether ``name`` has a record and weights in ``root`` (default: the package)."""
    root = weights_dir() if root is None else root
    return (root / f"{name}.json").is_file() and (root / f"{name}.safetensors").is_file()


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def entry(name: str, root: Path | None = None) -> Entry:
    """The record of a built entry in ``root`` (default: the package), with the recipe it was
    built from; ValueError naming the entry if it is unknown or not built."""
    root = weights_dir() if root is None else root
    if not built(name, root):
        recipe(name)  # an unknown name is named as such
        raise ValueError(f"zoo entry {name!r} is not built in {root}; build it with "
                         f"`fewstep zoo build {name}`")
    rec = json.loads((root / f"{name}.json").read_text())
    return Entry(name, Recipe(**rec["recipe"]), rec["model"], rec["method"], rec["sha256"],
                 Cost(**rec["cost"]), root / f"{name}.safetensors", rec.get("environment", {}),
                 rec.get("latent"))


@functools.cache
def load(name: str, root: Path | None = None) -> nn.Module:
    """The denoiser of a built entry (EMA weights; CPU, eval mode, frozen). Raises ValueError
    if the weights file does not hash to the recorded sha256."""
    from ..nets.spec import build_model

    e = entry(name, root)
    if (found := sha256(e.weights)) != e.sha256:
        raise ValueError(f"zoo entry {name!r}: {e.weights} has sha256 {found[:12]}..., the "
                         f"record says {e.sha256[:12]}...; rebuild it (fewstep zoo build {name})")
    model = build_model(e.model)
    model.load_state_dict(load_file(e.weights))
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Intra-op threads pinned to 1 (a fixed reduction order), restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _template(r: Recipe) -> nn.Module:
    """The untrained network of a recipe, initialised from its seed: the backbone wrapped as
    its method's :func:`~fewstep.distill.network_kind` says (the backbone itself for
    :data:`~fewstep.distill.WHOLE_NETWORKS`)."""
    from ..distill import WHOLE_NETWORKS, network_kind
    from ..nets import ConsistencyPrecond, EDMPrecond, FlowPrecond
    from ..nets.spec import build_model

    torch.manual_seed(r.seed)
    net = build_model(dict(r.backbone))
    kind = network_kind(r.method)
    if kind in WHOLE_NETWORKS:
        return net
    if kind == "consistency":
        return ConsistencyPrecond(net, SIGMA_MIN, r.sigma_data)
    return FlowPrecond(net) if kind == "velocity" else EDMPrecond(net, r.sigma_data)


def _method(r: Recipe) -> Any:
    from ..distill import get_method

    cls = get_method(r.method)
    params = dict(r.params)
    if "total_steps" in {f.name for f in dataclasses.fields(cls)}:
        params.setdefault("total_steps", r.steps)
    method = cls(**params)
    fixed = getattr(method, "total_steps", r.steps)
    if fixed != r.steps:
        raise ValueError(f"recipe {r.name!r}: steps={r.steps} but {r.method}'s schedule spans "
                         f"{fixed} steps")
    return method


def build(name: str | Recipe, out: str | Path, *, teacher_root: Path | None = None,
          progress: bool = False) -> Entry:
    """Train the recipe ``name`` with one CPU thread and write ``out/NAME.safetensors`` (EMA
    weights) and ``out/NAME.json`` (the record) atomically; the run directory
    ``out/runs/NAME`` keeps checkpoints, so an interrupted build resumes. A student's teacher
    is the built entry in ``teacher_root`` (default: the package)."""
    from ..nets.spec import model_spec
    from ..train import TrainConfig, train

    r = name if isinstance(name, Recipe) else recipe(name)
    out = Path(out)
    method = _method(r)
    teacher = load(r.teacher, teacher_root) if r.teacher else None
    config = TrainConfig(steps=r.steps, batch_size=r.batch_size, lr=r.lr, betas=r.betas,
                         grad_clip=r.grad_clip, ema_decay=r.ema_decay,
                         warmup_steps=r.warmup_steps, seed=r.seed, data_n=r.data_n,
                         out_dir=str(out / "runs" / r.name), checkpoint_every=100,
                         keep_checkpoints=1, progress=progress)
    with _one_thread():
        data, latent = _training_data(r, teacher_root)
        student = method.init_student(teacher, _template(r))
        result = train(method, student, data, config, teacher=teacher)
    weights = out / f"{r.name}.safetensors"
    model = _sampler(result.ema)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    cost = {**dataclasses.asdict(result.cost), "seconds": round(result.cost.seconds, 2)}
    record = {"name": r.name, "recipe": _jsonable(r), "model": model_spec(model),
              "method": {"name": method.name, "params": _jsonable(method)},
              "sha256": sha256(weights), "cost": cost,
              "environment": {"torch": torch.__version__, "threads": 1, "device": "cpu"}}
    if latent is not None:
        record["latent"] = latent
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    atomic_write(out / f"{r.name}.json", lambda tmp: tmp.write_text(text))
    entry.cache_clear()
    load.cache_clear()
    return entry(r.name, out)


def _sampler(model: nn.Module) -> nn.Module:
    """What an entry keeps of a trained model: the generator of a generator/discriminator pair
    (DDGAN, SIDDM, UFOGen, ADD; the discriminator only trains it), else the model."""
    from ..distill import AdversarialPair

    return model.generator if isinstance(model, AdversarialPair) else model


def _training_data(r: Recipe, root: Path | None) -> tuple[Any, dict[str, Any] | None]:
    """A recipe's training data: its data set's name; for a class-conditional backbone
    (``num_classes`` > 0) its labelled train split ``{"x", "cond"}``; for a latent teacher the
    train split encoded by its zoo autoencoder in ``root`` (labels kept), with the record's
    ``latent`` field ``{"autoencoder", "scale"}``."""
    if r.autoencoder is not None:
        from ..latent import encode_data, space

        latent = space(r.autoencoder, root)
        return encode_data(latent, r.data), {"autoencoder": r.autoencoder,
                                             "scale": latent.scale}
    if not r.backbone.get("kwargs", {}).get("num_classes"):
        return r.data, None
    from .. import data

    return data.get(r.data).load_labelled("train", n=r.data_n, seed=r.seed), None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
