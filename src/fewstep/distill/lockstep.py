"""Run one solver on several groups of rows with different sigma paths, batching their
denoiser calls.

Each group's solve is a :class:`~fewstep.solvers.coroutine.SolverCoroutine`: the unchanged
solver runs in a worker thread and pauses at every denoiser call. Once every unfinished group
has paused, the calling thread runs the real denoiser once on the concatenated rows (so
autocast, grad mode and device state are the caller's) and hands every group its slice. A
deterministic fixed-grid solver calls the denoiser equally often whatever its sigmas are, so
``k`` groups of ``n`` calls cost ``n`` batched evaluations instead of ``k * n`` small ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..solvers.coroutine import Request, SolverCoroutine

__all__ = ["run_lockstep"]


def _evaluate(D: Denoiser, batch: list[tuple[int, Request]]) -> dict[int, Tensor]:
    """One denoiser call on the concatenated requests, split back per group."""
    sizes = [xi.shape[0] for _, (xi, _, _) in batch]
    x = torch.cat([xi for _, (xi, _, _) in batch])
    sigma = torch.cat([si.expand(n) if si.ndim == 0 else si
                       for n, (_, (_, si, _)) in zip(sizes, batch, strict=True)])
    out = D(x, sigma, **_join_cond([c for _, (_, _, c) in batch], sizes))
    return {j: part for (j, _), part in zip(batch, out.split(sizes), strict=True)}


def _join_cond(conds: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """Per-row tensors are concatenated; anything else must be the same in every group."""
    joined = {}
    for key, first in conds[0].items():
        values = [c[key] for c in conds]
        if isinstance(first, Tensor) and all(v.ndim and v.shape[0] == n
                                              for v, n in zip(values, sizes, strict=True)):
            joined[key] = torch.cat(values)
        elif all(v is first for v in values):
            joined[key] = first
        else:
            raise ValueError(f"conditioning {key!r} is neither per-row nor shared by every "
                             "group; it cannot be batched")
    return joined


def run_lockstep(D: Denoiser, solves: Sequence[Callable[[Denoiser], Tensor]]) -> list[Tensor]:
    """Run ``solve(denoiser)`` for every entry of ``solves``, answering each round of their
    denoiser calls with one call of ``D``; their results are returned in order. Solves that
    call equally often (one fixed-grid solver, one path length) share every round; one that
    finishes early simply drops out. The first error, from a solve or from ``D``, is raised
    here and the other solves are cancelled."""
    if len(solves) == 1:
        return [solves[0](D)]
    runs = [SolverCoroutine(solve) for solve in solves]
    try:
        requests = {j: run.start() for j, run in enumerate(runs)}
        while pending := sorted((j, r) for j, r in requests.items() if r is not None):
            for j, x0_hat in _evaluate(D, pending).items():
                requests[j] = runs[j].send(x0_hat)
        return [run.result for run in runs]  # type: ignore[misc]
    finally:
        for run in runs:
            run.close()
