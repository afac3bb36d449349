"""The one training loop shared by every method (Hugging Face Accelerate: CPU, one GPU or
many with the same code).

``train(method, student, data, config, teacher=...)`` runs ``config.steps`` optimiser steps of
``method.loss`` with EMA weights (EDM's half-life with ramp-up), gradient clipping, optional
mixed precision, JSONL loss logging and a tqdm bar. Checkpoints
(``out_dir/checkpoints/step_XXXXXXXX/``) hold the model and EMA weights (safetensors), the
method state, the optimiser and RNG states, and a JSON record (run id, config, method,
architecture spec, data fingerprint, built-in data set name, step, training cost); each is
written to a temporary directory and renamed into place, so a checkpoint is either complete or
absent.

A run directory holds one run: ``out_dir/run.json`` names it, every checkpoint records its id,
and "latest" and rotation only see the current run's checkpoints. Re-running with the same
``out_dir`` resumes from the latest checkpoint and, on CPU, gives bitwise the same weights as
an uninterrupted run: data order is a pure function of (seed, step) and every other random
draw comes from the checkpointed generator. A resumption must use the recorded settings
(config, method parameters, architecture, data), except the fields in ``RESUMABLE_CHANGES``;
a fresh run (``resume=False``) in a directory that holds one needs ``overwrite=True``. Debris of
killed runs (half-written or half-deleted checkpoints) is removed, with a warning, on start.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._io import atomic_write
from .denoiser import NonFiniteError
from .distill.base import Batch, LossContext, Method, ema_update_
from .nets.spec import build_model, model_spec

__all__ = [
    "LEGACY_DEFAULTS",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "TrainCost",
    "TrainResult",
    "checkpoint_info",
    "ema_beta",
    "latest_checkpoint",
    "load_checkpoint",
    "train",
]

FORMAT = 1
MIXED_PRECISION = ("no", "fp16", "bf16")
# Config fields that may change between a run and its resumption: none of them changes a step's
# arithmetic (``steps`` only extends or shortens the run; no schedule of the loop depends on it).
# Everything else the checkpoint records (other config fields, every method parameter, hence
# derived schedules such as iCT's curriculum over ``total_steps``, the architecture and the data)
# must match, or the resumption is refused naming each changed field.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "log_every",
                               "progress", "out_dir", "resume", "overwrite"})
# Config fields added after checkpoints were first written, with the value every run had before
# the field existed: a checkpoint that does not record one resumes as if it recorded this.
LEGACY_DEFAULTS: dict[str, Any] = {"ema_rampup": None}  # constant ema_decay (commit aa8b107)
RUN_FILE = "run.json"  # the current run's id
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "state.safetensors",
                    "train_state.pt", "checkpoint.json")  # checkpoint.json is written last

Data = Tensor | Mapping[str, Tensor] | str
Callback = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the loop (not of the method)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up
    ema_decay: float = 0.999  # per-step EMA decay once ramped up (half-life ln 0.5 / ln decay)
    ema_rampup: float | None = 0.05  # half-life <= ema_rampup * steps so far; None: constant
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"
    checkpoint_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 100
    seed: int = 0
    out_dir: str | None = None  # None: no checkpoints or logs
    resume: bool = True  # resume from the latest checkpoint in out_dir, if any
    overwrite: bool = False  # with resume=False: replace a run already in out_dir
    progress: bool = True
    data_n: int | None = None  # samples loaded from a built-in data set (None: its default)

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}; "
                             f"got {self.mixed_precision!r}")
        for name in ("steps", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.batch_size < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("batch_size, log_every and keep_checkpoints must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay}")
        if self.ema_rampup is not None and not self.ema_rampup > 0:
            raise ValueError(f"ema_rampup must be > 0 or None; got {self.ema_rampup}")
        if self.overwrite and self.resume:
            raise ValueError("overwrite=True starts a new run in place of the old one: it "
                             "needs resume=False")


@dataclass(frozen=True)
class TrainCost:
    """What training spent: optimiser steps, wall-clock seconds (summed over resumptions) and
    teacher evaluations in units of one full-batch evaluation (see :class:`LossContext`)."""

    steps: int = 0
    seconds: float = 0.0
    teacher_nfe: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """The trained student and its EMA (both denoisers, in eval mode) and what it cost."""

    student: nn.Module
    ema: nn.Module
    cost: TrainCost
    checkpoint: Path | None = None


# ---------------------------------------------------------------------------------- data


def _load_data(data: Data, config: TrainConfig) -> Tensor | dict[str, Tensor]:
    if isinstance(data, str):
        from . import data as datasets

        return datasets.get(data).load("train", n=config.data_n, seed=config.seed)
    if isinstance(data, Tensor):
        return data
    if isinstance(data, Mapping) and "x" in data:
        n = {k: v.shape[0] for k, v in data.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"all tensors of a dict data set need the same length; got {n}")
        return dict(data)
    raise TypeError("data must be a tensor of samples, a dict with samples under 'x' (other keys "
                    f"are conditioning), or a built-in data set name; got {type(data).__name__}")


def _length(data: Tensor | dict[str, Tensor]) -> int:
    return len(data["x"] if isinstance(data, dict) else data)


def _fingerprint(data: Tensor | dict[str, Tensor]) -> str:
    """A hash of the training data, so a resumed run can check it sees the same samples."""
    h = hashlib.sha256()
    items = sorted(data.items()) if isinstance(data, dict) else [("x", data)]
    for k, v in items:
        v = v.detach().cpu().contiguous()
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _Batches:
    """Batch ``step`` of an endless stream of epochs, each a permutation seeded by (seed,
    epoch): the data order depends only on the step, which makes resumption exact."""

    def __init__(self, data: Tensor | dict[str, Tensor], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.data, self.n, self.batch_size = data, _length(data), batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self._perm: dict[int, Tensor] = {}

    def _epoch(self, e: int) -> Tensor:
        if e not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._perm = {k: v for k, v in self._perm.items() if k == e - 1}
            self._perm[e] = torch.randperm(self.n, generator=g)
        return self._perm[e]

    def __call__(self, step: int) -> Batch:
        start = (step * self.world + self.rank) * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        idx = torch.cat([self._epoch(int(e))[pos[pos // self.n == e] % self.n]
                         for e in torch.unique(pos // self.n)])
        if isinstance(self.data, dict):
            return {k: v[idx.to(v.device)] for k, v in self.data.items()}
        return self.data[idx.to(self.data.device)]


# ---------------------------------------------------------------------------- checkpoints


def _cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}


def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str], dict[str, Any]]:
    """Method state -> (tensors for safetensors, module keys, JSON values)."""
    tensors: dict[str, Tensor] = {}
    modules: list[str] = []
    values: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            tensors[f"tensor/{k}"] = v
        elif isinstance(v, nn.Module):
            modules.append(k)
            tensors.update({f"module/{k}/{n}": t for n, t in v.state_dict().items()})
        else:
            try:
                json.dumps(v)
            except TypeError:
                raise TypeError(f"LossContext.state[{k!r}] of type {type(v).__name__} cannot be "
                                "checkpointed; use a tensor, a module or a JSON value") from None
            values[k] = v
    return tensors, modules, values


def _join_state(tensors: Mapping[str, Tensor], modules: list[str], values: Mapping[str, Any],
                student: nn.Module, device: torch.device) -> dict[str, Any]:
    """Inverse of :func:`_split_state`; modules are rebuilt as frozen copies of the student."""
    state: dict[str, Any] = dict(values)
    for key, t in tensors.items():
        if key.startswith("tensor/"):
            state[key[len("tensor/"):]] = t.to(device)
    for k in modules:
        prefix = f"module/{k}/"
        m = copy.deepcopy(student)
        m.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
        state[k] = m.to(device).eval().requires_grad_(False)
    return state


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return repr(obj)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _discard(path: Path) -> None:
    """Remove a file or directory so that it vanishes at once: rename it to a ``.old-`` name
    beside it (atomic), then delete that; a kill in between leaves debris that the next start
    removes (:func:`_remove_debris`)."""
    trash = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def _write_checkpoint(root: Path, step: int, files: Callable[[Path], None], keep: int,
                      run: str | None) -> Path:
    """Write a checkpoint into a temporary directory, rename it to ``step_XXXXXXXX``, then
    delete all but the ``keep`` newest checkpoints of ``run`` (never the one just written)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        files(tmp)
        _fsync_tree(tmp)
        if final.exists():  # an earlier run wrote this step: swap it out, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    others = [p for p in _checkpoints(root, run) if p != final]
    for stale in others[:max(0, len(others) - (keep - 1))]:  # all while fewer than keep
        _discard(stale)
    return final


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in CHECKPOINT_FILES)


