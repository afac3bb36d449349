"""Cases as Ray tasks: the same :func:`~fewstep.bench.runner.run_case` on a Ray cluster.

Only the process that runs :func:`~fewstep.bench.runner.run_suite` touches the result store:
it claims the cases, sends each as a task, and writes each row as its task finishes, so resume,
shards and ``fewstep merge`` work exactly as in a serial run. Each Ray worker process keeps
one warm context per (results directory, device), so warm-ups, references and held-out sets
are prepared once per worker, not once per case.

Ray is an optional extra (``pip install 'fewstep[ray]'``); ``address`` is ``"local"`` (start
or join a Ray runtime on this machine) or a cluster address such as ``"ray://head:10001"`` or
``"auto"``. On a cluster every node needs fewstep installed and the teachers resolvable by
name (built-ins, ``diffusers:PATH`` with PATH on every node); each worker caches references
under the same ``--out`` path on its own disk.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .suite import Case

__all__ = ["RAY_MISSING", "check_reachable", "connect", "ray_rows", "require_ray"]

RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'fewstep[ray]'"

CONNECT_TIMEOUT_S = 10.0  # how long a cluster address may take to accept a connection
_CONTEXTS: dict[tuple[str, str], Any] = {}  # per worker process: (out_dir, device) -> context


def require_ray() -> Any:
    """The ``ray`` module; raises ImportError with :data:`RAY_MISSING` when absent."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _case_task(case: Case, out_dir: str, device: str) -> dict[str, Any]:
    """Body of one Ray task: the case's row, computed with this worker's warm context."""
    from .runner import _Context, run_case

    key = (out_dir, device)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = _Context(Path(out_dir), device)
    return run_case(case, _CONTEXTS[key])


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast on a cluster address nothing answers at: ``ray.init`` waits without limit
    for an unreachable head. ``"local"`` and ``"auto"`` (which Ray itself resolves at once)
    pass; ``[ray://]HOST:PORT`` must accept a TCP connection within ``timeout`` seconds.
    Raises ValueError for an address of another form, ConnectionError when unreachable."""
    if address in ("local", "auto"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not 'local', 'auto' or [ray://]HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address!r} (within {timeout:g} s: "
                              f"{e.strerror or e})") from None


def connect(address: str) -> Any:
    """Start or join the Ray runtime at ``address`` ("local": this machine) unless this
    process is already connected; returns the ``ray`` module. Raises ImportError
    (:data:`RAY_MISSING`) without Ray, ConnectionError for an unreachable address
    (:func:`check_reachable`)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    check_reachable(address)
    ray.init(address=None if address == "local" else address, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return ray


def ray_rows(cases: Sequence[Case], out_dir: str | Path, device: str,
             address: str) -> Iterator[tuple[Case, dict[str, Any]]]:
    """Run ``cases`` as Ray tasks (one CPU each, one GPU each on a CUDA device) and yield
    (case, row) as each task finishes; a task that dies gives an error row (a rerun retries
    it). Closing the iterator early cancels the tasks still pending. Raises ImportError
    (:data:`RAY_MISSING`) without Ray installed."""
    ray = connect(address)
    task = ray.remote(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0,
                      max_retries=0)(_case_task)
    pending = {task.remote(c, str(out_dir), device): c for c in cases}
    from .runner import error_row

    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                case = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as e:  # the task, not the case, failed (worker died, ...)
                    row = error_row(case, f"Ray task failed: {type(e).__name__}: "
                                          f"{str(e).splitlines()[0] if str(e) else ''}")
                yield case, row
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
