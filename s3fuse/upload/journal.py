"""The upload journal: which staged files still have to reach S3, durable across crashes.

SQLite in `<cache>/journal.sqlite` (WAL), one transaction per state change. Every commit
survives SIGKILL (the WAL is written before COMMIT returns); `durable=True` commits are
also fsynced (synchronous=FULL) and so survive power loss together with every commit
before them (the WAL is a log: a fsync covers its whole prefix). Only the changes that
must survive power loss at once are durable: a file journalled with its staging file
fsynced, a multipart upload about to be created, recovery, and the upload queue's
periodic sync (`mark_synced`), which makes every commit before it durable.

A small file is journalled without fsyncs (`synced=False`, with the CRC-32 of its
bytes): it is safe against a crash of the daemon at once, and against power loss once
the queue's next sync has fsynced its staging file and marked the row synced. After a
power loss, `unsynced()` rows are checked against their CRC before anything trusts them.

A job row is

    queued -> uploading -> (row deleted: done) | queued again (transient) | failed (permanent)

and a failed row stays, with its staged bytes, until `retry_failed` queues it again or
`discard_failed` drops it (only when the user gives it up: `s3fuse sync --discard`).

and carries the condition the upload must meet: the ETag the writer saw when it
opened the file (`If-Match`), `None` for "did not exist" (`If-None-Match: *`), or
UNKNOWN (unconditional). A removal carries one too: the ETag the user saw when removing
the key, so that a newer version written meanwhile by someone else survives (it is then
kept, and the event recorded in `conflicts` with the kind "kept-remote").

Versions of one key: only the last closed version is uploaded, and never an older one
after a newer one. Enqueueing a key supersedes its older queued or failed rows (they
are deleted, their staging files go to the trash, `state()` of their ids follows the
newer row); an older row being uploaded finishes first (`claim` skips a key while one
of its rows is uploading). A newer version is based on the older pending one (the
reader saw the pending local bytes), so it inherits the older row's condition; when
the older one is uploaded, the newer rows of the key are rewritten to `If-Match` the
ETag it produced. A removal superseding a pending version inherits its condition the
same way (removing a new file never uploaded is then conditional on "did not exist":
nothing to remove, and nobody else's object under that name is touched).

A row that was ever claimed (`sent`) may be in S3 already (its answer lost to a crash
or a network error), so it is never superseded unless it failed for good: it is
retried before the newer versions of its key (`claim` skips a key with an older
queued row), its retry recognises its own bytes in S3, and the newer ones then match
the ETag it produced. Superseding it would leave the newer version conditional on the
state before it: a 412 against our own upload, and a conflict copy nobody caused.
An attempt that sent nothing (the link was known offline before its first request,
errors.NotSent) gives the claim back: the row is unsent again, and a newer version
journalled while it was claimed replaces it. Kept, a new file removed offline while a
worker held it was uploaded as a conflict copy when the link came back.

Staging files of finished or superseded rows are listed in a trash table in the same
transaction, and deleted by the caller after a durable `mark_synced` forgot them, so a
staging file that no row nor trash entry names was never submitted.

The condition probe's scratch keys (conditions.py) are recorded the same way before they
are written and deleted at the next start if a crash left them.

Multipart uploads are recorded before they are created (`multipart_begin`), with their
UploadId once known, and forgotten once completed or aborted: whatever is left after a
crash is aborted at the next start. Only recorded UploadIds are ever aborted: a record
whose UploadId never arrived (a crash between the request and its answer) is dropped,
never resolved by listing the key's uploads, which may be another client's.

POSIX metadata (posix.py) rides in the rows: `meta` is the complete metadata a put stores
with its bytes (NULL: no POSIX headers), and an op 'meta' row changes the metadata of an
object already in S3 (a copy onto itself, conditional on the row's ETag; `size` is the
object's). Changes coalesce: a metadata change of a key whose last row is a queued,
never-sent put or meta row replaces that row's metadata in place (a `chmod -R` then a
`touch -R` is one request per object); after a sent row it is a new row, chained like
a newer version. A newer put supersedes unsent meta rows (it carries the newest metadata).

Conflicts (the last KEEP_CONFLICTS) are events shown by `s3fuse status`: "copy" (the
local bytes went to a conflict copy beside the key) or "kept-remote" (a removal or a
metadata change was dropped because the key held a newer version than the one it was
made on).

Stored through s3fuse/db.py (schema version, migrations of older journals, disk full as
ENOSPC). Thread-safe; every method blocks on disk I/O: call it from a worker thread.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any, ContextManager, Iterator, Sequence

from ..db import Database, Schema, run_script
from ..posix import Posix, from_json, to_json

log = logging.getLogger(__name__)

#: `expected` value for "upload unconditionally" (the writer did not know what S3 held).
UNKNOWN: EllipsisType = ...
Expected = str | None | EllipsisType

KEEP_CONFLICTS = 100
REPORT_LIMIT = 20


def _parent_marker(key: str) -> str:
    """SQL for the marker key of the directory holding `key` (an SQL expression): 'a/b/'
    for 'a/b/c' and for 'a/b/c/', '' at the top. rtrim strips the trailing characters that
    are not '/'."""
    base = f"(CASE WHEN substr({key}, -1) = '/' THEN substr({key}, 1, length({key}) - 1) " \
           f"ELSE {key} END)"
    return f"rtrim({base}, replace({base}, '/', ''))"


#: A queued job whose key has no upload running nor an older version queued (one upload per
#: key at a time, in order), and that never runs beside the job of its directory's marker:
#: not while that marker's job runs or waits ahead of it, and a marker's not while a job
#: of its directory runs. SeaweedFS stores an object by first making its parent directory
#: when missing, overwriting a marker PUT that landed meanwhile: both answer 200 and the
#: `dir/` object is gone (seen about once in 100 `mkdir` + write pairs on a busy machine).
#: Either order alone keeps the marker.
_STARTABLE = ("j.state = 'queued' AND NOT EXISTS (SELECT 1 FROM jobs u WHERE u.bucket = j.bucket "
              "AND u.key = j.key AND (u.state = 'uploading' "
              "OR (u.state = 'queued' AND u.id < j.id))) "
              "AND NOT EXISTS (SELECT 1 FROM jobs u WHERE u.bucket = j.bucket "
              f"AND u.key = {_parent_marker('j.key')} AND (u.state = 'uploading' "
              "OR (u.state = 'queued' AND u.id < j.id))) "
              "AND (substr(j.key, -1) != '/' OR NOT EXISTS (SELECT 1 FROM jobs u "
              "WHERE u.state = 'uploading' AND u.bucket = j.bucket "
              f"AND {_parent_marker('u.key')} = j.key))")


def _sized_light_ops(copies: bool) -> tuple[str, ...]:
    """The ops that are light up to a size: puts, and with `copies` metadata changes (a
    copy moves no bytes through the daemon). A removal is light at any size."""
    return ("put", "meta") if copies else ("put",)


def is_light(op: str, size: int, light_max: int, copies: bool = False) -> bool:
    """`_light`'s condition for one job: would a light worker claim it?"""
    return op == "delete" or (op in _sized_light_ops(copies) and size <= light_max)


