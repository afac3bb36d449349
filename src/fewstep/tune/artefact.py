"""A tuned solver is an artefact: a directory holding ``tuned.json`` (what was tuned, on which
teacher, at what cost, how well it validated) and ``tensors.safetensors`` (the schedule and,
for learned solvers, the evaluation sigmas, multistep weights and x weights, float64).

It loads by path wherever a solver name goes: :func:`fewstep.solvers.get` returns its
:class:`~fewstep.solvers.SolverSpec`, :func:`fewstep.solvers.plan` its sigmas at exactly its
NFE, :func:`fewstep.solvers.sample` checks the teacher, the bench runs ``tuned:PATH`` and
:class:`~fewstep.interop.FewstepScheduler` drives the diffusers model it was tuned on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..solvers.driver import SolverFunction
from ..solvers.registry import Plan, SolverSpec
from ..solvers.registry import get as get_solver
from .solver import lms_steps

__all__ = ["FORMAT", "LEARNED_BASE", "TunedSolver", "fingerprint", "is_tuned_path", "load",
           "nest_knobs"]

FORMAT = "fewstep-tuned/1"
LEARNED_BASE = "lms"  # the base of solvers with learned weights: fewstep.tune.solver.lms_steps
_JSON, _TENSORS = "tuned.json", "tensors.safetensors"
_KNOB = "knob:"  # the prefix of knob_tensors in the safetensors file


# per module object: (each tensor's storage and in-place version, its fingerprint)
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[int, int], ...], str]] \
    = weakref.WeakKeyDictionary()


def fingerprint(denoiser: Any) -> str:
    """A teacher's identity: SHA-256 (16 hex digits) of its class and, for a module, every
    parameter and buffer (as float32, so a float64 copy of a teacher is the same teacher).
    A module's fingerprint is cached on the object until one of its tensors is replaced or
    changed in place (the bench checks a tuned solver's teacher at every case's set-up)."""
    if not isinstance(denoiser, nn.Module):
        return _hash(denoiser, {})
    state = denoiser.state_dict(keep_vars=True)
    versions = tuple((t.data_ptr(), t._version) for t in state.values())
    cached = _FINGERPRINTS.get(denoiser)
    if cached is not None and cached[0] == versions:
        return cached[1]
    found = _hash(denoiser, state)
    _FINGERPRINTS[denoiser] = (versions, found)
    return found


def _hash(denoiser: Any, state: dict[str, Tensor]) -> str:
    h = hashlib.sha256(f"{type(denoiser).__module__}.{type(denoiser).__qualname__}".encode())
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TunedSolver:
    """One tuned solver: ``base`` is a registered multistep solver run on the tuned ``sigmas``
    (schedule searches), or ``"lms"``, the learned multistep solver of
    :mod:`fewstep.tune.solver` with its ``weights`` (n, K), ``eval_sigmas`` (n) and
    ``x_weights`` (n).

    ``sigmas`` has ``nfe + 1`` entries ending in 0 (float64). ``val_loss`` and
    ``base_val_loss`` are ode_rmse on the validation set of the tuned solver and of the
    untuned starting point; ``teacher_rows`` counts teacher evaluations summed over samples
    (references included unless they came from the cache)."""

    method: str
    base: str
    nfe: int
    sigmas: Tensor
    teacher: str
    teacher_fingerprint: str
    n_cal: int
    n_val: int
    val_loss: float
    base_val_loss: float
    tuning_seconds: float
    teacher_rows: int
    eval_sigmas: Tensor | None = None
    weights: Tensor | None = None
    x_weights: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # method settings, seeds, init schedule
    # further knobs of the base solver as tensors, ``"knob"`` or ``"knob.key"`` (a mapping
    # knob): DPM-Solver-v3's ``statistics.l``, PAS's ``coords``
    knob_tensors: dict[str, Tensor] = field(default_factory=dict)
    knob_values: dict[str, Any] = field(default_factory=dict)  # JSON knobs, e.g. pseudo-order

    def __post_init__(self) -> None:
        if len(self.sigmas) != self.nfe + 1 or float(self.sigmas[-1]) != 0:
            raise ValueError(f"a tuned solver of NFE {self.nfe} needs {self.nfe + 1} sigmas "
                             f"ending in 0; got {self.sigmas.tolist()}")
        if (self.base == LEARNED_BASE) != (self.weights is not None):
            raise ValueError(f"weights are given exactly when the base is {LEARNED_BASE!r}")

    @property
    def knobs(self) -> dict[str, Any]:
        """The knobs the solver runs with (the learned weights and evaluation sigmas)."""
        out: dict[str, Any] = {}
        if self.weights is not None:
            out = {"weights": self.weights, "eval_sigmas": self.eval_sigmas,
                   "x_weights": self.x_weights}
        return {**out, **nest_knobs(self.knob_tensors), **self.knob_values}

    def plan(self, nfe: int, name: str = "tuned") -> Plan:
        """Its sigmas (the knobs are its spec's defaults) under solver name ``name``;
        ``ValueError`` unless ``nfe`` is the NFE it was tuned for."""
        if nfe != self.nfe:
            raise ValueError(f"tuned solver {name} ({self.method} on {self.base}) spends "
                             f"exactly NFE {self.nfe}; got nfe={nfe!r}")
        return Plan(name, self.nfe, self.sigmas.clone(), {})

    def spec(self, name: str) -> SolverSpec:
        """The registry entry this tuned solver runs as (its knobs are the entry's defaults),
        named ``name``; ``ValueError`` if its base solver is unknown or not multistep."""
        ref = f"tuned by fewstep.tune ({self.method}): {self.describe()}"
        if self.base == LEARNED_BASE:
            return SolverSpec(name, SolverFunction(lms_steps, "sample_lms"), order=2,
                              kind="multistep", stochastic=False, min_nfe=self.nfe,
                              defaults=self.knobs, reference=ref, tuned=self)
        base = get_solver(self.base)
        if base.kind != "multistep" or base.stochastic:
            raise ValueError(f"tuned solver base {self.base!r} must be a deterministic "
                             f"multistep solver; it is {base.kind}")
        return dataclasses.replace(base, name=name, min_nfe=self.nfe, reference=ref,
                                   alias_of=None, tuned=self,
                                   defaults={**base.defaults, **self.knobs})

    def save(self, path: str | Path) -> Path:
        """Write the artefact directory atomically (a complete directory or none; an existing
        one is replaced). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            tensors = {"sigmas": self.sigmas.double().contiguous()}
            for k in ("eval_sigmas", "weights", "x_weights"):
                v = getattr(self, k)
                if v is not None:
                    tensors[k] = v.double().contiguous()
            tensors.update({f"{_KNOB}{k}": v.double().contiguous()
                            for k, v in self.knob_tensors.items()})
            save_file(tensors, str(tmp / _TENSORS))
            meta = {k: v for k, v in dataclasses.asdict(self).items()
                    if not isinstance(v, Tensor) and v is not None and k != "knob_tensors"}
            (tmp / _JSON).write_text(json.dumps({"format": FORMAT, **meta}, indent=1) + "\n")
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / "x")
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def check_teacher(self, denoiser: Any, name: str | None = None) -> None:
        """Raise ``ValueError`` in one line if ``denoiser`` is not the teacher this solver was
        tuned on."""
        got = fingerprint(denoiser)
        if got != self.teacher_fingerprint:
            raise ValueError(f"tuned solver {self.method}/{self.base} (NFE {self.nfe}) was tuned "
                             f"on teacher {self.teacher!r} (fingerprint "
                             f"{self.teacher_fingerprint}); this teacher"
                             f"{f' {name!r}' if name else ''} has fingerprint {got}")

    def describe(self) -> str:
        """One line: method, base, NFE, teacher, validation loss vs untuned, cost."""
        return (f"{self.method} on {self.base}, NFE {self.nfe}, teacher {self.teacher}: "
                f"val ode_rmse {self.val_loss:.4g} (untuned {self.base_val_loss:.4g}), tuned in "
                f"{self.tuning_seconds:.1f} s, {self.teacher_rows} teacher evaluations"
                + (f"; {self.info['fallback']}" if "fallback" in self.info else ""))


def nest_knobs(knob_tensors: dict[str, Any]) -> dict[str, Any]:
    """Solver knobs from flat tensor names: ``"knob"`` is a tensor knob, ``"knob.key"`` an entry
    of the mapping knob ``knob`` (e.g. DPM-Solver-v3's ``statistics``)."""
    out: dict[str, Any] = {}
    for name, t in knob_tensors.items():
        knob, _, key = name.partition(".")
        if key:
            out.setdefault(knob, {})[key] = t
        else:
            out[knob] = t
    return out


def is_tuned_path(name: str) -> bool:
    """Whether a solver name is meant as a tuned-solver path (``tuned:PATH``, or a name with a
    path separator, or an existing directory)."""
    return name.startswith("tuned:") or os.sep in name or "/" in name or Path(name).is_dir()


def load(path: str | Path) -> TunedSolver:
    """Read a tuned solver directory (``tuned:`` prefix allowed); repeated loads of an unchanged
    directory are served from memory. Raises ``ValueError`` in one line naming the path when
    it does not exist or is not a tuned solver."""
    path = Path(str(path).removeprefix("tuned:"))
    if not path.exists():
        raise ValueError(f"tuned solver {str(path)!r} does not exist; make one with "
                         "`fewstep tune`")
    if not (path / _JSON).is_file() or not (path / _TENSORS).is_file():
        raise ValueError(f"{str(path)!r} is not a tuned solver (no {_JSON} and {_TENSORS}); "
                         "make one with `fewstep tune`")
    stamp = tuple((path / f).stat().st_mtime_ns for f in (_JSON, _TENSORS))
    return _load(str(path.resolve()), stamp)


@functools.lru_cache(maxsize=64)
def _load(where: str, stamp: tuple[int, ...]) -> TunedSolver:
    path = Path(where)
    try:
        meta = json.loads((path / _JSON).read_text())
        tensors = load_file(str(path / _TENSORS))
    except (OSError, ValueError, RuntimeError) as e:  # truncated JSON or safetensors
        raise ValueError(f"cannot read tuned solver {str(path)!r}: {e}") from None
    if meta.pop("format", None) != FORMAT:
        raise ValueError(f"{str(path)!r} is not a {FORMAT} tuned solver")
    names = {f.name for f in dataclasses.fields(TunedSolver)}
    try:
        fields: dict[str, Any] = {k: v for k, v in meta.items() if k in names}
        fields.update({k: v for k, v in tensors.items() if not k.startswith(_KNOB)})
        fields["knob_tensors"] = {k.removeprefix(_KNOB): v for k, v in tensors.items()
                                  if k.startswith(_KNOB)}
        return TunedSolver(**fields)
    except TypeError as e:
        raise ValueError(f"tuned solver {str(path)!r} is incomplete: {e}") from None


