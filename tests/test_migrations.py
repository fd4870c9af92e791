"""Cache dirs written by the previous s3fuse open with every pending upload intact.

The legacy databases are built from committed SQL (tests/fixtures/legacy_cache): the
exact DDL of the code that wrote them (fbad168, and the first write path 386d037 for
journals without the op/synced/sent columns) plus rows, never from importing old code.
"""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from s3fuse.cache.meta import SCHEMA as META_SCHEMA, MetaStore
from s3fuse.errors import UsageError
from s3fuse.posix import Posix
from s3fuse.upload.journal import UNKNOWN, Journal
from s3fuse.upload.staging import Staging
from tests.test_write_mount import body, keys, sync

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_cache"
NS = "bucket\x00legacy-bucket\x00"
#: Staging files the legacy journal names, with their bytes.
STAGED = {"a" * 32: b"alpha", "b" * 32: b"beta", "c" * 32: b"cee", "d" * 32: b"small and not fsynced",
          "e" * 32: b"v1", "f" * 32: b"v2", "9" * 32: b"trashed"}


def legacy_db(path: Path, fixture: str, bucket: str = "legacy-bucket") -> None:
    """Write `path` as the old code did: its DDL by executescript, WAL, no user_version."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript((FIXTURES / fixture).read_text().replace("'legacy-bucket'", f"'{bucket}'"))
    db.close()
    path.chmod(0o600)


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def legacy_cache(cache: Path, bucket: str = "legacy-bucket") -> Staging:
    cache.mkdir(mode=0o700)
    legacy_db(cache / "journal.sqlite", "journal.sql", bucket)
    legacy_db(cache / "meta.sqlite", "meta.sql", bucket)
    staging = Staging(cache / "staging")
    for staging_id, data in STAGED.items():
        staging.path(staging_id).write_bytes(data)
        staging.path(staging_id).chmod(0o600)
    return staging


def test_journal_of_the_previous_release_keeps_every_pending_upload(tmp_path: Path):
    staging = legacy_cache(tmp_path / "cache")
    path = tmp_path / "cache" / "journal.sqlite"
    assert user_version(path) == 0

    j = Journal(path)
    assert user_version(path) == 3
    pending = {p.id: p for p in j.pending()}
    assert sorted(pending) == [1, 2, 3, 4, 5, 7]
    assert {i: (p.key, p.op, p.staging_id, p.size, p.expected, p.attempts) for i, p in pending.items()} == {
        1: ("docs/a.txt", "put", "a" * 32, 5, None, 0),
        2: ("docs/b.txt", "put", "b" * 32, 4, "etag-b", 1),
        3: ("c.bin", "put", "c" * 32, 3, UNKNOWN, 1),
        4: ("gone.txt", "delete", "", 0, UNKNOWN, 0),
        5: ("small.txt", "put", "d" * 32, 21, UNKNOWN, 2),
        7: ("v.txt", "put", "f" * 32, 2, "etag-v", 0)}
    [(job_id, staging_id, crc)] = j.unsynced()
    assert (job_id, staging_id) == (5, "d" * 32) and staging.crc32(staging_id) == crc
    assert j.state(6) == j.state(7) == ("queued", None)          # superseded: follows 7
    assert j.state(3) == ("failed", "AccessDenied") and j.state(2) == ("uploading", None)
    assert j.multiparts("legacy-bucket", "big.bin") == [(1, "upload-1"), (2, None)]
    assert set(j.trash()) == {"e" * 32, "9" * 32}
    assert j.staging_ids() == set(STAGED) - {"e" * 32} | {"e" * 32, ""}
    summary = j.summary()
    assert summary["files"] == 5 and [f["job"] for f in summary["failures"]] == [3]
    assert summary["conflicts"][0]["conflict_uri"] == "s3://legacy-bucket/x.txt.conflict-1"
    assert summary["conflicts"][0]["kind"] == "copy"
    assert j.recover() == 1                                      # the interrupted upload: replayed
    replay = j.claim(1e18)
    assert replay is not None and replay.id == 1                 # the queue order is kept
    assert j.enqueue("legacy-bucket", "new.txt", "1" * 32, 1, None) == 8  # ids never reused
    j.close()

    again = Journal(path)                                        # migrated once: opens as is
    assert user_version(path) == 3 and len(again.pending()) == 7
    again.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_journal_of_the_first_write_path_gets_its_missing_columns(tmp_path: Path):
    path = tmp_path / "journal.sqlite"
    legacy_db(path, "journal_386d037.sql")
    j = Journal(path)
    assert user_version(path) == 3
    assert [(p.id, p.key, p.op, p.expected) for p in j.pending()] == [
        (1, "docs/a.txt", "put", None), (2, "docs/b.txt", "put", "etag-b"), (3, "c.bin", "put", UNKNOWN)]
    assert j.unsynced() == [] and j.trash() == ["9" * 32]
    assert j.multipart_keys() == [("legacy-bucket", "big.bin")]
    assert j.recover() == 1
    j.mark_synced([], [])                                        # synced_at: a table it lacked
    later = j.enqueue("legacy-bucket", "docs/a.txt", "2" * 32, 6, UNKNOWN, crc32=7)
    assert j.unsynced() == [(later, "2" * 32, 7)]
    assert j.state(1) == ("queued", None) and j.latest()[("legacy-bucket", "docs/a.txt")][0] == later
    j.close()


def test_journal_of_schema_2_gains_posix_metadata_and_keeps_its_ids(tmp_path: Path):
    """Version 3 rebuilds the jobs table (op 'meta', the meta column): every row, its
    state and the AUTOINCREMENT counter survive (ids of finished jobs are never reused)."""
    path = tmp_path / "journal.sqlite"
    legacy_db(path, "journal_v2.sql")
    assert user_version(path) == 2
    j = Journal(path)
    assert user_version(path) == 3
    assert [(p.id, p.key, p.op, p.expected, p.meta) for p in j.pending()] == [
        (1, "docs/a.txt", "put", None, None), (2, "docs/b.txt", "put", "etag-b", None),
        (4, "gone.txt", "delete", UNKNOWN, None), (7, "v.txt", "put", "etag-v", None)]
    assert j.state(2) == ("uploading", None) and j.state(6) == ("queued", None)
    assert j.summary()["conflicts"][0]["kind"] == "kept-remote"
    mode = Posix(mode=0o100640, uid=1000, gid=1000, mtime_ns=1_700_000_000_500_000_000)
    assert j.enqueue_meta("legacy-bucket", "docs/b.txt", mode, 4, UNKNOWN) == 13
    assert j.enqueue_meta("legacy-bucket", "docs/a.txt", mode, 5, UNKNOWN) == 1  # rides along
    rows = {p.id: p for p in j.pending()}
    assert (rows[13].op, rows[13].meta, rows[13].expected) == ("meta", mode, "etag-b")
    assert rows[1].meta == mode and rows[1].op == "put"
    j.close()
    again = Journal(path)  # migrated once: opens as is
    assert user_version(path) == 3 and [p.id for p in again.pending()] == [1, 4, 7, 13]
    again.close()


def test_metadata_of_the_previous_release_keeps_listings_and_pins(tmp_path: Path):
    path = tmp_path / "meta.sqlite"
    legacy_db(path, "meta.sql")
    meta = MetaStore(path)
    assert user_version(path) == META_SCHEMA.version == 2
    assert meta.listed_at(NS, "") == 1700000000.0 and meta.listed_at(NS, "docs") == 0
    assert [(e.name, e.is_dir) for e in meta.entries(NS, "")] == [("docs", True), ("old.txt", False)]
    old = meta.entry(NS, "", "old.txt")
    assert old is not None and (old.size, old.etag) == (11, "etag-old")
    assert old.posix is None and old.mtime_ns == 1690000000000000000  # looked up when needed
    assert meta.pins() == [("legacy-bucket/c.bin", "incomplete"), ("legacy-bucket/docs", "complete")]
    assert meta.counters() == {"hits": 42, "misses": 7}
    meta.close()


@pytest.mark.parametrize("name, store", [("journal.sqlite", Journal), ("meta.sqlite", MetaStore)])
def test_a_database_from_a_newer_release_is_refused_untouched(tmp_path: Path, name, store):
    path = tmp_path / name
    legacy_db(path, "journal.sql" if store is Journal else "meta.sql")
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(UsageError, match="schema version 9, written by a newer s3fuse") as refused:
        store(path)
    assert "\n" not in str(refused.value)
    assert user_version(path) == 9


@pytest.mark.parametrize("name, store, hint", [("journal.sqlite", Journal, "queued uploads"),
                                               ("meta.sqlite", MetaStore, "move it aside")])
def test_an_unreadable_database_is_one_clear_error(tmp_path: Path, name, store, hint):
    path = tmp_path / name
    path.write_bytes(os.urandom(8192))
    with pytest.raises(UsageError, match=f"is unreadable .*{hint}"):
        store(path)


# ------------------------------------------------------------------ through a mount


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.mark.mount
def test_a_mount_on_a_cache_of_the_previous_release_uploads_its_pending_files(
        s3, bucket, mount_factory, tmp_path: Path):
    s3.put_object(Bucket=bucket, Key="gone.txt", Body=b"removed while offline")
    cache = tmp_path / "legacy-cache"
    legacy_cache(cache, bucket)
    db = sqlite3.connect(cache / "journal.sqlite")  # keep the jobs that can land in an empty bucket
    with db:
        db.execute("DELETE FROM jobs WHERE id IN (2, 3, 7)")
        db.execute("DELETE FROM multipart")
    db.close()
    for staging_id in ("b" * 32, "c" * 32, "f" * 32):  # (and their staging files)
        (cache / "staging" / staging_id).unlink()
    db = sqlite3.connect(cache / "meta.sqlite")     # and no pin of a file that is not there
    with db:
        db.execute("DELETE FROM pins WHERE state = 'incomplete'")
    db.close()

    m = mount_factory("--source", f"s3://{bucket}", cache_dir=cache)
    assert m.path(bucket, "small.txt").read_bytes() == b"small and not fsynced"  # shown at once
    assert sync(m.mountpoint).returncode == 0
    assert m.path(bucket, "docs", "a.txt").read_bytes() == b"alpha"
    assert body(s3, bucket, "docs/a.txt") == b"alpha"
    assert body(s3, bucket, "small.txt") == b"small and not fsynced"
    assert "gone.txt" not in keys(s3, bucket)
    assert user_version(cache / "journal.sqlite") == 3 and user_version(cache / "meta.sqlite") == META_SCHEMA.version