def _run_of(path: Path) -> str | None:
    """The run id a checkpoint records (None: written before run ids)."""
    return json.loads((path / "checkpoint.json").read_text()).get("run")


_ANY_RUN = object()


def _checkpoints(root: Path, run: Any = _ANY_RUN) -> list[Path]:
    """Complete checkpoints under ``root`` (of run id ``run`` if given), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
             and p.name[len("step_"):].isdigit() and _complete(p)]
    if run is not _ANY_RUN:
        found = [p for p in found if _run_of(p) == run]
    return sorted(found, key=lambda p: int(p.name[len("step_"):]))


def _current_run(out: Path) -> str | None:
    """The id of the run ``out`` holds: the one in ``run.json``, else (a run directory written
    before run ids) the one its newest checkpoint records."""
    if (out / RUN_FILE).is_file():
        return json.loads((out / RUN_FILE).read_text())["run"]
    found = _checkpoints(out / "checkpoints")
    return _run_of(found[-1]) if found else None


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of the run in ``out_dir``, or None."""
    out = Path(out_dir)
    found = _checkpoints(out / "checkpoints", _current_run(out))
    return found[-1] if found else None


def _remove_debris(out: Path, run: str | None) -> None:
    """Delete, with a warning naming them, what killed runs left in ``out`` and
    ``out/checkpoints``: half-written (``.tmp-*``, ``.*.tmp``) and half-deleted (``.old-*``)
    files and directories, ``step_*`` folders missing a file, and checkpoints of another run
    than ``run``."""
    root = out / "checkpoints"
    debris = []
    for p in sorted([*out.iterdir(), *(root.iterdir() if root.is_dir() else [])]):
        if p.name.startswith((".tmp-", ".old-")) or (p.name.startswith(".")
                                                      and p.name.endswith(".tmp")):
            debris.append((p, "interrupted write or delete"))
        elif p.parent == root and p.is_dir() and p.name.startswith("step_"):
            if not _complete(p):
                debris.append((p, "incomplete checkpoint"))
            elif _run_of(p) != run:
                debris.append((p, "checkpoint of a replaced run"))
    for p, _ in debris:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if debris:
        warnings.warn(f"removed debris of interrupted runs in {out}: " + ", ".join(
            f"{p.relative_to(out)} ({why})" for p, why in debris), stacklevel=3)