def _not_held(keys: Sequence[str], jobs: Sequence[int]) -> tuple[str, tuple[str | int, ...]]:
    """The condition (and its arguments) that leaves out the jobs of the keys `keys`
    (`bucket/key`: no bucket name holds a '/') and the jobs `jobs`."""
    condition = ""
    if keys:
        condition += f" AND j.bucket || '/' || j.key NOT IN ({', '.join('?' * len(keys))})"
    if jobs:
        condition += f" AND j.id NOT IN ({', '.join('?' * len(jobs))})"
    return condition, (*keys, *jobs)


def _light(light_max: int | None, copies: bool = False) -> tuple[str, tuple[int, ...]]:
    """The condition (and its argument) that keeps only light jobs (`is_light`): removals,
    puts (`copies`: and metadata changes) of objects of at most `light_max` bytes; none
    when None."""
    if light_max is None:
        return "", ()
    ops = ", ".join(f"'{op}'" for op in _sized_light_ops(copies))
    return f" AND (j.op = 'delete' OR (j.op IN ({ops}) AND j.size <= ?))", (light_max,)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: ids stay valid for state()
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL DEFAULT 'put' CHECK (op IN ('put', 'delete')),
    staging_id TEXT NOT NULL,               -- '' for a delete
    size INTEGER NOT NULL,
    cond TEXT NOT NULL CHECK (cond IN ('any', 'match', 'absent')),
    etag TEXT,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'uploading', 'failed')),
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    error TEXT,
    synced INTEGER NOT NULL DEFAULT 1,      -- 0: staging file not fsynced yet (see crc32)
    crc32 INTEGER,                          -- of the staged bytes, while not synced
    sent INTEGER NOT NULL DEFAULT 0         -- claimed once: may be in S3 (never superseded)
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (bucket, key, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS replaced (old_id INTEGER PRIMARY KEY, new_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replaced_by_new ON replaced (new_id);
CREATE TABLE IF NOT EXISTS trash (staging_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS multipart (
    id INTEGER PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT);
CREATE TABLE IF NOT EXISTS synced_at (id INTEGER PRIMARY KEY CHECK (id = 1), time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    conflict_key TEXT NOT NULL);
"""
#: conflicts.kind: the local bytes went to a conflict copy, or a removal was dropped.
COPY, KEPT_REMOTE = "copy", "kept-remote"


#: What each job op is, in words (logs, `s3fuse sync --discard`'s list).
CHANGE_NAMES = {"put": "upload", "delete": "removal", "meta": "metadata change"}


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    bucket: str
    key: str
    staging_id: str
    size: int
    expected: Expected
    attempts: int
    created: float
    op: str = "put"  # or "delete" (no staging file), "meta" (a metadata change)
    meta: Posix | None = None  # the POSIX metadata the request stores (None: no headers)
    sent: bool = False  # claimed before this attempt: it may be in S3 already

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _encode(expected: Expected) -> tuple[str, str | None]:
    if expected is UNKNOWN:
        return "any", None
    if expected is None:
        return "absent", None
    return "match", expected


def _decode(cond: str, etag: str | None) -> Expected:
    return {"any": UNKNOWN, "absent": None}.get(cond, etag)


def _job(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["bucket"], row["key"], row["staging_id"], row["size"],
               _decode(row["cond"], row["etag"]), row["attempts"], row["created"], row["op"],
               from_json(row["meta"], is_dir=row["key"].endswith("/")), bool(row["sent"]))


def _version_1(db: sqlite3.Connection) -> None:
    """The tables above; journals written before versions (0) get the tables they lack,
    and the columns added since: no `op` before deletes were journalled, no `synced` and
    `crc32` before small files skipped fsync, no `sent` before retries went first."""
    run_script(db, _SCHEMA)
    columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    if "op" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN op TEXT NOT NULL DEFAULT 'put'")
    if "synced" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN synced INTEGER NOT NULL DEFAULT 1")
        db.execute("ALTER TABLE jobs ADD COLUMN crc32 INTEGER")
    if "sent" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")


def _version_2(db: sqlite3.Connection) -> None:
    """Conflicts get a kind: removals dropped for a newer remote version are events too;
    scratch keys of the condition probe are recorded (deleted at the next start)."""
    db.execute(f"ALTER TABLE conflicts ADD COLUMN kind TEXT NOT NULL DEFAULT '{COPY}'")
    db.execute("CREATE TABLE probes (bucket TEXT NOT NULL, key TEXT NOT NULL, "
               "PRIMARY KEY (bucket, key))")


#: The jobs table from version 3 on: op 'meta', and the metadata each request stores.
_JOBS_V3 = """
CREATE TABLE jobs_v3 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL DEFAULT 'put' CHECK (op IN ('put', 'delete', 'meta')),
    staging_id TEXT NOT NULL,               -- '' for a delete or a metadata change
    size INTEGER NOT NULL,                  -- a metadata change: the object's size
    cond TEXT NOT NULL CHECK (cond IN ('any', 'match', 'absent')),
    etag TEXT,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'uploading', 'failed')),
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    error TEXT,
    synced INTEGER NOT NULL DEFAULT 1,
    crc32 INTEGER,
    sent INTEGER NOT NULL DEFAULT 0,
    meta TEXT                               -- posix.to_json of what the request stores
);
"""
_V2_COLUMNS = ("id, bucket, key, op, staging_id, size, cond, etag, state, created, attempts, "
               "next_attempt, error, synced, crc32, sent")


def _version_3(db: sqlite3.Connection) -> None:
    """POSIX metadata: jobs get `meta` and the op 'meta'. SQLite cannot widen a CHECK, so
    the table is rebuilt, keeping its AUTOINCREMENT counter (ids are never reused)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
    run_script(db, _JOBS_V3)
    db.execute(f"INSERT INTO jobs_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM jobs")
    db.execute("DROP TABLE jobs")
    db.execute("ALTER TABLE jobs_v3 RENAME TO jobs")
    if row is not None:
        db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'jobs'", (row[0],))
        db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', ? WHERE NOT EXISTS "
                   "(SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')", (row[0],))
    db.execute("CREATE INDEX jobs_by_key ON jobs (bucket, key, id)")
    db.execute("CREATE INDEX jobs_by_state ON jobs (state, id)")


