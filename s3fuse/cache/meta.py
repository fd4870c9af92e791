"""Persistent listings and stats in `<cache>/meta.sqlite`.

Listings survive restarts so a mount can serve them offline; lookups are indexed
queries instead of an in-memory dict per directory, so a huge bucket does not
become millions of Python objects.

The trio loop never waits for a bulk write. Reads use a reader connection of their
own thread (WAL: they see the last commit while a listing is being stored). Point
writes (an entry learned from an upload or a HEAD, a pin, a directory marked known or
expired) never wait either: written at once when no one is writing, else queued,
shown to readers from memory at once, and written by the writer in progress before it
lets go of the writer lock (`writing`). Who must not go on before a point write is on
disk (the upload queue, before its journal forgets an upload whose listing update it
is) waits in `flush`, in a worker thread. Bulk writes (`replace_listing`,
`replace_staged`) block: run them in a worker thread.
"""
from __future__ import annotations

import json
import logging
from bisect import bisect_left
from itertools import islice
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..db import Database, Schema, transaction_on
from ..errors import CacheFull, disk_full
from ..model import Entry, new_entry
from ..names import split
from ..posix import NO_HEADERS, from_json, stored_mtime, to_json
from .listingpages import ListingPages
from .liststage import ListingStage, remove_leftovers

log = logging.getLogger(__name__)