def _refuse_fresh_start(out: Path, config: TrainConfig) -> None:
    """A fresh run (``resume=False``) over a run that ``out`` holds needs ``overwrite=True``."""
    log = out / "log.jsonl"
    found = _checkpoints(out / "checkpoints")
    if config.resume or config.overwrite or not (found or (log.is_file() and log.stat().st_size)):
        return
    what = f"checkpoints up to {found[-1].name}" if found else "a loss log"
    raise ValueError(f"{out} already holds a training run ({what}); resume it (resume=True), "
                     "replace it (overwrite=True; CLI: --overwrite) or use another out_dir")


def _open_run_dir(out: Path, config: TrainConfig) -> None:
    """Settle which run ``out`` holds (``run.json``: a new id for a fresh run, written before
    a replaced run is discarded), discard a replaced run, and remove debris."""
    log = out / "log.jsonl"
    run: str | None
    if not config.resume:
        run = uuid.uuid4().hex
    else:
        run = _current_run(out)
        if run is None and not _checkpoints(out / "checkpoints", None):
            run = uuid.uuid4().hex  # None: resuming a run written before run ids
    if not config.resume or not (out / RUN_FILE).is_file():
        atomic_write(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps({"run": run})))
    if not config.resume:
        for old in (out / "checkpoints", log):
            if old.exists():
                _discard(old)
    _remove_debris(out, run)


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if (path / "checkpoint.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path} (neither a checkpoint directory nor a "
                                "training run with checkpoints)")
    return latest


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a checkpoint (or of the latest one of a run): config, method, model
    spec, step and ``cost`` (steps, seconds, teacher_nfe)."""
    return json.loads((_resolve(path) / "checkpoint.json").read_text())


def load_checkpoint(path: str | os.PathLike, *, weights: str = "ema",
                    model: nn.Module | None = None) -> nn.Module:
    """A trained denoiser from a checkpoint directory or a run's ``out_dir`` (its latest
    checkpoint): ``weights`` "ema" or "model", loaded into ``model`` if given, else into the
    architecture rebuilt from the recorded spec. Returned on CPU in eval mode, frozen."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model'; got {weights!r}")
    path = _resolve(path)
    info = json.loads((path / "checkpoint.json").read_text())
    if model is None:
        if info.get("model") is None:
            raise ValueError(f"{path} records no buildable architecture (the student was not "
                             "built from fewstep.nets); pass model=<an instance to load into>")
        model = build_model(info["model"])
    model.load_state_dict(load_file(path / f"{weights}.safetensors"))
    return model.eval().requires_grad_(False)


