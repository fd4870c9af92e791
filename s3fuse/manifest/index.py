"""A manifest's SQLite index: every entry and shard member as a row, rowid = inode ref.

Built once per root-manifest ETag in a worker thread and reused across remounts
and offline. Re-ingestion (after `append_parts` changed the root) upserts by
(parent, name), so unchanged paths keep their rowids and thus their inodes.
Readers use their own connection (WAL): they see the old index until the new
one commits. Opened through s3fuse/db.py (versioned schema, disk full as ENOSPC).

The few point writes the trio thread makes (a file's size from a HEAD, a shard that
could not be indexed) never wait: an ingestion holds SQLite's write lock for as long
as it runs, so they are handed to the index's own writer thread and lost on error
(what they record is learned again at the next use).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import sqlite3
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from ..db import Database, Schema
from ..errors import CacheFull
from ..util.oncelog import example

log = logging.getLogger(__name__)
ROOT_ID = 1
DIR, FILE, SHARD, MEMBER = 0, 1, 2, 3

_VERSION_1 = f"""
CREATE TABLE IF NOT EXISTS info (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER,
    key TEXT,
    etag TEXT,
    entry_id TEXT,
    meta TEXT,
    shard INTEGER,
    offset INTEGER,
    gen INTEGER NOT NULL,
    UNIQUE (parent, name));
CREATE TABLE IF NOT EXISTS shards (
    node INTEGER PRIMARY KEY,
    archive_key TEXT NOT NULL,
    format TEXT, compression TEXT, internal TEXT, count INTEGER,
    state TEXT NOT NULL DEFAULT 'pending', etag TEXT, actual TEXT, asize INTEGER, usize INTEGER,
    checked_at REAL NOT NULL DEFAULT 0, gzip_index BLOB, error TEXT);
