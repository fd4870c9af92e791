"""A directory's listing written to a scratch SQLite table while its pages arrive.

A listing can be stored only once its last page is in (a later page may hide a name: a
prefix of the same name wins), so every key is held until then. Each page's keys go
into a table attached to a connection of their own as the page comes, while the next
page is being fetched (store/s3.py lists a page ahead); storing the listing is then one
`INSERT ... SELECT` into the metadata database on that same connection. Inserting the
whole listing after its last page (`executemany` of the entries made again in Python)
kept `ls` of a cold directory of 100,000 keys waiting ~0.8 s of its ~4 s after S3 had
answered; the `INSERT ... SELECT` takes ~0.15 s.

The table's primary key is the name: rows come back sorted by name (S3 lists in UTF-8
byte order, which is SQLite's and Python's order of the names) and a name listed twice
keeps its last row, whatever order a store lists in.

The table starts in memory. Past SPILL_ROWS it moves to a scratch database file
`listing-<pid>-<n>.staging` in the cache directory (the cache's own disk, known to be
writable; /tmp may be a small tmpfs), with no journal and no fsync, where SQLite keeps a few MiB of its pages in
memory whatever the size of the directory. The file is removed when the listing is
stored or given up, and by the next daemon when this one dies first. When it cannot be
made (a read-only or full cache disk), the rows stay in memory: memory is the price,
never data.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ContextManager

from ..db import transaction_on
from ..errors import full_disk_is_cache_full
from ..model import Entry, new_entry
from ..util.procs import pid_alive

log = logging.getLogger(__name__)

#: Rows held in memory before the table moves to a file (~100 bytes each).
SPILL_ROWS = 20_000
_COLUMNS = ("(name TEXT PRIMARY KEY, is_dir INTEGER NOT NULL, size INTEGER NOT NULL, "
            "mtime_ns INTEGER NOT NULL, etag TEXT NOT NULL) WITHOUT ROWID")
_FILE = re.compile(r"listing-(\d+)-\d+\.staging")
_numbers = itertools.count()


class ListingStage:
    """One listing's rows (name, is_dir, size, mtime_ns, ETag) in a table `table` of a
    connection of its own (closed with this object). Blocking: use it in a worker thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection] | None = None,
                 spill_dir: Path | None = None, spill_rows: int = SPILL_ROWS) -> None:
        """`connect`: a new connection to the database the listing is to be stored in
        (None: one to no database, for a listing that is not stored); `spill_dir`: where
        the table goes past `spill_rows` rows (None: it stays in memory)."""
        self.connection = (connect or _memory)()
        self._spill_dir, self._spill_rows = spill_dir, spill_rows
        self._rows = 0
        self._file: Path | None = None
        self.table = "staging.listed"
        try:
            self.connection.execute("ATTACH DATABASE ':memory:' AS staging")
            self.connection.execute(f"CREATE TABLE {self.table} {_COLUMNS}")
        except BaseException:
            self.connection.close()
            raise

    def add_files(self, rows: list[tuple[str, int, int, str]]) -> None:
        """Files (name, size, mtime_ns, ETag); a name staged before is replaced."""
        with self._full_disk(), transaction_on(self.connection, "BEGIN") as db:
            db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?,0,?,?,?)", rows)
        self._rows += len(rows)
        if self._rows > self._spill_rows and self._file is None and self._spill_dir is not None:
            self._spill(self._spill_dir)

    def add_dirs(self, names: list[str]) -> list[tuple[str, int, int, str]]:
        """Directories, which win over files of the same name: returns the rows (name,
        size, mtime_ns, ETag) of the files they hide (dropped)."""
        with self._full_disk(), transaction_on(self.connection, "BEGIN") as db:
            hidden = db.execute(
                f"SELECT name, size, mtime_ns, etag FROM {self.table} WHERE is_dir=0 AND name IN "
                "(SELECT value FROM json_each(?)) ORDER BY name", (json.dumps(names),)).fetchall()
            db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?,1,0,0,'')",
                           ((name,) for name in names))
        return hidden

    def entries(self, checked_at: float) -> Iterator[Entry]:
        """Every staged row as an entry (of unknown POSIX metadata), in name order."""
        for name, is_dir, size, mtime_ns, etag in self.connection.execute(
                f"SELECT name, is_dir, size, mtime_ns, etag FROM {self.table} ORDER BY name"):
            yield new_entry(name, bool(is_dir), size, mtime_ns, etag, checked_at, None)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        self.connection.close()
        self._remove_file()

    def _full_disk(self) -> ContextManager[None]:
        """A full disk under the scratch file: the listing cannot be stored either."""
        return full_disk_is_cache_full(f"scratch listing {self._file}")

    def _spill(self, directory: Path) -> None:
        """Move the table from memory to a new file in `directory`."""
        location = directory / f"listing-{os.getpid()}-{next(_numbers)}.staging"
        db = self.connection
        try:
            db.execute("ATTACH DATABASE ? AS spill", (str(location),))
            self._file = location
            db.execute("PRAGMA spill.journal_mode=OFF")
            db.execute("PRAGMA spill.synchronous=OFF")
            db.execute(f"CREATE TABLE spill.listed {_COLUMNS}")
            with transaction_on(db, "BEGIN"):
                db.execute("INSERT INTO spill.listed SELECT * FROM staging.listed")
        except (OSError, sqlite3.Error) as exc:
            log.info("a listing of %d+ keys is kept in memory: no scratch file in %s (%s)",
                     self._rows, directory, exc)
            self._spill_dir = None  # not tried again for this listing
            if self._file is not None:
                db.execute("DETACH DATABASE spill")
                self._remove_file()
            return
        db.execute("DETACH DATABASE staging")
        self.table = "spill.listed"

    def _remove_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the scratch listing %s: %s", self._file, exc)
        self._file = None


def _memory() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None)


def remove_leftovers(directory: Path) -> None:
    """Remove the scratch listings of daemons no longer running (one killed while it
    listed); never those of a live process (another command on the same cache)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = _FILE.fullmatch(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            os.unlink(directory / name)
        except OSError as exc:
            log.debug("scratch listing %s not removed: %s", name, exc)