def ema_beta(step: int, decay: float, rampup: float | None) -> float:
    """EMA decay of the update after optimiser step ``step`` (0-based), as EDM's
    ``training/training_loop.py`` (Karras et al. 2022) with the half-life counted in steps:
    ``beta = 0.5 ** (1 / max(h, 1e-8))`` with ``h = min(H, step * rampup)`` and
    ``H = ln 0.5 / ln decay``, so the EMA averages over about the last ``rampup`` fraction of a
    short run and reaches ``decay`` after ``H / rampup`` steps (``rampup`` None: ``decay``)."""
    if rampup is None or decay == 0:
        return decay
    halflife = min(math.log(0.5) / math.log(decay), step * rampup)
    return 0.5 ** (1 / max(halflife, 1e-8))


# ------------------------------------------------------------------------------------ loop


def _accelerator(mixed_precision: str) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError as err:  # a single-process run in this interpreter used another precision
        if "already been initialized" not in str(err) or AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=mixed_precision)


def _lr(config: TrainConfig, step: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


@dataclass
class _Run:
    """Mutable state of one run that a checkpoint stores."""

    config: TrainConfig
    method: Method
    student: nn.Module  # unwrapped
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    ctx: LossContext
    fingerprint: str
    run_id: str | None = None  # the run the checkpoints belong to (see run.json)
    dataset: str | None = None  # the built-in data set's name, when trained on one
    step: int = 0
    seconds: float = 0.0

    def cost(self, t0: float) -> TrainCost:
        return TrainCost(self.step, self.seconds + time.perf_counter() - t0, self.ctx.teacher_nfe)

    def record(self, cost: TrainCost, modules: list[str], values: dict[str, Any]) -> dict:
        return {"format": FORMAT, "run": self.run_id, "step": self.step,
                "cost": dataclasses.asdict(cost),
                "config": _jsonable(self.config),
                "method": {"name": self.method.name, "params": _jsonable(self.method)},
                "model": model_spec(self.student), "data": self.fingerprint,
                "dataset": self.dataset,
                "state": {"modules": modules, "values": values}}

    def save(self, cost: TrainCost) -> Path:
        tensors, modules, values = _split_state(self.ctx.state)
        record = self.record(cost, modules, values)
        g = self.ctx.generator

        def files(d: Path) -> None:
            save_file(_cpu_tensors(self.student.state_dict()), d / "model.safetensors")
            save_file(_cpu_tensors(self.ema.state_dict()), d / "ema.safetensors")
            save_file(_cpu_tensors(tensors), d / "state.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "generator": g.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all()
                        if torch.cuda.is_available() else []}, d / "train_state.pt")
            (d / "checkpoint.json").write_text(json.dumps(record, indent=2))

        assert self.config.out_dir is not None  # save() is only called with an out_dir
        root = Path(self.config.out_dir) / "checkpoints"
        return _write_checkpoint(root, self.step, files, self.config.keep_checkpoints,
                                 self.run_id)

    def restore(self, path: Path, device: torch.device) -> None:
        info = json.loads((path / "checkpoint.json").read_text())
        if info["method"]["name"] != self.method.name:
            raise ValueError(f"{path} was written by method {info['method']['name']!r}, not "
                             f"{self.method.name!r}; use another out_dir or resume=False")
        if info["data"] != self.fingerprint:
            raise ValueError(f"{path} was trained on different data; use another out_dir or "
                             "resume=False")
        recorded = {**LEGACY_DEFAULTS, **info["config"]}
        changes = (_changes("config", _without(recorded, RESUMABLE_CHANGES),
                            _without(_jsonable(self.config), RESUMABLE_CHANGES))
                   + _changes("method", {**_defaults(self.method), **info["method"]["params"]},
                              _jsonable(self.method))
                   + _changes("model", info["model"], _jsonable(model_spec(self.student))))
        if changes:
            raise ValueError(f"cannot resume {path} with changed settings: {'; '.join(changes)}. "
                             "Rerun with the recorded settings (only "
                             f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume), or "
                             "start a new run (another out_dir, or resume=False with "
                             "overwrite=True; CLI: --overwrite)")
        self.student.load_state_dict(load_file(path / "model.safetensors"))
        self.ema.load_state_dict(load_file(path / "ema.safetensors"))
        train_state = torch.load(path / "train_state.pt", weights_only=True)
        self.optimizer.load_state_dict(train_state["optimizer"])
        self.ctx.generator.set_state(train_state["generator"])
        torch.set_rng_state(train_state["torch_rng"])
        if train_state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(train_state["cuda_rng"])
        state = info["state"]
        self.ctx.state = _join_state(load_file(path / "state.safetensors"), state["modules"],
                                     state["values"], self.student, device)
        self.step = int(info["step"])
        self.seconds = float(info["cost"]["seconds"])
        self.ctx.teacher_nfe = float(info["cost"]["teacher_nfe"])