_VERSION_1 = """
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

#: Version 2: each entry's POSIX metadata (posix.to_json; NULL: not looked up yet) and
#: the version it was read from (`posix_of`, see `version`; NULL: learned from an upload,
#: whose LastModified S3 does not return). Entries of version 1 start unknown.
_VERSION_2 = """
ALTER TABLE entries ADD COLUMN posix TEXT;
ALTER TABLE entries ADD COLUMN posix_of TEXT;
"""

#: Version 1 is the layout of the unversioned stores (version 0), which it leaves as is.
SCHEMA = Schema("cache metadata", (_VERSION_1, _VERSION_2),
                unreadable_hint="it only caches listings and pins; move it aside to start afresh")

_COLUMNS = "name, is_dir, size, mtime_ns, etag, checked_at, posix"
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)"
#: Stored entries a search for unknown metadata looks through at most (a bounded range
#: read on the loop, however many known entries follow).
UNKNOWN_SCAN = 256
#: Entries just stored from HEAD answers that `entry` answers from memory (RECENT_MAX at
#: most, ~0.5 KiB each; emptied when full).
RECENT_MAX = 4096
#: A relisting keeps the stored POSIX metadata of unchanged entries: up to this many
#: stored rows are read into a dict at once; more (a big directory whose entries were
#: HEADed: `ls -l` of 1,000,000 keys) are copied to a temporary table and looked up this
#: many new entries at a time, so that the relisting's memory does not hold them all.
MERGE_CHUNK = 4096
#: The stored rows of a directory whose POSIX metadata is known (what a relisting keeps).
_KNOWN = "SELECT name, etag, posix, posix_of FROM entries WHERE ns=? AND dir=? AND posix IS NOT NULL"
Write = Callable[[sqlite3.Connection], None]


def _name(entry: Entry) -> str:
    return entry.name


#: Up to this many changes are placed by bisection (a huge listing is not rebuilt for a
#: few local changes); more are applied by rebuilding it once.
BISECT_CHANGES = 64


def apply_changes(entries: list[Entry], changes: dict[str, Entry | None]) -> list[Entry]:
    """A listing sorted by name with later changes applied (an entry replaces, None
    removes), still sorted by name."""
    if not changes:
        return entries
    if len(changes) <= BISECT_CHANGES:
        merged = list(entries)
        for name, entry in changes.items():
            at = bisect_left(merged, name, key=_name)
            present = at < len(merged) and merged[at].name == name
            if entry is None:
                if present:
                    del merged[at]
            elif present:
                merged[at] = entry
            else:
                merged.insert(at, entry)
        return merged
    return list(merge_changes(entries, changes))


def merge_changes(entries: Iterable[Entry], changes: dict[str, Entry | None]) -> Iterator[Entry]:
    """apply_changes for a stream sorted by name (a relisting too big to hold at once):
    the entries with the changes merged in as they pass, still sorted by name."""
    pending = sorted(changes.items())
    at = 0
    for entry in entries:
        while at < len(pending) and pending[at][0] < entry.name:
            if (change := pending[at][1]) is not None:
                yield change
            at += 1
        if at < len(pending) and pending[at][0] == entry.name:
            if (change := pending[at][1]) is not None:
                yield change
            at += 1
        else:
            yield entry
    for _, change in pending[at:]:
        if change is not None:
            yield change


def within(changes: dict[str, Entry | None], after: str,
           frontier: str | None) -> dict[str, Entry | None]:
    """The changes of names in the window (after, frontier] of a listing read one page at
    a time (`frontier` None: to the end)."""
    return {name: entry for name, entry in changes.items()
            if name > after and (frontier is None or name <= frontier)}


class _Queued:
    """Point writes waiting for the writer lock, and what readers see of them meanwhile."""

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.seq = 0   # writes queued so far
        self.done = 0  # ... of which committed (or given up: a full disk)
        self.entries: dict[tuple[str, str], dict[str, tuple[int, Entry | None]]] = {}
        self.dirs: dict[tuple[str, str], tuple[int, bool, bool]] = {}  # seq, known, expired
        self.pins: list[tuple[int, str, str | None]] = []              # None: removed (and below)

    def forget(self, upto: int) -> None:
        """The writes up to `upto` are committed (or dropped): readers go to the database."""
        self.done = max(self.done, upto)
        for key, names in list(self.entries.items()):
            for name, (seq, _) in list(names.items()):
                if seq <= upto:
                    del names[name]
            if not names:
                del self.entries[key]
        self.dirs = {k: v for k, v in self.dirs.items() if v[0] > upto}
        self.pins = [p for p in self.pins if p[0] > upto]


class MetaStore:
    """Listings keyed by (namespace id, directory path)."""

    def __init__(self, path: Path):
        self._db = Database(path, SCHEMA)
        self._queue_lock = threading.Lock()  # held for dict updates only, never during I/O
        self._flushed = threading.Condition(self._queue_lock)  # notified as queued writes land
        self._queued = _Queued()
        # Entries store_if_unknown wrote, as `entry` would read them back: a cold `ls -l`
        # looks each one up right after its HEAD answer is stored, and the query is the
        # biggest part of such a lookup. Exact because every write of an entry goes
        # through this class and drops what it may change, holding the writer lock (so
        # store_if_unknown cannot put back an older row), before it commits; readers see
        # a queued write before this (entry). Plain dict operations: atomic under the GIL.
        self._recent: dict[tuple[str, str, str], Entry] = {}
        self._known_dirs: set[tuple[str, str]] = set()  # know_dir's: (ns, path) in `dirs`
        # Listing pages as entries_after reads them; the directories whose entries the
        # writes under the writer lock changed, their pages dropped once those commit.
        self._pages = ListingPages()
        self._touched: set[tuple[str, str]] = set()
        # ... and the entries they stored in directories not otherwise touched: put into
        # the pages instead (ListingPages.patch).
        self._stored: dict[tuple[str, str], dict[str, Entry]] = {}
        remove_leftovers(self.directory)

    @property
    def directory(self) -> Path:
        """Where the store lives: the cache directory, for big transient files (spills)."""
        return self._db.path.parent

    def close(self) -> None:
        with self.writing():
            pass  # writes the queued ones
        self._db.close()

    # ---------------------------------------------------------- the writer lock

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lock (blocking: a worker thread); point writes queued meanwhile
        are written after the caller's, before the lock is let go."""
        self._db.lock.acquire()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Write the queued point writes, then let go of the writer lock."""
        released = False
        try:
            while True:
                with self._queue_lock:
                    writes, self._queued.writes = self._queued.writes, []
                    upto = self._queued.seq
                    if not writes:  # under _queue_lock: a write queued from now finds it free
                        self._untouch()
                        self._db.lock.release()
                        released = True
                        return
                try:
                    with self._db.transaction() as db:
                        for write in writes:
                            write(db)
                except (CacheFull, sqlite3.Error) as exc:  # a cache: the next listing brings them
                    log.warning("%d change(s) not recorded in the stored listings: %s",
                                len(writes), exc)
                    self._rolled_back()
                finally:
                    with self._flushed:
                        self._queued.forget(upto)
                        self._flushed.notify_all()
        finally:
            if not released:
                self._untouch()
                self._db.lock.release()

    def _touch(self, ns: str, path: str) -> None:
        """A write holding the writer lock changes entries of directory `path`."""
        self._touched.add((ns, path))

    def _store_entry(self, ns: str, path: str, entry: Entry) -> None:
        """A write holding the writer lock stores `entry` (as `_entry` reads its row back)
        in directory `path`."""
        self._stored.setdefault((ns, path), {})[entry.name] = entry

    def _rolled_back(self) -> None:
        """The writes did not commit: the pages of what they stored go instead of getting
        entries the database does not hold."""
        self._touched.update(self._stored)
        self._stored = {}

    def _untouch(self) -> None:
        """The writes are committed: drop the pages of the directories they changed, and
        put the entries they stored into the pages of the others."""
        if self._touched:
            self._pages.invalidate(self._touched)
        stored = {d: e for d, e in self._stored.items() if d not in self._touched}
        if stored:
            self._pages.patch(stored)
        self._touched, self._stored = set(), {}

    def queued(self) -> bool:
        """Are point writes waiting to be committed? (Never blocks: a check on the loop
        before asking a thread to `flush`.)"""
        return self._queued.done < self._queued.seq

    def flush(self) -> None:
        """Return once every point write made before the call is committed (or given up on
        a full disk, logged). Blocking (a worker thread): a queued write lands when the
        bulk write holding the writer lock ends."""
        with self._flushed:
            target = self._queued.seq
            self._flushed.wait_for(lambda: self._queued.done >= target)

    def _write(self, write: Write, show: Callable[[_Queued, int], None]) -> None:
        """A point write: now when no one holds the writer lock, else queued for the writer
        in progress (`show` records what readers see until it is written). Never waits."""
        with self._queue_lock:
            if self._queued.writes or not self._db.lock.acquire(blocking=False):
                self._queued.seq += 1
                self._queued.writes.append(write)
                show(self._queued, self._queued.seq)
                return
        try:
            with self._db.transaction() as db:
                write(db)
        except BaseException:
            self._rolled_back()
            raise
        finally:
            self._release()

    # ---------------------------------------------------------- listings

    def listed_at(self, ns: str, path: str) -> float | None:
        with self._queue_lock:
            queued = self._queued.dirs.get((ns, path))
        row = self._db.query_one("SELECT listed_at FROM dirs WHERE ns=? AND path=?", ns, path)
        listed_at = row[0] if row else None
        if queued is not None:
            _, known, expired = queued
            if (expired and listed_at is not None) or (known and listed_at is None):
                return 0.0
        return listed_at

    def replace_listing(self, ns: str, path: str, entries: Iterable[Entry],
                        now: float | None = None, marker: str | None = None) -> None:
        """Atomically make `entries` the listing of `path` (blocking: use a thread).

        Entries as ListObjectsV2 gives them (posix None, mtime_ns = LastModified) keep the
        stored POSIX metadata of their name when it was read from the same version (ETag
        and LastModified: a metadata copy keeps a single-part ETag but not LastModified),
        and then show its mtime; directories (a listing has no version of them) keep theirs.
        `marker`: the version of this directory's own marker (`version`; '' when it has
        none), recorded on the parent's entry of it (`_marker`)."""
        now = time.time() if now is None else now
        with self.writing(), self._db.transaction() as db:
            self._recent.clear()  # its entries and the parent's entry of it (_marker)
            self._touch_listing(ns, path)
            known = db.execute(_KNOWN + " LIMIT ?", (ns, path, MERGE_CHUNK + 1)).fetchall()
            if len(known) > MERGE_CHUNK and _copy_known(db, ns, path):
                del known
                _merge_in_chunks(db, ns, path, entries, now)
            else:
                if len(known) > MERGE_CHUNK:  # no temporary table: every row in memory
                    known = db.execute(_KNOWN, (ns, path)).fetchall()
                by_name = {row[0]: row[1:] for row in known}
                rows = (_listed_row(ns, path, e, by_name.get(e.name), now) for e in entries)
                db.execute("DELETE FROM entries WHERE ns=? AND dir=?", (ns, path))
                db.executemany(_INSERT, rows)  # streamed
            db.execute("INSERT OR REPLACE INTO dirs VALUES (?,?,?)", (ns, path, now))
            if marker is not None and path:
                _marker(db, ns, path, marker)

    def stage(self) -> ListingStage:
        """A new listing to fill page by page, then store with `replace_staged`."""
        with self._db.errors():
            return ListingStage(self._db.connect, self.directory)

    def replace_staged(self, ns: str, path: str, stage: ListingStage, checked_at: float,
                       changes: dict[str, Entry | None], now: float | None = None,
                       marker: str | None = None) -> None:
        """replace_listing of the entries in `stage` (checked at `checked_at`) with
        `changes` applied. When there is nothing to merge (no change, no stored metadata
        to keep: a first listing), one INSERT ... SELECT from the stage on its own
        connection, under the writer lock (cache/liststage.py)."""
        now = time.time() if now is None else now
        with self.writing():
            if not changes:
                with self._db.errors(), transaction_on(stage.connection) as db:
                    merged = self._insert_staged(db, ns, path, stage.table, checked_at, now, marker)
                if merged:
                    return
            self.replace_listing(ns, path, merge_changes(stage.entries(checked_at), changes),
                                 now, marker)

    def _insert_staged(self, db: sqlite3.Connection, ns: str, path: str, table: str,
                       checked_at: float, now: float, marker: str | None) -> bool:
        """The INSERT ... SELECT of replace_staged; False (nothing written) when stored
        POSIX metadata must be kept (replace_listing merges it)."""
        if db.execute("SELECT 1 FROM main.entries WHERE ns=? AND dir=? AND posix IS NOT NULL "
                      "LIMIT 1", (ns, path)).fetchone():
            return False
        self._recent.clear()  # its entries and the parent's entry of it (_marker)
        self._touch_listing(ns, path)
        db.execute("DELETE FROM main.entries WHERE ns=? AND dir=?", (ns, path))
        db.execute(f"INSERT INTO main.entries SELECT ?, ?, name, is_dir, size, mtime_ns, etag, "
                   f"?, NULL, NULL FROM {table}", (ns, path, checked_at))
        db.execute("INSERT OR REPLACE INTO main.dirs VALUES (?,?,?)", (ns, path, now))
        if marker is not None and path:
            _marker(db, ns, path, marker)
        return True

    def _touch_listing(self, ns: str, path: str) -> None:
        """A new listing of `path` is stored: its entries and its parent's entry of it."""
        self._touch(ns, path)
        if path:
            self._touch(ns, split(path)[0])

    def _queued_entries(self, ns: str, path: str) -> dict[str, Entry | None]:
        if not self._queued.entries:  # nothing queued (almost always): no lock, no copy
            return {}
        with self._queue_lock:
            return {name: entry for name, (_, entry)
                    in self._queued.entries.get((ns, path), {}).items()}

    def entry(self, ns: str, path: str, name: str) -> Entry | None:
        if self._queued.entries:  # one name looked up, not a copy of all that is queued
            with self._queue_lock:
                queued = self._queued.entries.get((ns, path), {}).get(name)
            if queued is not None:
                return queued[1]
        recent = self._recent.get((ns, path, name))
        if recent is not None:
            return recent
        row = self._db.query_one(f"SELECT {_COLUMNS} FROM entries WHERE ns=? AND dir=? AND name=?",
                                 ns, path, name)
        return _entry(row) if row else None

    def marker(self, ns: str, path: str) -> str | None:
        """The version (`version`) of directory `path`'s marker as last listed or HEADed
        ('': it had none); None when unknown (made here since, or a change of it queued)."""
        parent, _, name = path.rpartition("/")
        if name in self._queued_entries(ns, parent):
            return None
        row = self._db.query_one("SELECT posix_of FROM entries WHERE ns=? AND dir=? AND name=? "
                                 "AND is_dir=1", ns, parent, name)
        return row[0] if row else None

    def entries(self, ns: str, path: str, at_most: int | None = None) -> list[Entry] | None:
        """The whole listing of `path` (a bulk read for a big directory: use a thread); with
        `at_most`, None when it has more stored entries than that (a small read, which the
        trio loop may do itself)."""
        queued = self._queued_entries(ns, path)
        sql = f"SELECT {_COLUMNS} FROM entries WHERE ns=? AND dir=? ORDER BY name"
        if at_most is None:
            rows = self._db.query(sql, ns, path)
        else:
            rows = self._db.query(sql + " LIMIT ?", ns, path, at_most + 1)
            if len(rows) > at_most:
                return None
        return apply_changes([_entry(r) for r in rows], queued)

    def entries_after(self, ns: str, path: str, after: str,
                      limit: int) -> tuple[list[Entry], str | None]:
        """One page of the listing of `path`: at most `limit` stored entries named after
        `after`, in name order, queued writes applied; and the frontier, the last name the
        page is complete up to (None: the listing ends there). A page may hold fewer
        entries (none, when queued removals took them): the next one starts at the
        frontier. An indexed range read of `limit` rows."""
        queued = self._queued_entries(ns, path)
        key = (ns, path, after, limit)
        page = self._pages.get(key)
        if page is None:
            generation = self._pages.generation
            rows = self._db.query(f"SELECT {_COLUMNS} FROM entries WHERE ns=? AND dir=? "
                                  "AND name>? ORDER BY name LIMIT ?", ns, path, after, limit)
            page = tuple(_entry(r) for r in rows), rows[-1][0] if len(rows) == limit else None
            self._pages.put(key, page, generation)
        stored, frontier = page
        return apply_changes(list(stored), within(queued, after, frontier)), frontier

    def name_after(self, ns: str, path: str, after: str, skip: int) -> str | None:
        """The name of the stored entry `skip` places after `after` (1: the next one), or
        None past the end (a seekdir back to a place no longer remembered)."""
        row = self._db.query_one("SELECT name FROM entries WHERE ns=? AND dir=? AND name>? "
                                 "ORDER BY name LIMIT 1 OFFSET ?", ns, path, after, skip - 1)
        return row[0] if row else None

    def files_after(self, ns: str, path: str, after: str, limit: int) -> list[Entry]:
        """The next `limit` stored files of a directory in name order, after `after` (a
        prefetch hint: queued writes are not shown)."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM entries WHERE ns=? AND dir=? AND name>? AND is_dir=0 "
            "ORDER BY name LIMIT ?", ns, path, after, limit)
        return [_entry(r) for r in rows]

    def unknown_after(self, ns: str, path: str, name: str, limit: int) -> list[Entry]:
        """Up to `limit` stored entries from `name` on (itself included), in name order,
        whose POSIX metadata is not known: the next batch to look up. Looks through at
        most UNKNOWN_SCAN entries (a bounded indexed range read)."""
        queued = self._queued_entries(ns, path)
        rows = self._db.query(f"SELECT {_COLUMNS} FROM entries WHERE ns=? AND dir=? AND name>=? "
                              "ORDER BY name LIMIT ?", ns, path, name, UNKNOWN_SCAN)
        frontier = rows[-1][0] if len(rows) == UNKNOWN_SCAN else None
        entries = apply_changes([_entry(r) for r in rows],
                                {n: e for n, e in queued.items()
                                 if n >= name and (frontier is None or n <= frontier)})
        return [e for e in entries if e.posix is None][:limit]

    def update_entry(self, ns: str, path: str, entry: Entry, version: str | None = None) -> None:
        """Store `entry`; `version`: what its posix was read from (`version`), None when
        unknown (an upload's: a relist then keeps it while the ETag is the same)."""
        def show(queued: _Queued, seq: int) -> None:
            queued.entries.setdefault((ns, path), {})[entry.name] = (seq, entry)

        def write(db: sqlite3.Connection) -> None:
            self._recent.pop((ns, path, entry.name), None)
            row = _row(ns, path, entry, version)
            db.execute(_INSERT, row)
            self._store_entry(ns, path, _entry(row[2:9]))
        self._write(write, show)

    def store_if_unknown(self, ns: str, path: str, headed: list[Entry],
                         answers: list[tuple[Entry, str] | None]) -> tuple[list[Entry], list[Entry]]:
        """Store HEAD answers (answers[i]: headed[i]'s entry and version, None: S3 has it
        no more) for the entries still stored as they were HEADed (same kind and ETag,
        metadata unknown: no upload or relist came meanwhile). The check and the write
        are one transaction under the writer lock (blocking: the HEAD batch's worker
        thread, so that a cold `ls -l` stores its thousand answers off the loop).
        Returns (the entries stored, the headed entries S3 has no more)."""
        with self.writing():
            with self._db.transaction() as db:
                stored, gone = self._unknown_answers(db, ns, path, headed, answers)
                rows = [_row(ns, path, e, v) for e, v in stored]
                db.executemany(_INSERT, rows)
            if len(self._recent) + len(rows) > RECENT_MAX:
                self._recent.clear()
            for row in rows:  # committed: as `entry` reads them back
                entry = self._recent[(ns, path, row[2])] = _entry(row[2:9])
                self._store_entry(ns, path, entry)
        return [e for e, _ in stored], gone

    @staticmethod
    def _unknown_answers(db: sqlite3.Connection, ns: str, path: str, headed: list[Entry],
                         answers: list[tuple[Entry, str] | None]
                         ) -> tuple[list[tuple[Entry, str]], list[Entry]]:
        """store_if_unknown's check: (the answers to store, the headed entries gone)."""
        now: dict[str, tuple] = {}
        for start in range(0, len(headed), 256):  # SQLite's bound on parameters
            part = [e.name for e in headed[start:start + 256]]
            now.update((row[0], row[1:]) for row in db.execute(
                "SELECT name, is_dir, etag, posix FROM entries WHERE ns=? AND dir=? AND name "
                f"IN ({','.join('?' * len(part))})", (ns, path, *part)))
        stored: list[tuple[Entry, str]] = []
        gone: list[Entry] = []
        for entry, answer in zip(headed, answers):
            row = now.get(entry.name)
            if row is None or bool(row[0]) != entry.is_dir or row[1] != entry.etag \
                    or row[2] is not None:
                continue  # changed meanwhile: what came later stays
            if answer is None:
                gone.append(entry)
            else:
                stored.append(answer)
        return stored, gone

    def remove_entry(self, ns: str, path: str, name: str) -> None:
        def show(queued: _Queued, seq: int) -> None:
            queued.entries.setdefault((ns, path), {})[name] = (seq, None)

        def write(db: sqlite3.Connection) -> None:
            self._recent.pop((ns, path, name), None)
            self._touch(ns, path)
            db.execute("DELETE FROM entries WHERE ns=? AND dir=? AND name=?", (ns, path, name))
        self._write(write, show)

    def _show_dir(self, ns: str, path: str, *, known: bool = False,
                  expired: bool = False) -> Callable[[_Queued, int], None]:
        def show(queued: _Queued, seq: int) -> None:
            _, was_known, was_expired = queued.dirs.get((ns, path), (0, False, False))
            queued.dirs[(ns, path)] = (seq, known or was_known, expired or was_expired)
        return show

    def expire_listing(self, ns: str, path: str) -> None:
        """List `path` again at its next use (it changed in S3 behind our back)."""
        self._write(lambda db: db.execute("UPDATE dirs SET listed_at = 0 WHERE ns=? AND path=?",
                                          (ns, path)), self._show_dir(ns, path, expired=True))

    def know_dir(self, ns: str, path: str) -> None:
        """Record that `path` exists without a listing of it (listed_at 0: list it when online).

        A directory made through the mount was never listed from S3; once its entries are
        uploaded, this lets an offline mount serve what we know it holds. Every upload
        asks this of its parent: a directory already known costs nothing (no row of `dirs`
        is ever deleted, so what is known stays known), a new one a read and a commit.
        """
        if (ns, path) in self._known_dirs:
            return
        if len(self._known_dirs) >= RECENT_MAX:
            self._known_dirs.clear()
        self._known_dirs.add((ns, path))
        if self.listed_at(ns, path) is not None:
            return
        self._write(lambda db: db.execute("INSERT OR IGNORE INTO dirs VALUES (?,?,0)", (ns, path)),
                    self._show_dir(ns, path, known=True))

    # ---------------------------------------------------------- pins and counters

    def pins(self) -> list[tuple[str, str]]:
        """(mount-relative path, state) of every pin."""
        with self._queue_lock:
            queued = list(self._queued.pins)
        pins = dict(self._db.query("SELECT path, state FROM pins"))
        for _, path, state in queued:
            if state is None:
                pins = {p: s for p, s in pins.items() if not _at_or_below(p, path)}
            else:
                pins[path] = state
        return sorted(pins.items())

    def set_pin(self, path: str, state: str) -> None:
        def show(queued: _Queued, seq: int) -> None:
            queued.pins.append((seq, path, state))

        now = time.time()
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO pins VALUES (?,?,?)",
                                          (path, state, now)), show)

    def remove_pin(self, path: str) -> None:
        """Forget `path` and every pin below it."""
        def show(queued: _Queued, seq: int) -> None:
            queued.pins.append((seq, path, None))

        self._write(lambda db: db.execute("DELETE FROM pins WHERE path=? OR substr(path, 1, ?)=?",
                                          (path, len(path) + 1, path + "/")), show)

    def add_counters(self, **deltas: int) -> None:
        """Add to the hit counters (blocking)."""
        with self.writing(), self._db.transaction() as db:
            db.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                           "SET value=value+excluded.value", list(deltas.items()))

    def counters(self) -> dict[str, int]:
        return dict(self._db.query("SELECT name, value FROM counters"))


