import sqlite3

import pytest

from fewstep.bench.store import Store, case_key, merge


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
    assert set(rows) == {"k1", "k2"}
