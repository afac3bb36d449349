import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import threading

import pytest

from fewstep.bench.store import Store, StoreError, case_key, merge


def _row(key, **kw):
    return {"key": key, "suite": "s", "teacher": "t", "method": "m", "impl": "fewstep",
            "nfe_target": 4, "seed": 0, "status": "ok", "metrics": {"ode_rmse": 0.5},
            "config": {"a": 1}, "env": {"torch": "x"}, **kw}


def test_case_key_is_stable_and_order_free():
    assert case_key({"a": 1, "b": [1, 2]}) == case_key({"b": [1, 2], "a": 1})
    assert case_key({"a": 1}) != case_key({"a": 2})
    assert len(case_key({"a": 1})) == 16


def test_put_and_read_back(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put(_row("k1"))
    store.put(_row("k2", status="error", error="boom", metrics={}))
    assert store.done() == {"k1"}
    (row,) = store.rows()
    assert row["metrics"] == {"ode_rmse": 0.5} and row["config"] == {"a": 1}
    assert len(store.rows(status=None)) == 2


def test_rerun_replaces_a_failed_row(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put(_row("k1", status="error", error="boom", metrics={}))
    store.put(_row("k1"))
    assert [r["status"] for r in store.rows(status=None)] == ["ok"]


def test_unknown_column_is_refused_and_nothing_written(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="unknown result columns: \\['bogus'\\]"):
        store.put(_row("k1", bogus=1))
    assert store.rows(status=None) == []


def test_a_failed_transaction_leaves_no_row(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    with pytest.raises(sqlite3.Error):  # the insert fails inside the transaction
        store.put(_row("k1", nfe="x" * 10, seed=object()))
    assert store.rows(status=None) == []


def test_merge_shards(tmp_path):
    a, b = Store(tmp_path / "a.sqlite"), Store(tmp_path / "b.sqlite")
    a.put(_row("k1"))
    b.put(_row("k2"))
    b.put(_row("k1", metrics={"ode_rmse": 0.25}, created=1e12))  # newer copy wins
    assert merge(tmp_path / "all.sqlite", [a.path, b.path]) == 3
    rows = {r["key"]: r for r in Store(tmp_path / "all.sqlite").rows()}
    assert set(rows) == {"k1", "k2"} and rows["k1"]["metrics"] == {"ode_rmse": 0.25}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_merge_newest_wins_whatever_the_order(tmp_path, order):
    old, new = Store(tmp_path / "old.sqlite"), Store(tmp_path / "new.sqlite")
    old.put(_row("k1", metrics={"ode_rmse": 0.5}, created=100.0))
    new.put(_row("k1", metrics={"ode_rmse": 0.25}, created=200.0))
    paths = [old.path, new.path]
    merge(tmp_path / "all.sqlite", [paths[i] for i in order])
    (row,) = Store(tmp_path / "all.sqlite").rows(status=None)
    assert row["metrics"] == {"ode_rmse": 0.25} and row["created"] == 200.0


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_merge_never_replaces_an_ok_row_with_an_error(tmp_path, order):
    ok, err = Store(tmp_path / "ok.sqlite"), Store(tmp_path / "err.sqlite")
    ok.put(_row("k1", created=100.0))
    err.put(_row("k1", status="error", error="boom", metrics={}, created=200.0))  # newer
    paths = [ok.path, err.path]
    merge(tmp_path / "all.sqlite", [paths[i] for i in order])
    (row,) = Store(tmp_path / "all.sqlite").rows(status=None)
    assert row["status"] == "ok" and row["error"] is None


def test_merge_a_missing_source_is_an_error_and_creates_nothing(tmp_path):
    a = Store(tmp_path / "a.sqlite")
    a.put(_row("k1"))
    with pytest.raises(StoreError, match=r"no results database at .*nope\.sqlite"):
        merge(tmp_path / "all.sqlite", [a.path, tmp_path / "nope.sqlite"])
    assert not (tmp_path / "all.sqlite").exists()


def _old_schema_db(path):
    """A database written by an older fewstep: no created or energy_method column."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE cases (key TEXT PRIMARY KEY, suite TEXT, teacher TEXT, method "
                "TEXT, impl TEXT, nfe_target INTEGER, seed INTEGER, metrics TEXT, status TEXT, "
                "error TEXT)")
    con.execute("INSERT INTO cases VALUES ('k1', 's', 't', 'm', 'fewstep', 4, 0, "
                "'{\"ode_rmse\": 0.5}', 'ok', NULL)")
    con.commit()
    con.close()


def test_an_old_schema_is_migrated_and_its_rows_count_as_oldest(tmp_path):
    _old_schema_db(tmp_path / "old.sqlite")
    new = Store(tmp_path / "new.sqlite")
    new.put(_row("k1", metrics={"ode_rmse": 0.25}))
    assert merge(tmp_path / "all.sqlite", [new.path, tmp_path / "old.sqlite"]) == 1
    (row,) = Store(tmp_path / "all.sqlite").rows()
    assert row["metrics"] == {"ode_rmse": 0.25}
    old = Store(tmp_path / "old.sqlite")  # opened for writing: columns added, rows kept
    old.put(_row("k2"))
    assert {r["key"]: r["created"] is None for r in old.rows()} == {"k1": True, "k2": False}


def _corrupt(path, how):
    if how == "not a database":
        path.write_text("this is not a database\n" * 100)
    else:  # truncated: a real database cut to its first page
        store = Store(path)
        for i in range(200):
            store.put(_row(f"k{i}", config={"pad": "x" * 500}))
        data = path.read_bytes()
        path.write_bytes(data[:4096])


@pytest.mark.parametrize("how", ["not a database", "truncated"])
@pytest.mark.parametrize("read_only", [False, True])
def test_database_errors_name_the_file(tmp_path, how, read_only):
    path = tmp_path / "results.sqlite"
    _corrupt(path, how)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        Store(path, read_only=read_only).rows()


@contextlib.contextmanager
def _read_only_dir(path):
    """Make ``path`` unwritable: chmod for users, the immutable attribute for root."""
    undo = ["chmod", "755", str(path)]
    path.chmod(0o555)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("cannot make a directory read-only here (root without chattr)")
        undo = ["chattr", "-i", str(path)]
    try:
        with pytest.raises(OSError):
            (path / "probe").touch()
        yield
    finally:
        subprocess.run(undo, check=True)
        path.chmod(0o755)


def test_a_finished_database_reads_on_a_read_only_mount(tmp_path):
    ro = tmp_path / "ro"
    store = Store(ro / "results.sqlite")
    store.put(_row("k1"))
    store.put(_row("k2"))
    with _read_only_dir(ro):
        assert {r["key"] for r in Store(ro / "results.sqlite", read_only=True).rows()} == \
            {"k1", "k2"}
        assert sorted(os.listdir(ro)) == ["results.sqlite"]  # nothing created


def test_read_only_never_creates_a_database(tmp_path):
    with pytest.raises(StoreError, match="no results database at"):
        Store(tmp_path / "missing" / "results.sqlite", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_a_claimed_case_is_skipped_by_another_handle(tmp_path):
    a, b = Store(tmp_path / "r.sqlite"), Store(tmp_path / "r.sqlite")
    assert a.claim("k1") and not b.claim("k1")
    assert a.claim("k1")  # its own claim: renewed
    a.put(_row("k1"))  # finishing releases the claim; a finished case is never claimed
    assert a.claims() == [] and not b.claim("k1")
    assert b.claim("k2")
    b.release()
    assert a.claim("k2")


def test_stale_claims_are_taken_over(tmp_path):
    a, b = Store(tmp_path / "r.sqlite"), Store(tmp_path / "r.sqlite")
    assert a.claim("expired", lease_s=-1.0) and b.claim("expired")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert a.claim("dead")
    with sqlite3.connect(a.path) as con:  # the claim of a process that has exited
        con.execute("UPDATE claims SET pid = ? WHERE key = 'dead'", (int(dead.stdout),))
    assert b.claim("dead")


def test_concurrent_claims_give_each_case_to_one_handle(tmp_path):
    keys = [f"k{i}" for i in range(200)]
    won: dict[str, list[str]] = {"a": [], "b": []}

    def worker(name):
        store = Store(tmp_path / "r.sqlite")
        won[name] = [k for k in keys if store.claim(k)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won["a"] + won["b"]) == sorted(keys)


def test_report_command_on_a_read_only_mount(tmp_path, capsys):
    from fewstep.cli import main

    ro = tmp_path / "ro"
    store = Store(ro / "results.sqlite")
    for seed in (0, 1):
        store.put(_row(f"k{seed}", seed=seed, nfe=4.0, time_per_sample_s=1e-3))
    with _read_only_dir(ro):
        assert main(["report", "--out", str(ro)]) == 2  # cannot write report.html there
        err = capsys.readouterr().err
        assert f"cannot write the report in {ro}" in err and "--report-dir" in err
        assert main(["report", "--out", str(ro), "--report-dir", str(tmp_path / "html")]) == 0
    assert (tmp_path / "html" / "report.html").exists()