_ABSENT = "(absent)"


def _defaults(obj: Any) -> dict[str, Any]:
    """The JSON defaults of a dataclass's fields: what a record written before a field existed
    means by leaving it out (a field is only ever added with its old behaviour as default)."""
    return {f.name: _jsonable(f.default) for f in dataclasses.fields(obj)
            if f.default is not dataclasses.MISSING}


def _without(record: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


def _changes(prefix: str, old: Any, new: Any) -> list[str]:
    """``"prefix.key old -> new"`` for every (nested) field that differs between two JSON
    records."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(old.keys() | new.keys())
                for c in _changes(f"{prefix}.{k}", old.get(k, _ABSENT), new.get(k, _ABSENT))]
    return [] if old == new else [f"{prefix} {old!r} -> {new!r}"]


def _truncate_log(log: Path, step: int) -> None:
    """Keep the records of ``log`` up to ``step`` (a killed run logged past its last
    checkpoint), rewriting the file atomically; a torn final line (a kill while logging) is
    dropped with a warning, a corrupt earlier line is an error naming the file and line."""
    if not log.is_file():
        return
    text = log.read_text()
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    kept = []
    for i, ln in lines:
        try:
            record = json.loads(ln)
            logged = int(record["step"])
        except (ValueError, KeyError, TypeError) as err:
            if i != lines[-1][0]:
                raise ValueError(f"{log}, line {i}: not a loss record ({err}); remove the line "
                                 "to resume") from None
            warnings.warn(f"{log}: dropped a torn final line {ln[:60]!r} (a kill while "
                          "logging)", stacklevel=3)
            continue
        if logged <= step:
            kept.append(ln + "\n")
    if "".join(kept) != text:
        atomic_write(log, lambda tmp: tmp.write_text("".join(kept)))


def _setup(method: Method, student: nn.Module, data: Data, config: TrainConfig, teacher: Any,
           device: torch.device, rank: int) -> tuple[_Run, Tensor | dict[str, Tensor]]:
    """Data on the device, the student from ``method.init_student``, its EMA, the optimiser
    and the loss context (seeded per process)."""
    samples = _load_data(data, config)
    fingerprint = _fingerprint(samples)
    samples = ({k: v.to(device) for k, v in samples.items()} if isinstance(samples, dict)
               else samples.to(device))
    if isinstance(teacher, nn.Module):
        teacher = teacher.to(device).eval().requires_grad_(False)
    student = method.init_student(teacher if isinstance(teacher, nn.Module) else None, student)
    student = student.to(device).train()
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    # foreach: one fused update over all parameter tensors (torch picks it only on GPUs; on
    # CPU the per-tensor loop costs more than a small network's arithmetic). Same arithmetic.
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay, foreach=True)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + rank)
    ctx = LossContext(teacher, ema, generator, config.batch_size)
    torch.manual_seed(config.seed + rank)
    return _Run(config, method, student, ema, optimizer, ctx, fingerprint,
                dataset=data if isinstance(data, str) else None), samples


def _step(run: _Run, model: nn.Module, optimizer: Any, batch: Batch,
          accelerator: Any) -> tuple[Tensor, Tensor | None]:
    """One optimiser step of ``method.loss`` and the EMA update; (loss, grad norm)."""
    config, step = run.config, run.step
    run.ctx.step = step
    on_step = getattr(run.method, "on_step", None)
    if on_step is not None:
        on_step(step, run.student, run.ctx)
    for group in optimizer.param_groups:
        group["lr"] = _lr(config, step)
    with accelerator.autocast():
        loss = run.method.loss(model, batch, run.ctx)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = (accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                 if config.grad_clip is not None else None)
    optimizer.step()
    ema_update_(run.ema, run.student, ema_beta(step, config.ema_decay, config.ema_rampup))
    run.step += 1
    return loss.detach(), grad_norm


def train(method: Method, student: nn.Module, data: Data, config: TrainConfig, *,
          teacher: Any = None, callback: Callback | None = None) -> TrainResult:
    """Train ``method.init_student(teacher, student)`` for ``config.steps`` steps of
    ``method.loss`` on ``data`` (a tensor of samples, a dict with samples under "x" and
    conditioning under the other keys, or a built-in data set name), resuming from the latest
    checkpoint in ``config.out_dir``. ``callback(step, info)`` runs after every step with
    ``info`` holding the loss, the (unwrapped) student and its EMA, and on logging steps the
    logged values; raising in it stops training (as a kill would)."""
    accelerator = _accelerator(config.mixed_precision)
    main = accelerator.is_main_process
    if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        warnings.warn("mixed_precision='fp16': fp16 autocast is not available on CPU, so this "
                      "run computes in float32; use 'bf16' for mixed precision on CPU",
                      stacklevel=2)
    run, samples = _setup(method, student, data, config, teacher, accelerator.device,
                          accelerator.process_index)
    out = Path(config.out_dir) if config.out_dir else None
    latest = None
    if out is not None:
        _refuse_fresh_start(out, config)
        if main:
            _open_run_dir(out, config)
        accelerator.wait_for_everyone()
        run.run_id = _current_run(out)
        latest = latest_checkpoint(out)
        if latest is not None:
            run.restore(latest, accelerator.device)
            if run.step > config.steps:
                raise ValueError(f"{out} already holds a run at step {run.step}, past "
                                 f"steps={config.steps}: nothing to train. Resume with steps >= "
                                 f"{run.step}, or start a new run (overwrite=True; CLI: "
                                 "--overwrite)")
        if main:
            _truncate_log(out / "log.jsonl", run.step)
    model, optimizer = accelerator.prepare(run.student, run.optimizer)
    batches = _Batches(samples, config.batch_size, config.seed, accelerator.process_index,
                       accelerator.num_processes)
    saved, start, t0 = latest, run.step, time.perf_counter()
    bar = tqdm(total=config.steps, initial=run.step, desc=method.name or "train",
               disable=not (config.progress and main))
    while run.step < config.steps:
        loss, grad_norm = _step(run, model, optimizer, batches(run.step), accelerator)
        info: dict[str, Any] = {"step": run.step, "loss": loss}
        if run.step % config.log_every == 0 or run.step == config.steps:
            info = _log(run, out, loss, grad_norm, t0, main)
            bar.set_postfix(loss=f"{info['loss']:.4g}")
        info.update(student=run.student, ema=run.ema)
        bar.update(1)
        due = config.checkpoint_every and run.step % config.checkpoint_every == 0
        if out is not None and main and due and run.step < config.steps:
            saved = run.save(run.cost(t0))
        if callback is not None:
            callback(run.step, info)
    bar.close()
    if run.step == start and latest is not None:  # nothing left to do: report the record
        return TrainResult(run.student.eval(), run.ema,
                           TrainCost(**checkpoint_info(latest)["cost"]), latest)
    cost = run.cost(t0)
    if out is not None and main:
        saved = run.save(cost)
    accelerator.wait_for_everyone()
    return TrainResult(run.student.eval(), run.ema, cost, saved)


def _log(run: _Run, out: Path | None, loss: Tensor, grad_norm: Tensor | None, t0: float,
         main: bool) -> dict[str, Any]:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite loss {value} at step {run.step}")
    cost = run.cost(t0)
    info = {"step": run.step, "loss": value, "lr": run.optimizer.param_groups[0]["lr"],
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "seconds": round(cost.seconds, 4), "teacher_nfe": cost.teacher_nfe}
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(info) + "\n")
    return info