SCHEMA = Schema("upload journal", (_version_1, _version_2, _version_3),
                unreadable_hint="it may hold queued uploads; move it aside to start without them")


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._db = Database(path, SCHEMA, rows=True)
        # Checkpoints run in the sync pass (`checkpoint`, a thread), never inside a commit:
        # the trio loop commits small files itself (queue.py) and must not fsync there.
        with self._tx() as db:
            db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = self._db.connect()

    def close(self) -> None:
        self._checkpointer.close()
        self._db.close()

    @contextlib.contextmanager
    def writer_if_free(self) -> Iterator[bool]:
        """Whether the writer lock was free; then held for the block (never waits: the
        trio loop journals only when no thread is writing, e.g. a durable commit)."""
        free = self._db.lock.acquire(blocking=False)
        try:
            yield free
        finally:
            if free:
                self._db.lock.release()

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for a writer), so that it
        stays short. Blocking: the sync pass's thread."""
        with self._db.errors():
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _tx(self, durable: bool = False) -> ContextManager[sqlite3.Connection]:
        """A write transaction; `durable`: fsynced at COMMIT (survives power loss)."""
        return self._db.transaction(durable)

    def _read(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self._db.query(sql, *args)

    # ------------------------------------------------------------ jobs

    def enqueue(self, bucket: str, key: str, staging_id: str, size: int,
                expected: Expected, op: str = "put", crc32: int | None = None,
                meta: Posix | None = None, not_before: float = 0.0) -> int:
        """Journal a closed file, or with op="delete" (staging_id "", size 0) the removal
        of a key; returns the job id. Without `crc32` the staging file must already be
        fsynced, and the row is durable at once; with it (the CRC-32 of the staged bytes,
        not fsynced yet) the row waits for `mark_synced`, like a delete. A delete's
        `expected` is the ETag the user saw (see the top). `meta`: the POSIX metadata the
        upload stores with the bytes. `not_before`: when it may start (a rewrite waits,
        rewrites.py; `make_due` ends the wait)."""
        durable = op == "put" and crc32 is None
        with self._tx(durable) as db:
            older = db.execute("SELECT id, state, cond, etag, sent FROM jobs WHERE bucket = ? "
                               "AND key = ? ORDER BY id", (bucket, key)).fetchall()
            job_id = self._insert(db, bucket, key, op, staging_id, size, expected, older,
                                  crc32=crc32, meta=meta, not_before=not_before)
            for row in older:  # a row ever sent stays: it may be in S3 (see the top)
                if row["state"] == "failed" or (row["state"] == "queued" and not row["sent"]):
                    self._supersede(db, row["id"], job_id)
        return job_id

    @staticmethod
    def _insert(db: sqlite3.Connection, bucket: str, key: str, op: str, staging_id: str,
                size: int, expected: Expected, older: list[sqlite3.Row], *,
                crc32: int | None = None, meta: Posix | None = None,
                not_before: float = 0.0) -> int:
        """A new row; after older rows of the key it inherits the last one's condition."""
        cond, etag = (older[-1]["cond"], older[-1]["etag"]) if older else _encode(expected)
        return int(db.execute(
            "INSERT INTO jobs (bucket, key, op, staging_id, size, cond, etag, created, synced, "
            "crc32, meta, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bucket, key, op, staging_id, size, cond, etag, time.time(), int(crc32 is None),
             crc32, to_json(meta), not_before)).lastrowid or 0)

    def make_due(self, job_id: int | None = None) -> int:
        """End the wait of rewrites (rewrites.py): job `job_id`'s, or every one. A retry's
        backoff (a row attempted before) stays. Returns how many rows it changed."""
        where = "" if job_id is None else " AND id = ?"
        with self._tx() as db:
            return db.execute("UPDATE jobs SET next_attempt = 0 WHERE state = 'queued' AND "
                              f"sent = 0 AND attempts = 0 AND next_attempt > 0{where}",
                              () if job_id is None else (job_id,)).rowcount

    def enqueue_meta(self, bucket: str, key: str, meta: Posix, size: int,
                     expected: Expected) -> int:
        """Journal a metadata change of a key (`meta`: its complete new metadata; `size`:
        the object's; `expected`: the ETag it was made on). Coalesced into the key's last
        row when that is a queued, never-sent put or meta row (see the top); failed puts
        of the key take it too, so a retried one stores the newest metadata. Returns the
        id of the row that carries it."""
        text = to_json(meta)
        with self._tx() as db:
            older = db.execute("SELECT id, op, state, cond, etag, sent FROM jobs WHERE "
                               "bucket = ? AND key = ? ORDER BY id", (bucket, key)).fetchall()
            db.execute("UPDATE jobs SET meta = ? WHERE bucket = ? AND key = ? AND op = 'put' "
                       "AND state = 'failed'", (text, bucket, key))
            last = older[-1] if older else None
            if (last is not None and last["op"] in ("put", "meta")
                    and last["state"] == "queued" and not last["sent"]):
                db.execute("UPDATE jobs SET meta = ? WHERE id = ?", (text, last["id"]))
                return int(last["id"])
            return self._insert(db, bucket, key, "meta", "", size, expected, older, meta=meta)

    def _supersede(self, db: sqlite3.Connection, old_id: int, new_id: int) -> None:
        """Drop an older version in favour of `new_id` (which keeps the older creation time)."""
        row = db.execute("SELECT staging_id, created FROM jobs WHERE id = ?", (old_id,)).fetchone()
        db.execute("DELETE FROM jobs WHERE id = ?", (old_id,))
        self._to_trash(db, row["staging_id"])
        db.execute("UPDATE jobs SET created = MIN(created, ?) WHERE id = ?", (row["created"], new_id))
        db.execute("UPDATE replaced SET new_id = ? WHERE new_id = ?", (new_id, old_id))
        db.execute("INSERT OR REPLACE INTO replaced (old_id, new_id) VALUES (?, ?)", (old_id, new_id))

    @staticmethod
    def _to_trash(db: sqlite3.Connection, staging_id: str) -> None:
        if staging_id:  # deletes have no staging file
            db.execute("INSERT OR IGNORE INTO trash (staging_id) VALUES (?)", (staging_id,))

    def copying(self, bucket: str, key: str) -> bool:
        """Is a metadata change of the key being sent now (a copy onto itself)?"""
        return bool(self._read("SELECT 1 FROM jobs WHERE bucket = ? AND key = ? AND "
                               "state = 'uploading' AND op = 'meta' LIMIT 1", bucket, key))

    def cancel(self, bucket: str, key: str) -> list[int]:
        """Drop the versions of a key not being uploaded; returns the ids still uploading."""
        with self._tx() as db:
            rows = db.execute("SELECT id, state, staging_id FROM jobs WHERE bucket = ? AND key = ?",
                              (bucket, key)).fetchall()
            for row in rows:
                if row["state"] != "uploading":
                    db.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
                    self._to_trash(db, row["staging_id"])
        return [row["id"] for row in rows if row["state"] == "uploading"]

    def recover(self) -> int:
        """After a restart: uploads that were running are queued again, ahead of the newer
        versions of their key (they may have reached S3 just before the crash)."""
        with self._tx(durable=True) as db:
            return db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'uploading'").rowcount

    def claim(self, now: float, light_max: int | None = None, copies: bool = False,
              held_keys: Sequence[str] = (), held: Sequence[int] = ()) -> Job | None:
        """The oldest due queued job whose key is not being uploaded, now marked uploading;
        with `light_max`, only a removal or a put (`copies`: or a metadata change) of an
        object of at most that many bytes; never one `held`, nor of `held_keys`
        (queue.py, `hold`)."""
        light, args = _light(light_max, copies)
        skip, skipped = _not_held(held_keys, held)
        with self._tx() as db:
            row = db.execute(f"SELECT * FROM jobs j WHERE {_STARTABLE} AND next_attempt <= ?"
                             f"{light}{skip} ORDER BY id LIMIT 1",
                             (now, *args, *skipped)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'uploading', sent = 1 WHERE id = ?", (row["id"],))
        return _job(row)

    def has_active(self) -> bool:
        """Is any job queued or uploading (a worker's claim may find one)? A read."""
        return bool(self._read("SELECT 1 FROM jobs WHERE state != 'failed' LIMIT 1"))

    def next_due(self, light_max: int | None = None, copies: bool = False,
                 held_keys: Sequence[str] = (), held: Sequence[int] = ()) -> float | None:
        """When the next startable job (with `light_max` and `copies`: light job, as for
        `claim`; not one held) becomes due (None: none; a key's running upload, or the
        end of a hold, wakes us)."""
        light, args = _light(light_max, copies)
        skip, skipped = _not_held(held_keys, held)
        rows = self._read(f"SELECT MIN(next_attempt) AS due FROM jobs j WHERE {_STARTABLE}"
                          f"{light}{skip}", *args, *skipped)
        due = rows[0]["due"]
        return None if due is None else float(due)

    def done(self, job_id: int, etag: str, conflict_key: str | None = None, *,
             kept_remote: bool = False) -> None:
        """The job's bytes are in S3 (at `conflict_key` when the key had changed), or with
        `kept_remote` a removal was dropped: the key holds a newer version (ETag `etag`)."""
        with self._tx() as db:
            row = db.execute("SELECT bucket, key, op, staging_id FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None:
                return
            bucket, key = row["bucket"], row["key"]
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._to_trash(db, row["staging_id"])
            db.execute("DELETE FROM replaced WHERE new_id = ?", (job_id,))
            if kept_remote:  # newer versions still expect what the user removed: conflicts
                self._conflict(db, bucket, key, "", KEPT_REMOTE)
            elif row["op"] == "delete":  # newer versions were written after the removal
                db.execute("UPDATE jobs SET cond = 'absent', etag = NULL WHERE bucket = ? "
                           "AND key = ? AND id > ?", (bucket, key, job_id))
            elif conflict_key is None:  # newer versions were based on this one
                db.execute("UPDATE jobs SET cond = 'match', etag = ? WHERE bucket = ? AND key = ? "
                           "AND id > ?", (etag, bucket, key, job_id))
            else:
                self._conflict(db, bucket, key, conflict_key, COPY)

    @staticmethod
    def _conflict(db: sqlite3.Connection, bucket: str, key: str, conflict_key: str,
                  kind: str) -> None:
        db.execute("INSERT INTO conflicts (time, bucket, key, conflict_key, kind) "
                   "VALUES (?, ?, ?, ?, ?)", (time.time(), bucket, key, conflict_key, kind))
        db.execute("DELETE FROM conflicts WHERE id <= (SELECT MAX(id) FROM conflicts) - ?",
                   (KEEP_CONFLICTS,))

    def requeue(self, job_id: int, error: str | None, delay: float, *,
                counted: bool = True, unsent: bool = False) -> None:
        """Try again after `delay` seconds (`counted`: this was an attempt, not an outage).
        `unsent`: nothing of it can be in S3 (never sent before, and this attempt sent
        nothing: the link was known offline first); the row is then as if never claimed,
        and a newer version of its key journalled meanwhile replaces it, as at enqueue."""
        self._unsuccessful(job_id, "queued", error, time.time() + delay, int(counted), unsent)

    def fail(self, job_id: int, error: str) -> None:
        """A permanent failure: kept with its staged bytes until `retry_failed`."""
        self._unsuccessful(job_id, "failed", error, 0.0, 1)

    def _unsuccessful(self, job_id: int, state: str, error: str | None, next_attempt: float,
                      attempts: int, unsent: bool = False) -> None:
        with self._tx() as db:
            row = db.execute("SELECT bucket, key, op FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None:
                return
            # a newer metadata change does not replace the bytes of a failed upload
            newer = db.execute("SELECT MAX(id) AS id FROM jobs WHERE bucket = ? AND key = ? "
                               "AND id > ? AND (op != 'meta' OR ? = 'meta')",
                               (row["bucket"], row["key"], job_id, row["op"])).fetchone()["id"]
            if newer is not None and (state == "failed" or unsent):  # a newer version replaces
                self._supersede(db, job_id, newer)  # it (a retried one may be in S3: it goes first)
                return
            db.execute("UPDATE jobs SET state = ?, error = ?, next_attempt = ?, "
                       "attempts = attempts + ?, sent = sent AND ? WHERE id = ?",
                       (state, error, next_attempt, attempts, int(not unsent), job_id))

    def unsynced(self) -> list[tuple[int, str, int]]:
        """(job id, staging id, CRC-32) of the files journalled before their fsync."""
        rows = self._read("SELECT id, staging_id, crc32 FROM jobs WHERE synced = 0 AND op = 'put'")
        return [(r["id"], r["staging_id"], r["crc32"]) for r in rows]

    def mark_synced(self, job_ids: list[int], trash: list[str]) -> None:
        """Durably: these jobs' staging files are fsynced, and these trashed staging files are
        about to be deleted (so the rows that dropped them are durable before they go)."""
        with self._tx(durable=True) as db:
            db.executemany("UPDATE jobs SET synced = 1, crc32 = NULL WHERE id = ?",
                           [(i,) for i in job_ids])
            db.executemany("DELETE FROM trash WHERE staging_id = ?", [(s,) for s in trash])
            # always write something: a commit without changes is not fsynced, and this one
            # must make every commit before it durable
            db.execute("INSERT OR REPLACE INTO synced_at (id, time) VALUES (1, ?)", (time.time(),))

    def discard_failed(self, job_ids: Sequence[int]) -> list[Job]:
        """Give up these failed changes (the user asked: `s3fuse sync --discard`): their rows
        go, their staging files to the trash. Returns the jobs dropped; an id that is not
        failed (retried meanwhile, or unknown) is left alone: only what the user was shown
        as failed is dropped, never a change that may still be sent."""
        with self._tx() as db:
            rows = [row for job_id in job_ids if (row := db.execute(
                "SELECT * FROM jobs WHERE id = ? AND state = 'failed'", (job_id,)).fetchone())]
            for row in rows:
                db.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
                self._to_trash(db, row["staging_id"])
                db.execute("DELETE FROM replaced WHERE new_id = ?", (row["id"],))
        return [_job(row) for row in rows]

    def retry_failed(self) -> int:
        """Queue every permanently failed job again; returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = 'queued', attempts = 0, next_attempt = 0, "
                              "error = NULL WHERE state = 'failed'").rowcount

    def state(self, job_id: int) -> tuple[str, str | None]:
        """('queued'|'uploading'|'failed'|'done', error) of a job or of the version replacing it."""
        row = self._db.query_one("SELECT state, error FROM jobs WHERE id = COALESCE("
                                 "(SELECT new_id FROM replaced WHERE old_id = ?), ?)",
                                 job_id, job_id)
        return (row["state"], row["error"]) if row else ("done", None)

    def latest(self) -> dict[tuple[str, str], tuple[int, str]]:
        """(bucket, key) -> (job id of the newest row, staging id of the newest version
        of the bytes: "" for a delete, or when only metadata changes are journalled) of
        every journalled key."""
        rows = self._read("SELECT bucket, key, MAX(id) AS id, (SELECT d.staging_id FROM jobs d "
                          "WHERE d.bucket = j.bucket AND d.key = j.key AND d.op != 'meta' "
                          "ORDER BY d.id DESC LIMIT 1) AS staging_id FROM jobs j "
                          "GROUP BY bucket, key")
        return {(r["bucket"], r["key"]): (r["id"], r["staging_id"] or "") for r in rows}

    def latest_of(self, bucket: str, key: str) -> tuple[int, str] | None:
        """`latest()` of one key (None: nothing journalled)."""
        rows = self._read("SELECT MAX(id) AS id, (SELECT d.staging_id FROM jobs d WHERE "
                          "d.bucket = ? AND d.key = ? AND d.op != 'meta' ORDER BY d.id DESC "
                          "LIMIT 1) AS staging_id FROM jobs WHERE bucket = ? AND key = ?",
                          bucket, key, bucket, key)
        return None if rows[0]["id"] is None else (rows[0]["id"], rows[0]["staging_id"] or "")

    def pending(self) -> list[Job]:
        """The newest job of every journalled key (what the local view shows until done)."""
        rows = self._read("SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs "
                          "GROUP BY bucket, key) ORDER BY id")
        return [_job(r) for r in rows]

    def summary(self) -> dict[str, Any]:
        """Pending files and bytes, the oldest one's age, failures, transient errors, conflicts."""
        now = time.time()
        with self._db.snapshot() as db:
            pending = db.execute("SELECT COUNT(*) AS n, "
                                 "COALESCE(SUM(CASE WHEN op = 'meta' THEN 0 ELSE size END), 0) "
                                 "AS bytes, "
                                 "MIN(created) AS oldest, SUM(state = 'uploading') AS active "
                                 "FROM jobs WHERE state != 'failed'").fetchone()
            failed = db.execute("SELECT id, bucket, key, op, size, error, created FROM jobs "
                                "WHERE state = 'failed' ORDER BY id").fetchall()
            retrying = db.execute("SELECT bucket, key, attempts, error FROM jobs WHERE "
                                  "state = 'queued' AND error IS NOT NULL ORDER BY id LIMIT ?",
                                  (REPORT_LIMIT,)).fetchall()
            conflicts = db.execute("SELECT time, bucket, key, conflict_key, kind FROM conflicts "
                                   "ORDER BY id DESC LIMIT ?", (REPORT_LIMIT,)).fetchall()
        return {
            "files": pending["n"], "bytes": pending["bytes"], "uploading": pending["active"] or 0,
            "oldest_age": now - pending["oldest"] if pending["oldest"] is not None else None,
            "failures": [{"job": r["id"], "uri": f"s3://{r['bucket']}/{r['key']}", "size": r["size"],
                          "op": r["op"], "error": r["error"], "since": r["created"]}
                         for r in failed],
            "retrying": [{"uri": f"s3://{r['bucket']}/{r['key']}", "attempts": r["attempts"],
                          "error": r["error"]} for r in retrying],
            "conflicts": [{"time": r["time"], "uri": f"s3://{r['bucket']}/{r['key']}",
                           "kind": r["kind"],
                           "conflict_uri": (f"s3://{r['bucket']}/{r['conflict_key']}"
                                            if r["kind"] == COPY else None)}
                          for r in conflicts],
        }

    # ------------------------------------------------------------ staging files

    def staging_ids(self) -> set[str]:
        """Staging files the journal knows about (jobs and trash)."""
        rows = self._read("SELECT staging_id FROM jobs UNION SELECT staging_id FROM trash")
        return {r["staging_id"] for r in rows}

    def trash(self) -> list[str]:
        return [r["staging_id"] for r in self._read("SELECT staging_id FROM trash")]

    # ------------------------------------------------------------ multipart uploads

    def multipart_begin(self, bucket: str, key: str) -> int:
        """Record a multipart upload about to be created (before CreateMultipartUpload)."""
        with self._tx(durable=True) as db:
            return int(db.execute("INSERT INTO multipart (bucket, key) VALUES (?, ?)",
                                  (bucket, key)).lastrowid or 0)

    def multipart_created(self, record: int, upload_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE multipart SET upload_id = ? WHERE id = ?", (upload_id, record))

    def multipart_end(self, record: int) -> None:
        """The upload was completed or aborted."""
        with self._tx() as db:
            db.execute("DELETE FROM multipart WHERE id = ?", (record,))

    def multiparts(self, bucket: str, key: str) -> list[tuple[int, str | None]]:
        """(record, UploadId or None when its creation's answer was lost) left for a key."""
        rows = self._read("SELECT id, upload_id FROM multipart WHERE bucket = ? AND key = ?",
                          bucket, key)
        return [(r["id"], r["upload_id"]) for r in rows]

    # ------------------------------------------------------------ probe keys

    def probe_begin(self, bucket: str, key: str) -> None:
        """Record a scratch key of the condition probe about to be written (durably)."""
        with self._tx(durable=True) as db:
            db.execute("INSERT OR IGNORE INTO probes (bucket, key) VALUES (?, ?)", (bucket, key))

    def probe_end(self, bucket: str, key: str) -> None:
        """The scratch key is deleted."""
        with self._tx() as db:
            db.execute("DELETE FROM probes WHERE bucket = ? AND key = ?", (bucket, key))

    def probe_keys(self) -> list[tuple[str, str]]:
        """Scratch keys a crash may have left in S3."""
        return [(r["bucket"], r["key"]) for r in self._read("SELECT bucket, key FROM probes")]

    def multipart_keys(self) -> list[tuple[str, str]]:
        return [(r["bucket"], r["key"])
                for r in self._read("SELECT DISTINCT bucket, key FROM multipart")]
