"""SQLite result store: one row per case, keyed by a hash of the case's full configuration.

Each row is written in one transaction, so an interrupted run never leaves a torn row and a
rerun skips finished keys. Several processes may write to one file: a process *claims* a case
(a row in the ``claims`` table naming its host, pid and a lease expiry, taken inside an
immediate transaction) before running it, and the others skip claimed cases; the claim of a
dead process or an expired lease is taken over. Separate shard files merge with
:func:`merge`, newest finished row first, never an error over a finished result.

A database that cannot be written (a read-only mount) is opened read-only and immutable for
reading; every database error names the file (:class:`StoreError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["COLUMNS", "LEASE_S", "Store", "StoreError", "case_key", "distinct_errors", "merge"]

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
    "rounds": "INTEGER",       # network calls of one run, in sequence (counted): = nfe for a
                               # sequential solver, fewer for a parallel one (ParaDiGMS)
    "n_samples": "INTEGER",
    "metrics": "TEXT",         # JSON: {"ode_rmse": float, "sw": float, ...}
    "wall_s": "REAL",          # wall-clock of sampling the whole batch (set-up excluded)
    "time_per_sample_s": "REAL",
    "network_s": "REAL",       # time spent inside the denoiser
    "overhead_per_step_s": "REAL",  # (wall - network) / steps: the solver's own cost
    "setup_time_s": "REAL",    # plan / scheduler construction, outside wall_s and overhead
    "train_seconds": "REAL",   # one-off training cost of a student (0: training-free; NULL:
    "train_teacher_nfe": "REAL",  # not known); teacher evaluations per sample row
    "peak_mem_mb": "REAL",
    "mem_method": "TEXT",
    "energy_j": "REAL",        # NULL when not measured
    "energy_method": "TEXT",   # e.g. "zeus" or "not measured"
    "config": "TEXT",          # JSON of the full case configuration
    "env": "TEXT",             # JSON: versions, device, dtype, threads, git revision
    "status": "TEXT",          # "ok" or "error"
    "error": "TEXT",
    "created": "REAL",         # unix time the case finished (the row was written); merge order
}
_JSON = ("metrics", "config", "env")
_CLAIMS = "key TEXT PRIMARY KEY, host TEXT, pid INTEGER, owner TEXT, expires REAL"
# Why a suite's budgets were not run (a method below its minimum NFE, a student off its
# teacher...), so the report lists what was not measured beside what was.
_SKIPPED = "suite TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (suite, reason)"
LEASE_S = 3600.0  # a claim not released within this time is taken over (other hosts)
# Errors that describe the file (not a bug in the caller): not a database, malformed, locked,
# cannot be opened. ProgrammingError, IntegrityError etc. are subclasses and pass through.
_FILE_ERRORS = (sqlite3.DatabaseError, sqlite3.OperationalError)


class StoreError(ValueError):
    """A results database that cannot be opened, read or written; the message names the file."""


def case_key(config: dict[str, Any]) -> str:
    """Stable hash of a case configuration (sorted JSON, SHA-256, 16 hex digits)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Store:
    """A results database at ``path``.

    ``read_only=False`` (default) creates the file and its tables if needed and adds columns
    missing from an older schema. ``read_only=True`` never creates or changes anything: the
    file must exist, and where it cannot be written (a read-only mount, where SQLite's WAL
    cannot create its shared-memory file) it is opened ``immutable``.

    Raises :class:`StoreError` naming the file for a missing (read-only), corrupt, truncated
    or non-database file.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.owner = uuid.uuid4().hex  # this handle's identity in claims
        self._host, self._pid = socket.gethostname(), os.getpid()
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"no results database at {self.path}")
            writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
            self._uri = f"{self.path.resolve().as_uri()}?mode=ro" + \
                ("" if writable else "&immutable=1")
            with self._db() as con:
                if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                   "name = 'cases'").fetchone():
                    raise StoreError(f"{self.path} is not a fewstep results database (no "
                                     "'cases' table)")
            return
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a results database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._uri = self.path.resolve().as_uri()
        self._use_wal()
        with self._db(write=True) as con:
            cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS cases ({cols})")
            con.execute(f"CREATE TABLE IF NOT EXISTS claims ({_CLAIMS})")
            con.execute(f"CREATE TABLE IF NOT EXISTS skipped ({_SKIPPED})")
            have = {r[1] for r in con.execute("PRAGMA table_info(cases)")}
            for k in COLUMNS.keys() - have:  # migrate an older schema: NULL in old rows
                con.execute(f"ALTER TABLE cases ADD COLUMN {k} {COLUMNS[k]}")

    def _use_wal(self, tries: int = 600) -> None:
        """Switch the file to WAL once. Two processes opening a new database at once can both
        try; the switch takes an exclusive lock that SQLite's busy timeout does not wait for,
        so the loser retries (every 0.1 s, up to a minute) until it sees WAL."""
        for attempt in range(tries):
            try:
                with self._db() as con:
                    if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        con.execute("PRAGMA journal_mode=WAL")
                return
            except StoreError as e:
                if "locked" not in str(e) or attempt == tries - 1:
                    raise
                time.sleep(0.1)

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection, closed on exit; ``write`` runs the block in one immediate
        transaction (committed whole or rolled back). File errors become StoreError."""
        try:
            con = sqlite3.connect(self._uri, uri=True, timeout=60.0, isolation_level=None)
            try:
                if write:
                    con.execute("BEGIN IMMEDIATE")
                yield con
                if write:
                    con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            finally:
                con.close()
        except _FILE_ERRORS as e:
            if type(e) not in _FILE_ERRORS:
                raise
            raise StoreError(f"results database {self.path}: {e}") from None

    def done(self) -> set[str]:
        """Keys of finished cases."""
        with self._db() as con:
            return {r[0] for r in con.execute("SELECT key FROM cases WHERE status = 'ok'")}

    def _values(self, row: dict[str, Any]) -> list[Any]:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        return [json.dumps(row[k], sort_keys=True, default=str) if k in _JSON and k in row
                else row.get(k) for k in COLUMNS]

    def put(self, row: dict[str, Any]) -> None:
        """Insert or replace one case row atomically, releasing its claim (``created``, the
        finish time, defaults to now)."""
        values = self._values({**row, "created": row.get("created", time.time())})
        with self._db(write=True) as con:  # one transaction: committed whole or not at all
            con.execute(f"INSERT OR REPLACE INTO cases ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))})", values)
            con.execute("DELETE FROM claims WHERE key = ?", (row["key"],))

    def offer(self, row: dict[str, Any]) -> bool:
        """Insert ``row`` unless the stored row of its key should win: an ok row is never
        replaced by an error row, otherwise the later ``created`` (finish time; NULL is
        oldest) wins and a tie keeps the stored row. Returns whether ``row`` was written."""
        values = self._values(row)
        cols = ", ".join(COLUMNS)
        update = ", ".join(f"{k} = excluded.{k}" for k in COLUMNS if k != "key")
        with self._db(write=True) as con:
            cur = con.execute(
                f"INSERT INTO cases ({cols}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                f"ON CONFLICT(key) DO UPDATE SET {update} WHERE "
                "NOT (cases.status = 'ok' AND excluded.status IS NOT 'ok') AND "
                "((cases.status IS NOT 'ok' AND excluded.status = 'ok') OR "
                "COALESCE(excluded.created, 0) > COALESCE(cases.created, 0))", values)
            return cur.rowcount > 0

    def claim(self, key: str, lease_s: float = LEASE_S) -> bool:
        """Claim case ``key`` for this handle; False if it is finished or claimed by another
        live owner. A claim whose lease expired, or whose process on this host has died,
        is taken over. The check and the claim are one immediate transaction."""
        now = time.time()
        with self._db(write=True) as con:
            if con.execute("SELECT 1 FROM cases WHERE key = ? AND status = 'ok'",
                           (key,)).fetchone():
                return False
            held = con.execute("SELECT host, pid, owner, expires FROM claims WHERE key = ?",
                               (key,)).fetchone()
            if held is not None and held[2] != self.owner and held[3] > now and not (
                    held[0] == self._host and not _alive(held[1])):
                return False
            con.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                        (key, self._host, self._pid, self.owner, now + lease_s))
            return True

    def release(self) -> None:
        """Drop every claim this handle still holds (an interrupted run's unfinished cases)."""
        with self._db(write=True) as con:
            con.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))

    def claims(self) -> list[dict[str, Any]]:
        """The open claims: key, host, pid, owner, expires."""
        with self._db() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM claims")]

    def put_skipped(self, suite: str, reasons: Iterable[str]) -> None:
        """Record why budgets of ``suite`` were not run (each reason once)."""
        with self._db(write=True) as con:
            con.executemany("INSERT OR IGNORE INTO skipped VALUES (?, ?)",
                            [(suite, r) for r in reasons])

    def skipped(self, suite: str | None = None) -> list[tuple[str, str]]:
        """``(suite, reason)`` of every recorded skipped budget (optionally of one suite), in
        the order recorded; empty for a database written before skips were recorded."""
        with self._db() as con:
            if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'skipped'").fetchone():
                return []
            rows = con.execute("SELECT suite, reason FROM skipped ORDER BY rowid").fetchall()
        return [(s, r) for s, r in rows if suite is None or s == suite]

    def rows(self, suite: str | None = None, status: str | None = "ok") -> list[dict[str, Any]]:
        """All rows (optionally of one suite / status) with JSON columns decoded."""
        query, args = "SELECT * FROM cases WHERE 1=1", list[str]()
        if suite is not None:
            query, args = query + " AND suite = ?", [*args, suite]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._db() as con:
            con.row_factory = sqlite3.Row
            out: list[dict[str, Any]] = [{k: None for k in COLUMNS} | dict(r)
                   for r in con.execute(query + " ORDER BY rowid", args)]
        out.sort(key=lambda r: r["created"] or 0.0)  # finish order (an old schema: NULL)
        for r in out:
            for k in _JSON:
                try:
                    r[k] = json.loads(r[k]) if r[k] else {}
                except json.JSONDecodeError as e:
                    raise StoreError(f"results database {self.path}: row {r['key']}: column "
                                     f"{k} is not JSON ({e})") from None
        return out


