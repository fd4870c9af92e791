"""Persistent listings and stats in `<cache>/meta.sqlite`.

Listings survive restarts so a mount can serve them offline; lookups are indexed
queries instead of an in-memory dict per directory, so a huge bucket does not
become millions of Python objects. One connection, guarded by a lock, used from
the trio thread for point queries and from worker threads for bulk writes.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from ..errors import CacheFull
from ..model import Entry

SCHEMA = """
CREATE TABLE IF NOT EXISTS dirs (
    ns TEXT NOT NULL, path TEXT NOT NULL, listed_at REAL NOT NULL,
    PRIMARY KEY (ns, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (
    path TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL, dir TEXT NOT NULL, name TEXT NOT NULL,
    is_dir INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    etag TEXT NOT NULL, checked_at REAL NOT NULL,
    PRIMARY KEY (ns, dir, name)) WITHOUT ROWID;
"""



class _GuardedLock:
    """The store's lock, turning SQLite's 'disk is full' into CacheFull (ENOSPC)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise CacheFull(f"cache metadata: {exc}") from None


class MetaStore:
    """Listings keyed by (namespace id, directory path)."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = _GuardedLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def listed_at(self, ns: str, path: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT listed_at FROM dirs WHERE ns=? AND path=?",
                                   (ns, path)).fetchone()
        return row[0] if row else None

    def replace_listing(self, ns: str, path: str, entries: Iterable[Entry],
                        now: float | None = None) -> None:
        """Atomically make `entries` the listing of `path` (blocking: use a thread)."""
        now = time.time() if now is None else now
        rows = [(ns, path, e.name, int(e.is_dir), e.size, e.mtime_ns, e.etag, now) for e in entries]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM entries WHERE ns=? AND dir=?", (ns, path))
                self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
                self._db.execute("INSERT OR REPLACE INTO dirs VALUES (?,?,?)", (ns, path, now))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL may have rolled it back already, and
                    self._db.execute("ROLLBACK")  # "cannot rollback" would hide the real error
                raise

    def entry(self, ns: str, path: str, name: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, is_dir, size, mtime_ns, etag, checked_at FROM entries "
                "WHERE ns=? AND dir=? AND name=?", (ns, path, name)).fetchone()
        return _entry(row) if row else None

    def entries(self, ns: str, path: str) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, is_dir, size, mtime_ns, etag, checked_at FROM entries "
                "WHERE ns=? AND dir=? ORDER BY name", (ns, path)).fetchall()
        return [_entry(r) for r in rows]

    def files_after(self, ns: str, path: str, after: str, limit: int) -> list[Entry]:
        """The next `limit` files of a directory in name order, after `after`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, is_dir, size, mtime_ns, etag, checked_at FROM entries "
                "WHERE ns=? AND dir=? AND name>? AND is_dir=0 ORDER BY name LIMIT ?",
                (ns, path, after, limit)).fetchall()
        return [_entry(r) for r in rows]

    def update_entry(self, ns: str, path: str, entry: Entry) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?)",
                             (ns, path, entry.name, int(entry.is_dir), entry.size, entry.mtime_ns,
                              entry.etag, entry.checked_at))

    # ---------------------------------------------------------- pins and counters

    def pins(self) -> list[tuple[str, str]]:
        """(mount-relative path, state) of every pin."""
        with self._lock:
            return self._db.execute("SELECT path, state FROM pins ORDER BY path").fetchall()

    def set_pin(self, path: str, state: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pins VALUES (?,?,?)", (path, state, time.time()))

    def remove_pin(self, path: str) -> None:
        """Forget `path` and every pin below it."""
        with self._lock:
            self._db.execute("DELETE FROM pins WHERE path=? OR substr(path, 1, ?)=?",
                             (path, len(path) + 1, path + "/"))

    def add_counters(self, **deltas: int) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                list(deltas.items()))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def expire_listing(self, ns: str, path: str) -> None:
        """List `path` again at its next use (it changed in S3 behind our back)."""
        with self._lock:
            self._db.execute("UPDATE dirs SET listed_at = 0 WHERE ns=? AND path=?", (ns, path))

    def know_dir(self, ns: str, path: str) -> None:
        """Record that `path` exists without a listing of it (listed_at 0: list it when online).

        A directory made through the mount was never listed from S3; once its entries are
        uploaded, this lets an offline mount serve what we know it holds.
        """
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO dirs VALUES (?,?,0)", (ns, path))

    def remove_entry(self, ns: str, path: str, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM entries WHERE ns=? AND dir=? AND name=?", (ns, path, name))


def _entry(row: tuple) -> Entry:
    return Entry(row[0], bool(row[1]), row[2], row[3], row[4], row[5])
