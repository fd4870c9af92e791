"""The local-database layer: setup, migrations, transactions, disk full, readers and writers."""
from __future__ import annotations

import sqlite3
import stat
import os
import threading
import time
from pathlib import Path

import pytest

from s3fuse.cache.meta import MetaStore
from s3fuse.db import Database, Schema
from s3fuse.errors import CacheFull, UsageError
from s3fuse.model import Entry
from s3fuse.upload.journal import UNKNOWN, Journal

V1 = "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT); INSERT INTO t VALUES (1, 'one');"


def v2(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE t ADD COLUMN c TEXT NOT NULL DEFAULT 'new'")


def test_a_new_file_is_private_in_wal_mode_and_at_the_latest_version(tmp_path: Path):
    db = Database(tmp_path / "x.sqlite", Schema("test store", (V1, v2)))
    assert stat.S_IMODE((tmp_path / "x.sqlite").stat().st_mode) == 0o600
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"
    assert db.query_one("PRAGMA user_version")[0] == 2
    assert db.query("SELECT a, b, c FROM t") == [(1, "one", "new")]
    db.close()


def test_migrations_run_in_order_from_the_stored_version_once(tmp_path: Path):
    path = tmp_path / "x.sqlite"
    Database(path, Schema("test store", (V1,))).close()
    db = Database(path, Schema("test store", (V1, v2)))          # only v2 runs: no second row
    assert db.query("SELECT a, b, c FROM t") == [(1, "one", "new")]
    db.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path):
    path = tmp_path / "x.sqlite"
    Database(path, Schema("test store", (V1,))).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("step failed")

    with pytest.raises(UsageError, match="test store .* is unreadable"):
        Database(path, Schema("test store", (V1, broken)))
    db = Database(path, Schema("test store", (V1,)))
    assert db.query_one("PRAGMA user_version")[0] == 1
    assert db.query("SELECT name FROM sqlite_master WHERE name = 'half'") == []
    db.close()


def test_durable_transactions_are_fsynced_and_the_others_not(tmp_path: Path):
    db = Database(tmp_path / "x.sqlite", Schema("test store", (V1,)))
    with db.transaction(durable=True) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2    # FULL
    with db.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1    # NORMAL
    db.close()


def test_a_full_disk_is_cache_full_in_every_store(tmp_path: Path):
    journal = Journal(tmp_path / "journal.sqlite")
    meta = MetaStore(tmp_path / "meta.sqlite")
    for store in (journal._db, meta._db):
        store._writer.execute(f"PRAGMA max_page_count = {store.query_one('PRAGMA page_count')[0]}")
    with pytest.raises(CacheFull) as full:
        for i in range(1000):
            journal.enqueue("b", f"key-{i}" * 20, "s" * 32, 1, UNKNOWN)
    assert full.value.errno == 28 and "upload journal" in str(full.value)
    with pytest.raises(CacheFull, match="cache metadata"):
        meta.replace_listing("ns", "d", [Entry(f"{i:0100d}", False) for i in range(1000)])
    assert meta.entries("ns", "d") == []                       # rolled back, store still usable
    journal.close()
    meta.close()


def test_readers_never_wait_for_a_writer(tmp_path: Path):
    db = Database(tmp_path / "x.sqlite", Schema("test store", (V1,)))
    inside, done = threading.Event(), threading.Event()

    def write() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2, 'two')")
            inside.set()
            assert done.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(10)
    assert db.query("SELECT a FROM t") == [(1,)]                # the last commit, at once
    done.set()
    writer.join()
    assert db.query("SELECT a FROM t") == [(1,), (2,)]
    db.close()


def test_point_writes_never_wait_for_the_writer_and_are_shown_at_once(tmp_path: Path):
    """While a worker holds the writer lock (a bulk listing), point writes from the loop
    are queued and shown from memory, then written by that worker before it lets go."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing("ns", "d", [Entry("a", False, 1), Entry("b", False, 2)], now=5.0)
    meta.set_pin("p", "complete")
    meta.set_pin("p/q", "complete")
    holding, release = threading.Event(), threading.Event()

    def bulk() -> None:
        with meta.writing():
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=bulk)
    worker.start()
    assert holding.wait(10)
    began = time.monotonic()
    meta.update_entry("ns", "d", Entry("c", False, 3))           # none of these waits
    meta.remove_entry("ns", "d", "a")
    meta.know_dir("ns", "new")
    meta.expire_listing("ns", "d")
    meta.remove_pin("p")
    meta.set_pin("r", "incomplete")
    assert time.monotonic() - began < 1 and meta.queued()       # queued, not written (held)
    assert [e.name for e in meta.entries("ns", "d")] == ["b", "c"]
    assert meta.entry("ns", "d", "a") is None and meta.entry("ns", "d", "c").size == 3  # type: ignore[union-attr]
    assert meta.listed_at("ns", "d") == 0 and meta.listed_at("ns", "new") == 0
    assert meta.listed_at("ns", "unknown") is None
    assert meta.pins() == [("r", "incomplete")]
    release.set()
    worker.join()
    meta.close()

    again = MetaStore(tmp_path / "meta.sqlite")                  # written by the worker
    assert [e.name for e in again.entries("ns", "d")] == ["b", "c"]
    assert again.listed_at("ns", "d") == 0 and again.listed_at("ns", "new") == 0
    assert again.pins() == [("r", "incomplete")]
    again.close()


def test_a_worker_threads_reader_is_closed_when_the_thread_ends(tmp_path: Path):
    """trio's worker threads come and go: each one's reader connection must go with it,
    or every burst of work leaves file descriptors open for the life of the mount."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        worker = threading.Thread(target=meta.entry, args=("ns", "", "x"))
        worker.start()
        worker.join()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    meta.close()