def merge(target: str | Path, sources: Iterable[str | Path]) -> int:
    """Merge the rows of ``sources`` into ``target``: per key the newest finished row wins
    (by ``created``), and an error row never replaces an ok row, whatever the order of the
    sources. Every source must be an existing database (checked before ``target`` is created
    or changed; :class:`StoreError` names the first that is not). Returns the number of
    source rows written (rows that lost to a stored row are not counted)."""
    stores = [Store(src, read_only=True) for src in sources]
    if any(Path(s.path).resolve() == Path(target).resolve() for s in stores):
        raise StoreError(f"merge target {target} is also a source")
    dst = Store(target)
    for src in stores:
        for suite, reason in src.skipped():
            dst.put_skipped(suite, [reason])
    return sum(dst.offer(row) for src in stores for row in src.rows(status=None))


T = TypeVar("T")


def distinct_errors(failures: Iterable[tuple[T, str]]) -> list[tuple[str, int, T]]:
    """Each distinct error message of ``(item, message)`` pairs once, as ``(message, count,
    first item with it)``, most frequent first; ties keep the order of first appearance."""
    first: dict[str, T] = {}
    counts: dict[str, int] = {}
    for item, error in failures:
        first.setdefault(error, item)
        counts[error] = counts.get(error, 0) + 1
    return sorted(((e, n, first[e]) for e, n in counts.items()), key=lambda t: -t[1])
