"""Rectified flow and reflow (Liu et al. 2022, "Flow Straight and Fast").

Fewstep's time runs from data (t = 0) to noise (t = 1) on the straight interpolant
``x_t = (1 - t) x0 + t z`` (:class:`~fewstep.process.RectifiedFlow`), which is the sigma-space
sample ``x = x_t / (1 - t) = x0 + sigma z`` with ``sigma = t / (1 - t)``. A velocity field
``v(x_t, t)`` and a denoiser are one object: ``D(x, sigma) = x_t - t v(x_t, t)``
(:class:`~fewstep.nets.FlowPrecond`), so every registered solver samples a flow, and an Euler
(DDIM) step in sigma is an Euler step in t.

- ``rf`` (:class:`RectifiedFlowLoss`): 1-rectified flow, ``min E ||(z - x0) - v(x_t, t)||^2``
  with ``z ~ N(0, I)`` independent of the data and ``t ~ U(t_min, t_max)`` (Liu et al. 2022,
  Eq. 1, with time reversed).
- ``reflow`` (:class:`Reflow`): the same objective on couplings ``(z, ODE_k(z))`` drawn from the
  current flow (the teacher), warm-started from it: the k-RF teacher gives the (k+1)-RF.
- ``rf_distill`` (:class:`RectifiedFlowDistill`): "k-RF + distill", a one-step generator
  ``D(sigma_max z, sigma_max) ~ ODE_k(z)`` on the same couplings (Liu et al. 2022,
  distillation of a k-rectified flow).

Couplings are drawn by :func:`draw_couplings` with any registered solver, chunk by chunk; with a
``cache`` directory each finished chunk is written atomically, so an interrupted draw resumes
and a reflow and a distillation of the same flow share one draw. :func:`straightness` is the
paper's ``S(Z)`` and :func:`rectified_flows` runs 1-RF, reflow rounds and the distillations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import solvers
from .._io import atomic_write
from ..denoiser import CountingDenoiser, Denoiser, NonFiniteError, append_dims
from ..process import RectifiedFlow
from .base import Batch, LossContext, MethodBase, register_method, split_batch, warm_start

if TYPE_CHECKING:
    from ..train import Data, TrainConfig, TrainResult

__all__ = [
    "Couplings",
    "RectifiedFlowDistill",
    "RectifiedFlowLoss",
    "RectifiedFlows",
    "Reflow",
    "draw_couplings",
    "rectified_flows",
    "rf_loss",
    "rf_sigmas",
    "straightness",
    "velocity",
]

CACHE_FORMAT = 1


def _t_of(sigma_max: float) -> float:
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be > 0; got {sigma_max}")
    return sigma_max / (1 + sigma_max)


def rf_sigmas(n: int, sigma_max: float = 80.0) -> Tensor:
    """The ``n``-step grid uniform in flow time, ``t_i = T (1 - i/n)`` for i = 0..n with
    ``T = sigma_max / (1 + sigma_max)``, as float64 sigmas ``t / (1 - t)`` ending in 0: the
    grid on which Liu et al. (2022) run Euler with a flow."""
    if int(n) != n or n < 1:
        raise ValueError(f"n (steps) must be an integer >= 1; got {n!r}")
    t = _t_of(sigma_max) * torch.linspace(1, 0, int(n) + 1, dtype=torch.float64)
    return RectifiedFlow().sigma(t)


def velocity(D: Denoiser, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
    """The flow velocity ``v(x_t, t) = (x_t - D(x_t / (1 - t), t / (1 - t))) / t`` of a
    sigma-space denoiser ``D`` at interpolant samples ``x_t`` (batch, ...) and times ``t``
    (batch,) in (0, 1)."""
    tt = append_dims(t, x_t.ndim)
    return (x_t - D(x_t / (1 - tt), t / (1 - t), **cond)) / tt


def rf_loss(D: Denoiser, x0: Tensor, z: Tensor, t: Tensor, **cond: Any) -> Tensor:
    """``E ||(z - x0) - v(x_t, t)||^2`` at ``x_t = (1 - t) x0 + t z`` (Liu et al. 2022, Eq. 1;
    mean over rows and coordinates): the rectified-flow objective for a coupling ``(x0, z)``.
    For a sigma-space denoiser it equals ``||D - x0||^2 / t^2``."""
    tt = append_dims(t, x0.ndim)
    x_t = (1 - tt) * x0 + tt * z
    return ((z - x0) - velocity(D, x_t, t, **cond)).pow(2).mean()


def _check_unconditional(cond: Mapping[str, Tensor], what: str) -> None:
    if cond:
        raise ValueError(f"{what} trains an unconditional flow; the batch has conditioning "
                         f"{sorted(cond)}")


@dataclass(frozen=True)
class _Times:
    """Training times ``t ~ U(t_min, t_max)``."""

    t_min: float = 1e-3
    t_max: float = 0.999

    def __post_init__(self) -> None:
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1; got t_min={self.t_min}, "
                             f"t_max={self.t_max}")

    def times(self, n: int, like: Tensor, ctx: LossContext) -> Tensor:
        return self.t_min + (self.t_max - self.t_min) * ctx.rand(n, like=like)


@register_method
@dataclass(frozen=True)
class RectifiedFlowLoss(_Times, MethodBase):
    """1-rectified flow: ``min_v E ||(z - x0) - v(x_t, t)||^2``, ``x_t = (1 - t) x0 + t z``,
    ``z ~ N(0, I)`` independent of the data ``x0``, ``t ~ U(t_min, t_max)`` (Liu et al. 2022,
    Eq. 1). Train a :class:`~fewstep.nets.FlowPrecond` student; no teacher."""

    name: ClassVar[str] = "rf"
    network: ClassVar[str | None] = "velocity"

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        x0, cond = split_batch(batch)
        _check_unconditional(cond, "rf")
        return rf_loss(student, x0, ctx.randn_like(x0), self.times(x0.shape[0], x0, ctx))


# ------------------------------------------------------------------------------- couplings


@dataclass(frozen=True)
class Couplings:
    """``num_pairs`` couplings of a flow: noise ``z`` (standard normal) and the endpoint
    ``x = ODE(sigma_max z)`` at sigma 0, with what drawing them cost: ``evaluations`` teacher
    rows (NFE x pairs) and wall-clock ``seconds`` (summed over the chunks, whichever run drew
    them)."""

    z: Tensor
    x: Tensor
    evaluations: int
    seconds: float


def _fingerprint(flow: Any) -> str:
    """A hash of a flow's weights (its type name if it has none)."""
    h = hashlib.sha256(type(flow).__name__.encode())
    if isinstance(flow, nn.Module):
        for k, v in sorted(flow.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def draw_couplings(flow: Denoiser, num_pairs: int, shape: tuple[int, ...], *,
                   solver: str = "ipndm", nfe: int = 35, sigma_max: float = 80.0,
                   sigma_min: float = 0.002, seed: int = 0, chunk: int = 1024,
                   cache: str | Path | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Couplings:
    """Couplings ``(z, ODE(sigma_max z))`` of ``flow`` (a sigma-space denoiser), solved with the
    registered ``solver`` at ``nfe`` evaluations on a Karras grid from ``sigma_max`` to 0.

    Chunk ``i`` (``chunk`` rows) draws its noise from a generator seeded by ``(seed, i)``, so the
    couplings do not depend on how the draw was interrupted. With ``cache`` (a directory), each
    finished chunk is written atomically as ``chunk_XXXXX.safetensors`` beside a
    ``couplings.json`` recording the settings and the flow's weight hash; a rerun loads the
    finished chunks and draws the rest. A cache recorded with other settings or another flow is
    refused. Raises ValueError on a bad count, solver or NFE."""
    for key, v in (("num_pairs", num_pairs), ("chunk", chunk)):
        if int(v) != v or v < 1:
            raise ValueError(f"{key} must be an integer >= 1; got {v!r}")
    _t_of(sigma_max)
    p = solvers.plan(solver, nfe, "karras", sigma_min=sigma_min, sigma_max=sigma_max)
    record = {"format": CACHE_FORMAT, "num_pairs": int(num_pairs), "shape": list(shape),
              "solver": solver, "nfe": int(nfe), "sigma_max": sigma_max, "sigma_min": sigma_min,
              "seed": seed, "chunk": int(chunk), "flow": _fingerprint(flow)}
    root = Path(cache) if cache is not None else None
    if root is not None:
        _open_cache(root, record)
    zs, xs, evaluations, seconds = [], [], 0, 0.0
    for i, start in enumerate(range(0, num_pairs, chunk)):
        path = root / f"chunk_{i:05d}.safetensors" if root is not None else None
        if root is not None and path is not None and path.is_file():
            part = load_file(path)
            meta = json.loads((root / f"chunk_{i:05d}.json").read_text())
            zs.append(part["z"])
            xs.append(part["x"])
            evaluations += meta["evaluations"]
            seconds += meta["seconds"]
            continue
        m = min(chunk, num_pairs - start)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        z = torch.randn((m, *shape), generator=g, dtype=torch.float64).to(device, dtype)
        counter = CountingDenoiser(flow)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = solvers.get(solver)(counter, sigma_max * z, p.sigmas, **p.knobs)
        took = time.perf_counter() - t0
        if not torch.isfinite(x).all():
            raise NonFiniteError(f"the flow's ODE gave non-finite endpoints in chunk {i}")
        if root is not None:
            _write_chunk(root, i, z, x, counter.rows, took)
        zs.append(z)
        xs.append(x)
        evaluations += counter.rows
        seconds += took
    return Couplings(torch.cat(zs).to(device, dtype), torch.cat(xs).to(device, dtype),
                     int(evaluations), float(seconds))


def _write_chunk(root: Path, i: int, z: Tensor, x: Tensor, evaluations: int,
                 seconds: float) -> None:
    """Chunk ``i``'s cost record, then its tensors, each written atomically: a chunk is finished
    once its tensors exist."""
    meta = json.dumps({"evaluations": evaluations, "seconds": seconds})
    atomic_write(root / f"chunk_{i:05d}.json", lambda f: f.write_text(meta))
    tensors = {"z": z.detach().cpu().contiguous(), "x": x.detach().cpu().contiguous()}
    atomic_write(root / f"chunk_{i:05d}.safetensors", lambda f: save_file(tensors, str(f)))


def _open_cache(root: Path, record: dict[str, Any]) -> None:
    """Create ``root/couplings.json``, or check that it records ``record``."""
    spec = root / "couplings.json"
    if spec.is_file():
        old = json.loads(spec.read_text())
        changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v]
        if changed:
            raise ValueError(f"{root} holds couplings drawn with other settings or from another "
                             f"flow ({'; '.join(changed)}); use another cache directory")
        return
    text = json.dumps(record, indent=1)
    atomic_write(spec, lambda f: f.write_text(text))


@dataclass(frozen=True)
class _Coupled:
    """How a method draws its couplings from the teacher flow (:func:`draw_couplings`); the
    couplings live in ``ctx.state`` (checkpointed) and, with ``cache``, on disk."""

    num_pairs: int = 8192
    solver: str = "ipndm"
    nfe: int = 35
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    coupling_seed: int = 0
    chunk: int = 1024
    cache: str = ""  # a directory shared by runs that use the same couplings ("": none)

    def couplings(self, like: Tensor, ctx: LossContext) -> tuple[Tensor, Tensor]:
        """``(z, x1)`` of the teacher flow, drawn once (and counted as teacher evaluations)."""
        if "z" not in ctx.state:
            c = draw_couplings(ctx.require_teacher(), self.num_pairs, tuple(like.shape[1:]),
                               solver=self.solver, nfe=self.nfe, sigma_max=self.sigma_max,
                               sigma_min=self.sigma_min, seed=self.coupling_seed,
                               chunk=self.chunk, cache=self.cache or None, device=like.device,
                               dtype=like.dtype)
            ctx.count_teacher(1, c.evaluations)
            ctx.state["z"], ctx.state["x1"] = c.z, c.x
        return ctx.state["z"], ctx.state["x1"]

    def pairs(self, batch: Batch, ctx: LossContext, what: str) -> tuple[Tensor, Tensor]:
        """A batch-sized random draw of couplings (the data batch gives only the shape)."""
        x_data, cond = split_batch(batch)
        _check_unconditional(cond, what)
        z, x1 = self.couplings(x_data, ctx)
        idx = ctx.randint(len(z), x_data.shape[0], device=z.device)
        return z[idx], x1[idx]

    def init_student(self, teacher_model: nn.Module | None, template: nn.Module) -> nn.Module:
        return warm_start(template, teacher_model)


@register_method
@dataclass(frozen=True)
class Reflow(_Coupled, _Times, MethodBase):
    """Reflow: the rectified-flow objective on couplings ``(z, ODE_k(z))`` of the teacher flow
    (the k-RF) instead of independent ``(z, x0)``, warm-started from it; the result is the
    (k+1)-RF (Liu et al. 2022, "Reflow")."""

    name: ClassVar[str] = "reflow"
    network: ClassVar[str | None] = "velocity"

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        z, x1 = self.pairs(batch, ctx, "reflow")
        return rf_loss(student, x1, z, self.times(z.shape[0], z, ctx))


@register_method
@dataclass(frozen=True)
class RectifiedFlowDistill(_Coupled, MethodBase):
    """"k-RF + distill": a one-step generator ``D(sigma_max z, sigma_max)`` regressed onto the
    k-RF's endpoint ``ODE_k(z)`` on its couplings, ``min E ||D(sigma_max z, sigma_max) - x1||^2``
    (Liu et al. 2022, with squared error in place of their LPIPS), warm-started from the k-RF.
    Sample it with one Euler step from ``sigma_max``."""

    name: ClassVar[str] = "rf_distill"

    sampler: ClassVar[str | None] = "one_step"
    network: ClassVar[str | None] = "velocity"

    def loss(self, student: nn.Module, batch: Batch, ctx: LossContext) -> Tensor:
        z, x1 = self.pairs(batch, ctx, "rf_distill")
        sigma = z.new_full((z.shape[0],), self.sigma_max)
        return (student(self.sigma_max * z, sigma) - x1).pow(2).mean()


# ------------------------------------------------------------------------------- straightness


@torch.no_grad()
def straightness(flow: Denoiser, z: Tensor, *, steps: int = 64, solver: str = "heun",
                 sigma_max: float = 80.0, cond: Mapping[str, Any] | None = None) -> Tensor:
    """Per-sample straightness ``S = (1/T) int_0^T ||(Z_T - Z_0)/T - dZ_t/dt||^2 dt`` of the
    flow's trajectory from ``Z_T = T z`` (``T = sigma_max / (1 + sigma_max)``) to ``Z_0``: the
    mean squared deviation of its velocity from its chord (Liu et al. 2022, straightness
    ``S(Z)``, over ``[0, T]``; squared norm summed over coordinates). Zero exactly when every
    trajectory is a straight line at constant speed.

    The trajectory is solved by the registered ``solver`` on :func:`rf_sigmas` (``steps``
    steps) and ``dZ/dt`` is taken piecewise constant between its states, so S is exact for
    that piecewise-linear path and converges to ``S(Z)`` as ``steps`` grows. Returns a
    ``(batch,)`` tensor in ``z``'s dtype."""
    sigmas = rf_sigmas(steps, sigma_max)
    states = {float(sigmas[0]): sigma_max * z}

    def record(info: Mapping[str, Any]) -> None:
        states[float(info["sigma_next"])] = info["x"]

    solvers.get(solver)(flow, sigma_max * z, sigmas, cond=cond, callback=record)
    if len(states) != len(sigmas):
        raise ValueError(f"solver {solver!r} reported {len(states) - 1} of {len(sigmas) - 1} "
                         "steps to its callback; use a solver that reports every step")
    s = sorted(states)  # t ascending: the data end first
    t = torch.tensor([v / (1 + v) for v in s], dtype=torch.float64)
    Z = torch.stack([states[v].flatten(1).double() / (1 + v) for v in s])  # (k, batch, d)
    T = float(t[-1] - t[0])
    chord = (Z[-1] - Z[0]) / T
    dt = append_dims(t.diff(), 3)
    dev = (chord - Z.diff(dim=0) / dt).pow(2).sum(-1)  # (k - 1, batch)
    return ((dt[:, :, 0] * dev).sum(0) / T).to(z.dtype)


# ------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class RectifiedFlows:
    """What :func:`rectified_flows` made: ``flows[j]`` is the (j+1)-RF, ``distilled[j]`` the
    (j+1)-RF + distill (empty without ``distill``), ``couplings[j]`` the draw from the (j+1)-RF:
    its cache directory, teacher evaluations (rows) and seconds."""

    flows: list[TrainResult]
    distilled: list[TrainResult]
    couplings: list[dict[str, Any]]


def rectified_flows(k: int, template: nn.Module, data: Data, config: TrainConfig, *,
                    rf: RectifiedFlowLoss | None = None, reflow: Reflow | None = None,
                    distill: RectifiedFlowDistill | None = None,
                    reflow_config: TrainConfig | None = None,
                    distill_config: TrainConfig | None = None,
                    callback: Callable[[str, TrainResult], None] | None = None
                    ) -> RectifiedFlows:
    """Train the 1-RF on ``data``, then ``k - 1`` reflow rounds, each on couplings of the
    previous flow's EMA; with ``distill`` also distil every j-RF (j = 1..k) into a one-step
    generator on the couplings drawn from it, the same draw that trains the (j+1)-RF.

    Each stage is a :func:`~fewstep.train.train` run in ``config.out_dir/<stage>`` (``1-rf``,
    ``2-rf``, ..., ``1-rf+distill``, ...) with ``config``'s settings (``reflow_config``'s and
    ``distill_config``'s, if given, for the reflows and distillations); couplings are cached in
    ``config.out_dir/couplings-from-<j>-rf``. So a rerun resumes every stage and every draw
    where it stopped. ``reflow`` and ``distill`` give the coupling settings (their ``cache`` is
    set here); ``callback(stage, result)`` runs after each stage. Raises ValueError for
    ``k < 1`` or a config without ``out_dir``."""
    from ..train import train

    if int(k) != k or k < 1:
        raise ValueError(f"k (the number of rectifications) must be an integer >= 1; got {k!r}")
    if config.out_dir is None:
        raise ValueError("rectified_flows needs config.out_dir (stages and couplings are "
                         "stored and resumed there)")
    root = Path(config.out_dir)
    rf = rf or RectifiedFlowLoss()
    reflow = reflow or Reflow()

    def stage(name: str, method: Any, teacher: nn.Module | None,
              cfg: TrainConfig) -> TrainResult:
        student = method.init_student(teacher, template)
        res = train(method, student, data, dataclasses.replace(cfg, out_dir=str(root / name)),
                    teacher=teacher)
        if callback is not None:
            callback(name, res)
        return res

    def cache(j: int) -> str:
        return str(root / f"couplings-from-{j}-rf")

    flows = [stage("1-rf", rf, None, config)]
    distilled: list[TrainResult] = []
    for j in range(1, k + 1):
        if j < k:
            flows.append(stage(f"{j + 1}-rf", dataclasses.replace(reflow, cache=cache(j)),
                               flows[-1].ema, reflow_config or config))
        if distill is not None:
            distilled.append(stage(f"{j}-rf+distill", dataclasses.replace(distill, cache=cache(j)),
                                   flows[j - 1].ema, distill_config or config))
    draws = []
    for j in range(1, k + (distill is not None)):
        d = Path(cache(j))
        chunks = [json.loads(p.read_text()) for p in sorted(d.glob("chunk_*.json"))]
        draws.append({"cache": str(d), "evaluations": sum(c["evaluations"] for c in chunks),
                      "seconds": sum(c["seconds"] for c in chunks)})
    return RectifiedFlows(flows, distilled, draws)
