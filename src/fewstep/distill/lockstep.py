"""Run one solver on several groups of rows with different sigma paths, batching their
denoiser calls.

A deterministic fixed-grid solver calls the denoiser the same number of times whatever its
sigmas are, so groups that share a solver and a path length call "in step". Each group runs
in a worker thread whose denoiser is a stand-in: the stand-in hands its ``(x, sigma, cond)``
to the calling thread and waits. When every live group is waiting, the calling thread runs
the real denoiser once on the concatenated rows (so autocast, grad mode and device state are
the caller's) and hands every group its slice. ``k`` groups of ``n`` calls cost ``n`` batched
evaluations instead of ``k * n`` small ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser

__all__ = ["run_lockstep"]

Request = tuple[Tensor, Tensor, dict[str, Any]]


class _Exchange:
    """Where worker threads leave denoiser requests and the caller leaves the answers.

    The caller is woken once per round (by the last group to ask, or to finish) and the
    groups once per round (when the answers are in), so a round costs O(groups) thread
    switches. Every wait is on a predicate under one lock, so no wake-up can be lost."""

    def __init__(self, groups: int):
        self.live = groups
        self.requests: dict[int, Request] = {}
        self.answers: dict[int, Tensor] = {}
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # the caller waits here
        self.answered = threading.Condition(self.lock)  # the groups wait here

    def _round_complete(self) -> bool:
        return self.error is not None or len(self.requests) == self.live

    def ask(self, j: int, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """The stand-in denoiser of group ``j``: blocks until the caller has answered."""
        with self.lock:
            self.requests[j] = (x, sigma, cond)
            if self._round_complete():
                self.ready.notify()
            self.answered.wait_for(lambda: j in self.answers or self.error is not None)
            if j not in self.answers:
                raise RuntimeError("another group of the lockstep solve failed") from self.error
            return self.answers.pop(j)

    def finish(self, error: BaseException | None = None) -> None:
        with self.lock:
            self.live -= 1
            if error is not None and self.error is None:
                self.error = error
                self.answered.notify_all()
            if self._round_complete():
                self.ready.notify()

    def serve(self, D: Denoiser) -> None:
        """Answer batched requests in the calling thread until every group has finished."""
        while True:
            with self.lock:
                self.ready.wait_for(self._round_complete)
                if self.error is not None or not self.live:
                    return
                batch = sorted(self.requests.items())
                self.requests.clear()
            try:
                answers, error = _evaluate(D, batch), None
            except BaseException as e:  # handed to the waiting groups
                answers, error = {}, e
            with self.lock:
                self.answers.update(answers)
                if error is not None and self.error is None:
                    self.error = error
                self.answered.notify_all()


def _evaluate(D: Denoiser, batch: list[tuple[int, Request]]) -> dict[int, Tensor]:
    """One denoiser call on the concatenated requests, split back per group."""
    sizes = [x.shape[0] for _, (x, _, _) in batch]
    x = torch.cat([x for _, (x, _, _) in batch])
    sigma = torch.cat([s.expand(x.shape[0]) if s.ndim == 0 else s for _, (x, s, _) in batch])
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
    """Run ``solve(denoiser)`` for every entry of ``solves`` with their denoiser calls batched
    into one call of ``D`` per round. Every solve must call its denoiser equally often
    (one fixed-grid solver, one path length); their results are returned in order."""
    if len(solves) == 1:
        return [solves[0](D)]
    exchange = _Exchange(len(solves))
    results: list[Tensor | None] = [None] * len(solves)

    def work(j: int) -> None:
        error = None
        try:
            results[j] = solves[j](lambda x, sigma, **c: exchange.ask(j, x, sigma, **c))
        except BaseException as e:  # re-raised in the calling thread
            error = e
        exchange.finish(error)

    threads = [threading.Thread(target=work, args=(j,), daemon=True, name=f"fewstep-rows-{j}")
               for j in range(len(solves))]
    for t in threads:
        t.start()
    exchange.serve(D)
    for t in threads:
        t.join()
    if exchange.error is not None:
        raise exchange.error
    if any(r is None for r in results):
        raise RuntimeError("a lockstep solve returned no result")
    return results  # type: ignore[return-value]
