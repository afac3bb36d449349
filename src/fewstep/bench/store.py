"""SQLite result store: one row per case, keyed by a hash of the case's full configuration.

Each row is written in one transaction, so an interrupted run never leaves a torn row and a
rerun skips finished keys. Several processes (shards) may write to one file; separate shard
files merge with :func:`merge`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "Store", "case_key", "merge"]

# name -> SQL type; metrics, config and env are JSON objects.
COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY",
    "suite": "TEXT",
    "teacher": "TEXT",
    "method": "TEXT",
    "impl": "TEXT",            # "fewstep" or the peer library, e.g. "diffusers"
    "nfe_target": "INTEGER",   # the budget asked for
    "seed": "INTEGER",
    "nfe": "REAL",             # evaluations actually spent per sample (counted)
    "n_samples": "INTEGER",
    "metrics": "TEXT",         # JSON: {"ode_rmse": float, "sw": float, ...}
    "wall_s": "REAL",          # wall-clock of sampling the whole batch (set-up excluded)
    "time_per_sample_s": "REAL",
    "network_s": "REAL",       # time spent inside the denoiser
    "overhead_per_step_s": "REAL",  # (wall - network) / steps: the solver's own cost
    "setup_time_s": "REAL",    # plan / scheduler construction, outside wall_s and overhead
    "peak_mem_mb": "REAL",
    "mem_method": "TEXT",
    "energy_j": "REAL",        # NULL when not measured
    "energy_method": "TEXT",   # e.g. "zeus" or "not measured"
    "config": "TEXT",          # JSON of the full case configuration
    "env": "TEXT",             # JSON: versions, device, dtype, threads, git revision
    "status": "TEXT",          # "ok" or "error"
    "error": "TEXT",
    "created": "REAL",
}
_JSON = ("metrics", "config", "env")


def case_key(config: dict[str, Any]) -> str:
    """Stable hash of a case configuration (sorted JSON, SHA-256, 16 hex digits)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Store:
    """A results database at ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS cases ({cols})")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60.0)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def done(self) -> set[str]:
        """Keys of finished cases."""
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT key FROM cases WHERE status = 'ok'")}

    def put(self, row: dict[str, Any]) -> None:
        """Insert or replace one case row atomically."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        row = {**row, "created": row.get("created", time.time())}
        values = [json.dumps(row[k], sort_keys=True, default=str) if k in _JSON and k in row
                  else row.get(k) for k in COLUMNS]
        with self._connect() as con:  # one transaction: committed whole or not at all
            con.execute(f"INSERT OR REPLACE INTO cases VALUES ({', '.join('?' * len(COLUMNS))})",
                        values)

    def rows(self, suite: str | None = None, status: str | None = "ok") -> list[dict[str, Any]]:
        """All rows (optionally of one suite / status) with JSON columns decoded."""
        query, args = "SELECT * FROM cases WHERE 1=1", []
        if suite is not None:
            query, args = query + " AND suite = ?", [*args, suite]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            out = [dict(r) for r in con.execute(query + " ORDER BY created", args)]
        for r in out:
            for k in _JSON:
                r[k] = json.loads(r[k]) if r[k] else {}
        return out


def merge(target: str | Path, sources: Iterable[str | Path]) -> int:
    """Copy every row of ``sources`` into ``target`` (newer rows win); returns rows copied."""
    dst, n = Store(target), 0
    for src in sources:
        for row in Store(src).rows(status=None):
            dst.put(row)
            n += 1
    return n
