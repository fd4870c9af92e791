"""One layer for every local SQLite store: the metadata store, the upload journal, the
manifest indexes.

Each store declares a `Schema` (its name and an ordered list of migration steps) and
gets the same handling: the file is created 0600 before SQLite opens it; WAL,
synchronous=NORMAL and a busy timeout on every connection; a versioned schema
(`PRAGMA user_version`) migrated in one durable transaction at open, a database newer
than the code refused; an unreadable file refused with one clear error; and a full
disk (SQLITE_FULL) raised as CacheFull (ENOSPC) wherever it happens.

Concurrency: one writer connection behind `lock` (a lock only writers take, held for
the whole of a bulk write), and one reader connection per thread. In WAL mode readers
see the last commit and never wait for a writer, so point queries from the trio loop
answer while another thread stores a 200,000-entry listing.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import CacheFull, UsageError, disk_full, full_disk_is_cache_full

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

#: A migration step: an SQL script (no transaction statements), or a function of the
#: connection, run inside the migration's transaction.
Step = str | Callable[[sqlite3.Connection], None]


class _Reader:
    """A thread's reader connection, owned by that thread's local storage: closed when
    the thread ends (trio's idle worker threads exit after a few seconds, and new ones
    come; held elsewhere, their connections and file descriptors would pile up)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __del__(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class Schema:
    """A store's schema: step i takes a database from version i to version i + 1.

    Version 0 is a new file or one written before schemas were versioned: the first
    step must accept both."""

    title: str          # "upload journal": how errors name the file
    steps: tuple[Step, ...]
    unreadable_hint: str = "move it aside to start afresh"

    @property
    def version(self) -> int:
        return len(self.steps)


class DatabaseRefused(UsageError):
    """A store file that cannot be used as it is (unreadable, or from a newer s3fuse)."""


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (executescript would COMMIT first)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\n;"):
        yield pending


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Execute an SQL script inside the caller's transaction."""
    for statement in statements(script):
        db.execute(statement)


def create_private(path: Path) -> None:
    """Create `path` 0600 unless it exists (SQLite gives -wal and -shm the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


@contextmanager
def transaction_on(db: sqlite3.Connection,
                   begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """`begin` ... COMMIT on a connection in autocommit mode (isolation_level None), rolled
    back when the block (or the COMMIT) fails."""
    try:
        db.execute(begin)
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLITE_FULL may have rolled it back already, and
            db.execute("ROLLBACK")  # "cannot rollback" would hide the real error
        raise


class Database:
    """One SQLite file of a store, opened, migrated and shared between threads."""

    def __init__(self, path: Path, schema: Schema, *, rows: bool = False):
        self.path = path
        self.schema = schema
        self._rows = rows  # sqlite3.Row results instead of tuples
        self.lock = threading.RLock()  # the writer lock: only writers take it
        self._durable = False
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()  # to close at close()
        self._readers_lock = threading.Lock()
        try:
            create_private(path)
            self._writer = self.connect()
            self._migrate()
        except CacheFull:
            raise
        except sqlite3.DatabaseError as exc:
            raise DatabaseRefused(f"{schema.title} {path} is unreadable ({exc}): "
                                  f"{schema.unreadable_hint}") from None
        except OSError as exc:
            raise DatabaseRefused(f"cannot open {schema.title} {path}: {exc.strerror}") from None

    def connect(self) -> sqlite3.Connection:
        """A new connection set up like every other (for a bulk writer of its own)."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self._rows:
            db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        with self.errors():
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def close(self) -> None:
        with self.lock, self._readers_lock:
            for reader in list(self._readers):
                reader.db.close()
            self._readers.clear()
            self._writer.close()

    # ------------------------------------------------------------ errors and schema

    @contextmanager
    def errors(self) -> Iterator[None]:
        """SQLite's "database or disk is full" as CacheFull (ENOSPC for the caller)."""
        with full_disk_is_cache_full(f"{self.schema.title} {self.path}"):
            yield

    def _migrate(self) -> None:
        version = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
        target = self.schema.version
        if version > target:
            raise DatabaseRefused(
                f"{self.schema.title} {self.path} has schema version {version}, written by a "
                f"newer s3fuse (this one knows up to {target}): upgrade s3fuse, or move the "
                "file aside")
        if version == target:
            return
        with self.transaction(durable=True) as db:
            for step in self.schema.steps[version:]:
                if callable(step):
                    step(db)
                else:
                    run_script(db, step)
            db.execute(f"PRAGMA user_version = {target}")
        if version:
            log.info("%s %s migrated from schema version %d to %d", self.schema.title,
                     self.path, version, target)

    # ------------------------------------------------------------ writes

    @contextmanager
    def transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction on the writer connection, under the writer lock; `durable`:
        fsynced at COMMIT (synchronous=FULL: survives power loss, with every commit before)."""
        with self.lock, self.errors():
            db = self._writer
            if durable != self._durable:  # not allowed inside a transaction
                db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            with transaction_on(db):
                yield db

    @contextmanager
    def bulk(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on a connection of its own, closed after (a bulk writer in a
        worker thread that does not hold the writer lock; SQLite serialises it)."""
        db = self.connect()
        try:
            with self.errors(), transaction_on(db):
                yield db
        finally:
            db.close()

    def execute(self, sql: str, *args: Any) -> int:
        """One write statement in its own transaction; returns its rowcount."""
        with self.transaction() as db:
            return db.execute(sql, args).rowcount

    # ------------------------------------------------------------ reads

    def _reader(self) -> sqlite3.Connection:
        try:
            return self._local.reader.db
        except AttributeError:  # this thread's first query
            pass
        reader = self._local.reader = _Reader(self.connect())
        with self._readers_lock:
            self._readers.add(reader)
        return reader.db

    def query(self, sql: str, *args: Any) -> list[Any]:
        """Every row of a query, from this thread's reader (never waits for a writer)."""
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            raise self._translated(exc) from None

    def query_one(self, sql: str, *args: Any) -> Any:
        """The first row or None: the point query of every lookup, kept lean (no context
        manager, no list) because the trio loop runs it for every stat."""
        try:
            return self._reader().execute(sql, args).fetchone()
        except sqlite3.OperationalError as exc:
            raise self._translated(exc) from None

    def _translated(self, exc: sqlite3.OperationalError) -> Exception:
        return CacheFull(f"{self.schema.title} {self.path}: {exc}") if disk_full(exc) else exc

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader inside one read transaction: several queries, one state."""
        db = self._reader()
        with self.errors():
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
