"""Run one solver on several groups of rows with different sigma paths, batching their
denoiser calls.

Each group's solve is the solver's generator (``spec.steps(x_g, path_g)``, see
:mod:`fewstep.solvers.driver`). One round takes the pending request ``(x, sigma)`` of every
unfinished group, runs the real denoiser once on the concatenated rows (each row with its
group's sigma) and sends every group its slice. Everything runs in the caller's thread (its
grad mode, autocast and device state). A deterministic fixed-grid solver requests equally
many evaluations whatever its sigmas are, so ``k`` groups of ``n`` calls cost ``n`` batched
evaluations instead of ``k * n`` small ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..solvers.driver import Request, Steps, check_cond, check_final, check_output

__all__ = ["run_lockstep"]


def _evaluate(D: Denoiser, batch: list[tuple[int, Request]],
              conds: Sequence[Mapping[str, Any]]) -> dict[int, Tensor]:
    """One guarded denoiser call on the concatenated requests, split back per group."""
    sizes = [xi.shape[0] for _, (xi, _) in batch]
    x = torch.cat([xi for _, (xi, _) in batch])
    # a request's sigma is a float, or one per row (a batched request of a parallel solver)
    sigma = torch.cat([si.to(xi) if isinstance(si, Tensor) else xi.new_full((n,), si)
                       for n, (_, (xi, si)) in zip(sizes, batch, strict=True)])
    cond = _join_cond([conds[j] for j, _ in batch], sizes)
    where = sorted({float(s) for _, (_, si) in batch
                    for s in (si.unique().tolist() if isinstance(si, Tensor) else [si])},
                   reverse=True)
    out = check_output(D(x, sigma, **cond), x, f"sigmas {where}")
    return {j: part for (j, _), part in zip(batch, out.split(sizes), strict=True)}


def _join_cond(conds: Sequence[Mapping[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
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


def _advance(run: Steps, reply: Tensor | None) -> tuple[Request | None, Tensor | None]:
    """Start (``reply`` None) or resume one generator: its next request, or its result."""
    try:
        return (next(run) if reply is None else run.send(reply)), None
    except StopIteration as done:
        return None, check_final(done.value)


def run_lockstep(D: Denoiser, runs: Sequence[Steps],
                 conds: Sequence[Mapping[str, Any] | None] | None = None) -> list[Tensor]:
    """Step every solver generator in ``runs`` (group ``j`` conditioned on ``conds[j]``),
    answering each round of their requests with one call of ``D``; their results are
    returned in order. Runs that request equally often (one fixed-grid solver, one path
    length) share every round; one that finishes early simply drops out. The first error,
    from a run or from ``D``, is raised here and every generator is closed."""
    checked = [check_cond(c) for c in (conds or [None] * len(runs))]
    if len(checked) != len(runs):
        raise ValueError(f"got {len(checked)} conditionings for {len(runs)} runs")
    results: list[Tensor | None] = [None] * len(runs)
    with ExitStack() as stack:
        for run in runs:
            stack.enter_context(closing(run))
        pending: dict[int, Request] = {}
        for j, run in enumerate(runs):
            request, results[j] = _advance(run, None)
            if request is not None:
                pending[j] = request
        while pending:
            replies = _evaluate(D, sorted(pending.items()), checked)
            for j, x0_hat in replies.items():
                request, results[j] = _advance(runs[j], x0_hat)
                if request is None:
                    del pending[j]
                else:
                    pending[j] = request
    return results  # type: ignore[return-value]