INSERT OR IGNORE INTO nodes (id, parent, name, kind, gen) VALUES ({ROOT_ID}, 0, '', {DIR}, 0);
"""


def _version_2(db: sqlite3.Connection) -> None:
    """Version 2 changes no row, only what new rows may hold: a file's `key` NULL when it is
    the manifest's parent prefix + the file's path, and a 32-hex-digit ETag as its 16 bytes
    (156 -> 90 bytes an entry on disk). An older s3fuse would read those as no key
    and a bytes ETag: the version makes it refuse the file instead (it is rebuilt)."""


#: Version 1 is the layout of the unversioned indexes (version 0), which it leaves as is.
SCHEMA = Schema("manifest index", (_VERSION_1, _version_2),
                unreadable_hint="it is rebuilt from the manifest when moved aside")


class Node(NamedTuple):
    """One row of the index. A named tuple, not a frozen dataclass: a `find` makes one per
    entry, and a dataclass's __init__ sets its 11 fields one by one through
    object.__setattr__ (~3 us; a row becomes a tuple subclass in ~0.3 us)."""

    id: int
    parent: int
    name: str
    kind: int
    size: int | None
    key: str | None
    etag: str | None
    entry_id: str | None
    meta: str | None
    shard: int | None
    offset: int | None

    @property
    def is_dir(self) -> bool:
        return self.kind in (DIR, SHARD)


_COLUMNS = "id, parent, name, kind, size, key, etag, entry_id, meta, shard, offset"
_ETAG = 6  # its position in _COLUMNS


def pack_etag(etag: str | None) -> str | bytes | None:
    """An ETag as stored: 32 lowercase hex digits (an MD5, the usual single-part ETag) as
    their 16 bytes, half the size; any other ETag as it is."""
    if etag is not None and len(etag) == 32:
        try:
            raw = bytes.fromhex(etag)
        except ValueError:
            return etag
        if raw.hex() == etag:
            return raw
    return etag


def _node(row: tuple[Any, ...]) -> Node:
    etag = row[_ETAG]
    if isinstance(etag, bytes):
        return _make_node((*row[:_ETAG], etag.hex(), *row[_ETAG + 1:]))
    return _make_node(row)


_make_node = Node._make


def compact_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def relative_path(key: str, base: str) -> str:
    """An entry's path: its key relative to the manifest's parent prefix, else the full key."""
    return key[len(base):] if base and key.startswith(base) else key


HIDDEN_PATTERNS = ("manifests/part-*.jsonl", "*/manifests/part-*.jsonl")


def hidden(path: str, internal: str = "__manifest__.jsonl") -> bool:
    name = path.rsplit("/", 1)[-1]
    if name == internal:
        return True
    # what every pattern's last part asks, first: cheap for the millions of other names
    return (name.startswith("part-") and name.endswith(".jsonl")
            and any(fnmatch.fnmatchcase(path, p) for p in HIDDEN_PATTERNS))


class ManifestIndex:
    """One manifest's index file; point queries from the trio thread, writes in workers."""

    def __init__(self, path: Path):
        self.path = path
        self._db = Database(path, SCHEMA)
        self._later = ThreadPoolExecutor(1, thread_name_prefix="manifest-index")

    def _connect(self) -> sqlite3.Connection:
        """A connection of its own, for a bulk writer (readers are never blocked)."""
        return self._db.connect()

    def close(self) -> None:
        self._later.shutdown(wait=True)  # the point writes handed over so far land first
        self._db.close()

    # ------------------------------------------------------------ info

    def info(self, key: str) -> str | None:
        row = self._db.query_one("SELECT v FROM info WHERE k=?", key)
        return row[0] if row else None

    def set_info(self, values: dict[str, str | None]) -> None:
        """Set (None: delete) info keys, committed at once. Blocking: a worker thread's."""
        with self._db.bulk() as db:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM info WHERE k=?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ queries

    def node(self, node_id: int) -> Node | None:
        row = self._db.query_one(f"SELECT {_COLUMNS} FROM nodes WHERE id=?", node_id)
        return _node(row) if row else None

    def child(self, parent: int, name: str) -> Node | None:
        row = self._db.query_one(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name=?",
                                 parent, name)
        return _node(row) if row else None

    def children(self, parent: int, after_id: int, limit: int) -> list[Node]:
        """Children in name order after the child `after_id` (0: from the first): stable
        readdir offsets, paged along the (parent, name) index, so a page costs its own rows
        whatever the directory's size (in rowid order, every page sorted the rest of the
        directory: 24 ms a page of a 100,000-entry one, quadratic). A child a re-ingestion
        dropped meanwhile counts as 0: entries are listed again, none is lost."""
        row = self._db.query_one("SELECT name FROM nodes WHERE id=? AND parent=?",
                                 after_id, parent) if after_id else None
        rows = self._db.query(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name>? "
                              "ORDER BY name LIMIT ?", parent, row[0] if row else "", limit)
        return [_node(r) for r in rows]

    def path_of(self, node_id: int, top: int = ROOT_ID) -> str:
        """The '/'-joined path of a node below `top` (the manifest root by default)."""
        with self._db.snapshot() as db:
            return _path(db, node_id, top)

    def key_of(self, node: Node, base: str) -> str | None:
        """A node's S3 key: stored, or for a file whose key the ingestion left out (None),
        `base` (the manifest's parent prefix) + the node's path."""
        if node.key is None and node.kind == FILE:
            return base + self.path_of(node.id)
        return node.key

    def remember_file(self, node_id: int, key: str | None, size: int, etag: str) -> Future[None]:
        """Record a HEAD's size and ETag for a file whose manifest line had none, unless an
        ingestion made the node another object (or gave it both) meanwhile. `key`: the
        node's as read (None: derived from its path). Never waits."""
        return self._write_later(
            "a file's size", "UPDATE nodes SET size=?, etag=? WHERE id=? AND kind=? AND key IS ? "
            "AND (size IS NULL OR etag IS NULL OR etag='')", size, pack_etag(etag), node_id,
            FILE, key)

    def fail_shard(self, shard_id: int, error: str, checked_at: float) -> Future[None]:
        """Record that a shard could not be indexed (tried again after the TTL). Never waits."""
        return self._write_later(
            "a failed shard", "UPDATE shards SET state='failed', error=?, checked_at=? WHERE node=?",
            error, checked_at, shard_id)

    def settle(self) -> None:
        """Block until the point writes handed over so far are done (one writer thread, in
        order: a marker behind them)."""
        self._later.submit(lambda: None).result()

    def _write_later(self, what: str, sql: str, *args: Any) -> Future[None]:
        return self._later.submit(self._write_quietly, what, sql, args)

    def _write_quietly(self, what: str, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, *args)
        except (CacheFull, sqlite3.Error) as exc:  # "database is locked" after the busy timeout
            log.info("manifest index %s: %s not recorded (%s)", self.path, what, exc)

    def shard(self, node_id: int) -> dict[str, Any] | None:
        with self._db.snapshot() as db:
            cur = db.execute("SELECT * FROM shards WHERE node=?", (node_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
            cur.close()
        return dict(zip(names, row)) if row else None

    def count(self) -> int:
        return int(self._db.query_one("SELECT count(*) FROM nodes")[0])

    # ------------------------------------------------------------ writes (worker threads)

    def writer(self) -> "IndexWriter":
        return IndexWriter(self)

    def store_members(self, shard_id: int, members: Iterable[tuple[str, int, int, str | None, str | None]],
                      etag: str, actual: str, asize: int, usize: int | None, gzip_index: bytes | None,
                      checked_at: float, shared: bool = False) -> int:
        """Replace a shard's members: (path, offset, size, entry_id, meta json). `shared`:
        they came from another machine's published index (info `shared:<shard>` = etag),
        so each member's tar header is checked before its bytes are served."""
        gen = int(self.info("gen") or 0)
        with self._db.bulk() as db:
            ids = _KeptIds(db, shard_id)
            db.execute("DELETE FROM nodes WHERE shard=?", (shard_id,))
            dirs: dict[tuple[int, str], int] = {}
            count = 0
            hidden: list[str] = []  # members whose path another entry of the view holds
            packed = pack_etag(etag)
            for path, offset, size, entry_id, meta in members:
                parts = path.split("/")
                parent = _member_dirs(db, dirs, parts[:-1], shard_id, gen, ids)
                stored = ids.used(db.execute(
                    "INSERT OR IGNORE INTO nodes (id, parent, name, kind, size, etag, entry_id, "
                    f"meta, shard, offset, gen) VALUES ({_KEPT_ID},?,?,?,?,?,?,?,?,?,?) RETURNING id",
                    (parent, parts[-1], ids.fresh, parent, parts[-1], MEMBER, size, packed,
                     entry_id, meta, shard_id, offset, gen)).fetchone())
                if stored is None:
                    hidden.append(path)
                count += 1
            ids.drop()
            if hidden:  # a loose `file` entry at a member's path hid it without a word
                log.warning("shard %s: %d members not shown, another entry has their path "
                            "(first: %s)", _path(db, shard_id), len(hidden), example(hidden[0]))
            db.execute("UPDATE shards SET state='indexed', etag=?, actual=?, asize=?, usize=?, "
                       "gzip_index=?, checked_at=?, error=NULL WHERE node=?",
                       (etag, actual, asize, usize, gzip_index, checked_at, shard_id))
            db.execute("DELETE FROM info WHERE k=?", (shared_key(shard_id),))
            if shared:
                db.execute("INSERT INTO info VALUES (?, ?)", (shared_key(shard_id), etag))
        return count

    def shared_etag(self, shard_id: int) -> str | None:
        """The ETag whose members came from a published index, if the shard's did."""
        return self.info(shared_key(shard_id))

    def forget_shard(self, shard_id: int) -> Future[None]:
        """Have a shard indexed again at its next use (its members proved wrong). Never waits."""
        return self._write_later("a shard to index again",
                                 "UPDATE shards SET state='pending' WHERE node=?", shard_id)


def _path(db: sqlite3.Connection, node_id: int, top: int = ROOT_ID) -> str:
    parts = []
    while node_id not in (top, ROOT_ID):
        row = db.execute("SELECT parent, name FROM nodes WHERE id=?", (node_id,)).fetchone()
        if row is None:
            break
        node_id, name = row
        parts.append(name)
    return "/".join(reversed(parts))


def shared_key(shard_id: int) -> str:
    return f"shared:{shard_id}"


#: A node's id from the shard's index before (`_KeptIds`), else the next fresh one.
_KEPT_ID = "COALESCE((SELECT id FROM temp.kept_ids WHERE parent=? AND name=?), ?)"


class _KeptIds:
    """The ids a shard's nodes had, for the same paths when it is indexed again (a changed
    archive, a published index found wrong): the kernel keeps a member's directory and its
    members by inode number, which is the id, and a lookup from there found nothing for
    the metadata TTL when every id changed. New paths get ids above every id there was,
    so a reused id is never taken first."""

    def __init__(self, db: sqlite3.Connection, shard_id: int):
        db.execute("CREATE TEMP TABLE IF NOT EXISTS kept_ids (parent INTEGER, name TEXT, "
                   "id INTEGER, PRIMARY KEY (parent, name)) WITHOUT ROWID")
        db.execute("DELETE FROM temp.kept_ids")
        db.execute("INSERT INTO temp.kept_ids SELECT parent, name, id FROM nodes WHERE shard=?",
                   (shard_id,))
        self._db = db
        self.fresh = (db.execute("SELECT max(id) FROM nodes").fetchone()[0] or 0) + 1

    def used(self, row: tuple[int] | None) -> int | None:
        """Note the id an insert returned (None: ignored); the fresh one taken moves on."""
        if row is None:
            return None
        if row[0] == self.fresh:
            self.fresh += 1
        return row[0]

    def drop(self) -> None:
        self._db.execute("DELETE FROM temp.kept_ids")


def _member_dirs(db: sqlite3.Connection, dirs: dict[tuple[int, str], int], parts: list[str],
                 shard_id: int, gen: int, ids: _KeptIds) -> int:
    """The directory rows of a member's path, created once. Known directories are keyed by
    (parent id, name), not by their path: memory stays linear in the path's length (a
    path's every prefix as a string would be quadratic: 199 MiB for 50 deep members)."""
    parent = shard_id
    for part in parts:
        known = dirs.get((parent, part))
        if known is None:
            cur = db.execute(
                f"INSERT INTO nodes (id, parent, name, kind, shard, gen) VALUES ({_KEPT_ID},?,?,?,?,?) "
                "ON CONFLICT(parent, name) DO UPDATE SET kind=excluded.kind RETURNING id",
                (parent, part, ids.fresh, parent, part, DIR, shard_id, gen))
            known = dirs[parent, part] = ids.used(cur.fetchone())  # type: ignore[assignment]
        parent = known
    return parent


#: A file's row; a directory of this pass at its path wins (the row is left alone).
_UPSERT_FILE = (
    "INSERT INTO nodes (parent, name, kind, size, key, etag, entry_id, meta, gen) "
    "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(parent, name) DO UPDATE SET kind=excluded.kind, "
    "size=excluded.size, key=excluded.key, etag=excluded.etag, entry_id=excluded.entry_id, "
    f"meta=excluded.meta, gen=excluded.gen WHERE NOT (nodes.kind IN ({DIR}, {SHARD}) "
    "AND nodes.gen=excluded.gen)")


class IndexWriter:
    """One ingestion pass: upserts entries in order, then drops what was not seen again.

    Memory is bounded whatever the manifest's size: files are upserted in batches (one
    executemany each: a third of the CPU of a statement per file), and the directories
    of this pass are remembered in an LRU of DIRS_KEPT (an evicted one is looked up in
    the index again). A batch is written before anything that reads rows of this pass (a
    directory looked up, a shard, the commit), so it sees them as if each was written at
    once. `key` None: the file's key is derived from its path (ManifestIndex.key_of)."""

    BATCH = 10_000
    DIRS_KEPT = 10_000
    #: Conflicting paths kept for the summary line; the rest are only counted.
    CONFLICTS_KEPT = 5

    def __init__(self, index: ManifestIndex):
        self.index = index
        self.gen = int(index.info("gen") or 0) + 1
        # Directories of this pass by (parent id, name): linear in what was seen, where
        # keying them by path kept every prefix of every path (quadratic in its depth).
        self._dirs: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._pending = 0
        self._files: list[tuple[Any, ...]] = []
        self.entries = 0
        self.conflicts: list[str] = []
        self.conflict_count = 0
        self.db = db = index._connect()  # its own connection: readers are never blocked
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE nodes SET gen=? WHERE id=?", (self.gen, ROOT_ID))

    def _conflict(self, path: str) -> None:
        self.conflict_count += 1
        if len(self.conflicts) < self.CONFLICTS_KEPT:
            self.conflicts.append(path)

    def _dir(self, parts: list[str]) -> int:
        parent = ROOT_ID
        db = self.db
        dirs = self._dirs
        for depth, part in enumerate(parts):
            known = dirs.get((parent, part))
            if known is not None:
                dirs.move_to_end((parent, part))
            else:
                self._flush()
                row = db.execute("SELECT id, kind, gen FROM nodes WHERE parent=? AND name=?",
                                 (parent, part)).fetchone()
                if row is not None and row[1] == FILE and row[2] == self.gen:
                    self._conflict("/".join(parts[:depth + 1]))  # a file of this pass: the directory wins
                if row is not None and row[1] in (DIR, SHARD) and row[2] == self.gen:
                    known = row[0]
                else:
                    known = db.execute(
                        "INSERT INTO nodes (parent, name, kind, gen, size, key, etag, entry_id, meta) "
                        "VALUES (?,?,?,?,NULL,NULL,NULL,NULL,NULL) ON CONFLICT(parent, name) DO UPDATE "
                        "SET kind=?, gen=excluded.gen, size=NULL, key=NULL, etag=NULL RETURNING id",
                        (parent, part, DIR, self.gen, DIR)).fetchone()[0]
                dirs[parent, part] = known
                if len(dirs) > self.DIRS_KEPT:
                    dirs.popitem(last=False)
            parent = known
        return parent

    def add_file(self, parts: list[str], key: str | None, size: int | None, etag: str | None,
                 entry_id: str | None, meta: str | None) -> None:
        """Upsert a file (in the next batch); a directory of this pass at its path wins."""
        parent = self._dir(parts[:-1])
        self._files.append((parent, parts[-1], FILE, size, key, pack_etag(etag), entry_id, meta,
                            self.gen))
        self._tick()

    def _flush(self) -> None:
        """Write the files batched so far; count those a directory of this pass kept out."""
        files = self._files
        if not files:
            return
        written = self.db.executemany(_UPSERT_FILE, files).rowcount
        if written < len(files):  # rare: find which, for the summary line
            for parent, name, *_ in files:
                row = self.db.execute("SELECT id, kind FROM nodes WHERE parent=? AND name=?",
                                      (parent, name)).fetchone()
                if row[1] != FILE:
                    self._conflict(_path(self.db, row[0]))
                    self.entries -= 1
        files.clear()

    def add_shard(self, parts: list[str], archive_key: str, fmt: str, compression: str | None,
                  internal: str, count: int | None, size: int | None, meta: str | None) -> None:
        self._flush()
        node = self._dir(parts)
        db = self.db
        db.execute("UPDATE nodes SET kind=?, key=?, size=?, meta=? WHERE id=?",
                   (SHARD, archive_key, size, meta, node))
        old = db.execute("SELECT archive_key, compression, internal FROM shards WHERE node=?",
                         (node,)).fetchone()
        if old != (archive_key, compression, internal):
            db.execute("INSERT OR REPLACE INTO shards (node, archive_key, format, compression, internal, "
                       "count) VALUES (?,?,?,?,?,?)", (node, archive_key, fmt, compression, internal, count))
            db.execute("DELETE FROM nodes WHERE shard=?", (node,))
        self._tick()

    def _tick(self) -> None:
        self.entries += 1
        self._pending += 1
        if self._pending >= self.BATCH:  # keep the WAL small on huge manifests
            self._flush()
            db = self.db
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            self._pending = 0

    def commit(self, **info: str) -> None:
        db = self.db
        try:
            self._flush()
            db.execute("DELETE FROM nodes WHERE gen<? AND shard IS NULL AND id<>?", (self.gen, ROOT_ID))
            db.execute("DELETE FROM shards WHERE node NOT IN (SELECT id FROM nodes WHERE kind=?)", (SHARD,))
            db.execute("DELETE FROM nodes WHERE shard IS NOT NULL AND shard NOT IN "
                       "(SELECT node FROM shards)")
            db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)",
                           [("gen", str(self.gen)), *info.items()])
            db.execute("COMMIT")
            # the index on disk is then the database alone (the WAL of a build is ~4 MiB)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def abort(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        finally:
            self.db.close()