def _at_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def version(etag: str, last_modified_ns: int) -> str:
    """The version of an object stored POSIX metadata belongs to: ETag and LastModified
    (a metadata copy keeps a single-part object's ETag, not its LastModified)."""
    return f"{etag} {last_modified_ns}"


def etag_of(version: str) -> str:
    """The ETag part of a `version`."""
    return version.rpartition(" ")[0]


def _row(ns: str, path: str, entry: Entry, posix_of: str | None) -> tuple:
    return (ns, path, entry.name, int(entry.is_dir), entry.size, entry.mtime_ns, entry.etag,
            entry.checked_at, to_json(entry.posix), posix_of if entry.posix is not None else None)


def _listed_row(ns: str, path: str, entry: Entry, known: tuple | None, now: float) -> tuple:
    """The row of an entry of a new listing, given what was stored for its name (etag,
    posix, posix_of of a row with known metadata)."""
    if entry.posix is not None or known is None:  # a change learned meanwhile, or nothing
        return _row(ns, path, entry, None)
    etag, posix_json, posix_of = known
    if entry.is_dir:  # the listing has no version of a directory: its marker's listing does
        posix = from_json(posix_json, is_dir=True)
        return _row(ns, path,
                    replace(entry, posix=posix, mtime_ns=stored_mtime(posix, entry.mtime_ns)),
                    posix_of)
    listed = version(entry.etag, entry.mtime_ns)
    if posix_of != listed and not (posix_of is None and etag == entry.etag):
        return _row(ns, path, entry, None)  # another version: look it up again
    posix = from_json(posix_json)
    return _row(ns, path,
                replace(entry, posix=posix, mtime_ns=stored_mtime(posix, entry.mtime_ns)), listed)


