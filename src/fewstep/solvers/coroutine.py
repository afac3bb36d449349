"""A solver run as a coroutine: the unchanged solver function runs in a worker thread that
pauses at every denoiser call and hands the call to its driver. Used by the diffusers
scheduler adapter (one run, driven step by step from a pipeline loop) and by lockstep
per-row teacher solves (several runs, their calls answered in one batch)."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser

__all__ = ["Request", "SolverCoroutine"]

Request = tuple[Tensor, Tensor, dict[str, Any]]  # (x, sigma, cond) of one denoiser call

_CANCEL = object()


class _Cancelled(BaseException):
    """Unwinds an abandoned solver run inside its worker thread."""


class SolverCoroutine:
    """Run ``run(denoiser)`` in a worker thread that pauses at every denoiser call.

    ``start()`` and ``send(x0_hat)`` return the next request ``(x, sigma, cond)``, or ``None``
    once the solver has returned (its result is then in ``.result``). Exactly one thread runs at a
    time; the caller's grad / inference mode is reproduced in the worker. A run dropped before
    it finishes is cancelled when the coroutine is garbage-collected or ``close()`` is called.
    """

    def __init__(self, run: Callable[[Denoiser], Tensor]):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self._thread = threading.Thread(target=_worker, daemon=True, name="fewstep-solver",
                                        args=(run, modes, self._inbox, self._outbox))
        self._finalizer = weakref.finalize(self, self._inbox.put, _CANCEL)
        self.result: Tensor | None = None

    def start(self) -> Request | None:
        self._thread.start()
        return self._wait()

    def send(self, x0_hat: Tensor) -> Request | None:
        if not self._thread.is_alive():
            raise RuntimeError("the solver run has finished; nothing to send to")
        self._inbox.put(x0_hat)
        return self._wait()

    def close(self) -> None:
        self._finalizer()
        if self._thread.is_alive():
            self._thread.join()

    def _wait(self) -> Request | None:
        kind, payload = self._outbox.get()
        if kind == "eval":
            return payload
        self._thread.join()
        if kind == "error":
            raise payload
        self.result = payload
        return None


def _worker(run: Callable[[Denoiser], Tensor], modes: tuple[bool, bool],
            inbox: queue.SimpleQueue, outbox: queue.SimpleQueue) -> None:
    def denoiser(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        outbox.put(("eval", (x, sigma, cond)))
        reply = inbox.get()
        if reply is _CANCEL:
            raise _Cancelled
        return reply

    try:
        with torch.set_grad_enabled(modes[0]), torch.inference_mode(modes[1]):
            result = run(denoiser)
    except _Cancelled:
        return
    except BaseException as e:  # re-raised in the caller's thread
        outbox.put(("error", e))
        return
    outbox.put(("done", result))