def _copy_known(db: sqlite3.Connection, ns: str, path: str) -> bool:
    """Copy the stored rows of known metadata of `path` to a temporary table (a file in
    SQLite's temporary directory: /var/tmp, /tmp or $SQLITE_TMPDIR). False when SQLite
    cannot make one there (read-only, missing): the caller merges in memory instead."""
    try:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS listing_known "
                   "(name TEXT PRIMARY KEY, etag TEXT, posix TEXT, posix_of TEXT) WITHOUT ROWID")
        db.execute("DELETE FROM temp.listing_known")
        db.execute("INSERT INTO temp.listing_known " + _KNOWN, (ns, path))
    except sqlite3.OperationalError as exc:
        if disk_full(exc):
            raise
        log.info("no temporary table for the listing of %r (%s): merging it in memory",
                 path, exc)
        return False
    return True


def _merge_in_chunks(db: sqlite3.Connection, ns: str, path: str, entries: Iterable[Entry],
                     now: float) -> None:
    """replace_listing for a directory with many stored rows of known metadata, copied to
    the temporary table (_copy_known): MERGE_CHUNK new entries at a time looked up there
    and written, so memory holds one chunk of them, not the whole directory."""
    db.execute("DELETE FROM entries WHERE ns=? AND dir=?", (ns, path))
    pending = iter(entries)
    while chunk := list(islice(pending, MERGE_CHUNK)):
        known = {row[0]: row[1:] for row in db.execute(
            "SELECT name, etag, posix, posix_of FROM temp.listing_known "
            "WHERE name IN (SELECT value FROM json_each(?))", (json.dumps([e.name for e in chunk]),))}
        db.executemany(_INSERT, [_listed_row(ns, path, e, known.get(e.name), now) for e in chunk])
    db.execute("DELETE FROM temp.listing_known")


def _marker(db: sqlite3.Connection, ns: str, path: str, marker: str) -> None:
    """Record on the parent's entry of directory `path` the version of its marker ('':
    none, so no metadata: NO_HEADERS without a HEAD); another version than the one its
    metadata was read from makes that metadata unknown again."""
    parent, _, name = path.rpartition("/")
    row = db.execute("SELECT posix, posix_of FROM entries WHERE ns=? AND dir=? AND name=? "
                     "AND is_dir=1", (ns, parent, name)).fetchone()
    if row is None or row[1] == marker:
        return
    if row[1] is None and row[0] is not None and marker:  # made here: its marker is ours
        posix = row[0]
    else:
        posix = to_json(NO_HEADERS) if not marker else None
    db.execute("UPDATE entries SET posix=?, posix_of=? WHERE ns=? AND dir=? AND name=?",
               (posix, marker, ns, parent, name))


def _entry(row: tuple) -> Entry:
    is_dir = bool(row[1])
    return new_entry(row[0], is_dir, row[2], row[3], row[4], row[5],
                     from_json(row[6], is_dir=is_dir))
