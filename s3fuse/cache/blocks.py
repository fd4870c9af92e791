"""Data cache on diskcache: (bucket, key, etag, block) -> verified bytes, LRU, size cap.

Every stored block carries a header with a digest of its identity and a CRC of its
bytes, so a truncated, zeroed or swapped block file is detected on read and treated
as a miss (and dropped) instead of being served. All methods block: call them from
worker threads.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import diskcache

try:  # ISA-L's CRC-32 is zlib's (the same digest: blocks stay readable), 5x faster (SIMD):
    # 9 ms instead of 48 ms of CPU per 256 MiB, on every block written and every block read
    from isal.isal_zlib import crc32
except ImportError:  # a platform without an isal wheel
    from zlib import crc32

from ..errors import CorruptData
from .directio import data_offset, read_file, write_new
from .reserve import DiskReserve, ReserveReached, free_bytes
from .safedisk import SafeDisk, check_filename

log = logging.getLogger(__name__)

_MAGIC = b"S3FB"
_HEADER = struct.Struct(">4sBI16sQ")  # magic, version, crc32, identity digest, length
#: Version 2 follows the header with a CRC-32 of every CHUNK of the bytes (the header's own
#: CRC is the table's), so a few KiB of an 8 MiB block can be read and checked without the
#: rest (`get_range`: a random read of a big cached file, a member inflated from a seek
#: point of a cached archive); a whole block is checked chunk by chunk, the same one pass
#: over its bytes. Version 3 puts where the bytes start (_OFFSET, covered by the header's
#: CRC with the table) before the table: big blocks start where `directio.write_new` can
#: write them past the page cache. Versions 1 (the CRC of the bytes, no table) and 2 stay
#: readable.
_VERSION = 3
_VERSIONS = (1, 2, 3)
CHUNK = 256 << 10
_CHUNK_CRC = struct.Struct(">I")
_OFFSET = struct.Struct(">I")
#: An 8 MiB block's header and chunk table, in one pread
_HEAD_READ = _HEADER.size + _OFFSET.size + _CHUNK_CRC.size * (8 << 20) // CHUNK
#: Access times of blocks read are written to the LRU store's index in batches: at most
#: this many pending, none older than TOUCH_DELAY seconds (and all before a store, a prune
#: or close). diskcache's own get wrote each in a transaction of its own: a `cat` of 1,000
#: cached files was 1,000 commits (and WAL checkpoints, fsyncs) under the writers' lock.
TOUCH_BATCH = 256
#: Entries a store's own `set` evicts (diskcache's cull_limit): none, `put` trims by bytes
#: instead (_LockedCache.trim), TRIM_BATCH rows looked at per transaction.
CULL_LIMIT = 0
TRIM_BATCH = 64
#: What a block's value file takes on disk beside its bytes, as the size limit counts it:
#: its last block rounded up to a whole 4 KiB, at most (its directory entry is a few
#: dozen bytes: safedisk.py keeps value files in 16 directories). Counting the bytes
#: alone, a 64 MiB limit let 5,000 cached 1-byte files take 50 MB, with diskcache's
#: 65,536 directories (a helper's finding).
FILE_OVERHEAD = 4 << 10
TOUCH_DELAY = 1.0
#: Free bytes a store needs to be opened or changed at all (SQLite's WAL index, WAL frames
#: of a DELETE): on a full disk, cached blocks are dropped until it is free (`make_room`)
OPEN_ROOM = 1 << 20
#: Value files up to this size (a small file's block, sealed) are read buffered, in one
#: pread: past the page cache (directio.py), each was a synchronous disk read into a
#: fresh page-rounded mapping, 83 of the 160 us a 4 KiB block cost with the page cache warm.
BUFFERED_READ_MAX = 64 << 10
#: Value files looked up and opened ahead of a sequential reader (`open_ahead`), held until
#: read or pushed out by newer ones. With the page cache dropped, a block's SELECT and open
#: are random disk reads (SQLite pages, the `xx/yy/` directories, the inode): ~6 ms a reader
#: waited for block by block, 40% of a 256 MiB re-read from the disk cache. An open file
#: costs no memory beside its descriptor.
OPENED_AHEAD_MAX = 16


def block_id(bucket: str, key: str, etag: str, index: int) -> str:
    """The cache key of one block; never used as a path."""
    return f"b\x00{bucket}\x00{key}\x00{etag}\x00{index}"


def _identity(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def header(name: str, data: bytes | bytearray | memoryview) -> bytes:
    """What precedes `data` in its block file: header, data offset, chunk table, padding."""
    view = memoryview(data).cast("B")
    table = b"".join(_CHUNK_CRC.pack(crc32(view[at:at + CHUNK])) for at in range(0, len(view), CHUNK))
    size = _HEADER.size + _OFFSET.size + len(table)
    start = data_offset(size, view)
    covered = _OFFSET.pack(start) + table
    return (_HEADER.pack(_MAGIC, _VERSION, crc32(covered), _identity(name), len(view))
            + covered + bytes(start - size))


def _layout(head: bytes | memoryview, version: int, length: int) -> tuple[memoryview, int]:
    """(what the header's CRC covers, where the bytes start) of a block file beginning
    with `head` (at least its header and chunk table); version 1: (empty, after the header)."""
    if version == 1:
        return memoryview(b""), _HEADER.size
    table_at = _HEADER.size + (_OFFSET.size if version == 3 else 0)
    end = table_at + _CHUNK_CRC.size * -(-length // CHUNK)
    covered = memoryview(head)[_HEADER.size:end]
    if len(covered) != end - _HEADER.size:
        raise CorruptData("cache block has a bad chunk table")
    start = _OFFSET.unpack_from(head, _HEADER.size)[0] if version == 3 else end
    if start < end:
        raise CorruptData("cache block has a bad header")
    return covered, start


def seal(name: str, data: bytes | bytearray | memoryview) -> bytes:
    return header(name, data) + bytes(data)


class _SealedBlock:
    """A block's header and bytes, for SafeDisk to write into a new value file
    (`directio.write_new`: big blocks past the page cache)."""

    def __init__(self, name: str, data: bytes | bytearray | memoryview):
        self.head = header(name, data)
        self.data = data

    def write_to(self, fd: int) -> int:
        return write_new(fd, self.head, self.data)


def unseal(name: str, blob: bytes | memoryview) -> memoryview:
    """The payload of `blob` (zero-copy) if it is the intact block `name`; CorruptData otherwise."""
    if len(blob) < _HEADER.size:
        raise CorruptData(f"cache block too short ({len(blob)} bytes)")
    version, crc, length = _checked_header(name, blob)
    covered, start = _layout(blob, version, length)
    data = memoryview(blob)[start:]
    if length != len(data):
        raise CorruptData("cache block fails its checksum")
    if version == 1:
        if crc32(data) != crc:
            raise CorruptData("cache block fails its checksum")
    else:
        _check_chunks(covered, version, crc, length, data, 0)
    return data


def _check_chunks(covered: memoryview, version: int, crc: int, length: int, body: memoryview,
                  first: int) -> None:
    """Check the chunks `body` holds, from chunk `first` on, against the table in `covered`
    (what the header's CRC covers: in version 3 the data offset, then the table)."""
    if crc32(covered) != crc:
        raise CorruptData("cache block has a bad chunk table")
    table = covered[_OFFSET.size:] if version == 3 else covered
    for at in range(0, len(body), CHUNK):
        n = first + at // CHUNK
        (want,) = _CHUNK_CRC.unpack_from(table, n * _CHUNK_CRC.size)
        chunk = body[at:at + CHUNK]
        if len(chunk) != min(CHUNK, length - n * CHUNK) or crc32(chunk) != want:
            raise CorruptData("cache block fails its checksum")


def _checked_header(name: str, head: bytes) -> tuple[int, int, int]:
    """(version, crc32, length) of a block's header, if it is one of block `name`'s."""
    magic, version, crc, ident, length = _HEADER.unpack_from(head)
    if magic != _MAGIC or version not in _VERSIONS:
        raise CorruptData("cache block has a bad header")
    if ident != _identity(name):
        raise CorruptData("cache block belongs to another object or block")
    return version, crc, length


def read_range(fd: int, name: str, size: int, start: int, stop: int) -> memoryview:
    """Bytes [start, stop) of the block file `fd` (`size` bytes as stored), reading and
    checking only the chunks under them (a version 1 block: all of it)."""
    head = os.pread(fd, _HEAD_READ, 0)
    if len(head) < _HEADER.size:
        raise CorruptData(f"cache block too short ({len(head)} bytes)")
    version, crc, length = _checked_header(name, head)
    if version == 1:
        return unseal(name, os.pread(fd, size + 1, 0))[start:stop]  # a longer file fails it
    table_end = _HEADER.size + _OFFSET.size + _CHUNK_CRC.size * -(-length // CHUNK)
    if len(head) < min(table_end, size):  # a block bigger than 8 MiB: its whole table
        head = os.pread(fd, table_end, 0)
    covered, base = _layout(head, version, length)
    if size != base + length:
        return unseal(name, os.pread(fd, size + 1, 0))[start:stop]  # a longer file fails it
    stop = min(stop, length)
    first, last = start // CHUNK, max(start, stop - 1) // CHUNK
    body = memoryview(os.pread(fd, min((last + 1) * CHUNK, length) - first * CHUNK,
                               base + first * CHUNK))
    if len(body) != min((last + 1) * CHUNK, length) - first * CHUNK:
        raise CorruptData("cache block fails its checksum")
    _check_chunks(covered, version, crc, length, body, first)
    return body[start - first * CHUNK:stop - first * CHUNK]


#: diskcache's writes of its Settings table when a cache opens, and where each puts the
#: (key, value) in its parameters
_SETTINGS_WRITES = {
    "INSERT OR REPLACE INTO Settings VALUES (?, ?)": (0, 1),
    "INSERT OR IGNORE INTO Settings VALUES (?, ?)": (0, None),  # None: any value stays
    "UPDATE Settings SET value = ? WHERE key = ?": (1, 0),
}
#: What a skipped write answers (its result is never read)
_NO_ROWS = iter(())


def _stored_as_is(sql: Callable[..., Any], statement: str, *args: Any) -> bool:
    """Would `statement` (one of _SETTINGS_WRITES) leave the Settings table as it is?
    False for any other statement, and when the table cannot be read (a new cache)."""
    where = _SETTINGS_WRITES.get(statement)
    if where is None or not args:
        return False
    key_at, value_at = where
    try:
        rows = sql("SELECT value FROM Settings WHERE key = ?", (args[0][key_at],)).fetchall()
    except sqlite3.OperationalError:
        return False
    return bool(rows) and (value_at is None or rows[0][0] == args[0][value_at])


#: A block looked up: (rowid, size, its bytes or its value file, open).
_Found = tuple[int, int, Any]


class _LockedCache(diskcache.Cache):
    """A diskcache.Cache whose SQLite write transactions take `lock` (one writer at a
    time: concurrent ones would meet in SQLite's busy handler, which sleeps milliseconds
    per retry). Value files are written and read outside it, so reading a block never
    waits for another block's 8 MiB being written."""

    def __init__(self, *args: Any, lock: threading.RLock, **kwargs: Any):
        self._s3fuse_lock = lock
        self._s3fuse_opening = True
        super().__init__(*args, **kwargs)
        self._s3fuse_opening = False

    @property
    def _sql_retry(self) -> Any:
        """diskcache's writing `execute`; while opening, one that skips the writes of
        settings already stored as they are (`_stored_as_is`). diskcache's open rewrites
        every setting even when unchanged: on a full disk a cache could not be opened at
        all, so neither could the mount start nor `s3fuse cache prune` free space."""
        execute = super()._sql_retry
        if not getattr(self, "_s3fuse_opening", False):
            return execute

        def unless_stored(statement: str, *args: Any, **kwargs: Any) -> Any:
            if _stored_as_is(self._sql, statement, *args):
                return _NO_ROWS
            return execute(statement, *args, **kwargs)

        return unless_stored

    @contextmanager
    def _transact(self, retry: bool = False, filename: str | None = None) -> Iterator[Any]:
        with self._s3fuse_lock, super()._transact(retry, filename) as pair:
            yield pair

    def on_disk(self) -> int:
        """What the store takes on disk: its index and value bytes (diskcache's `volume`)
        and FILE_OVERHEAD per entry (each is a value file)."""
        return int(self.volume()) + len(self) * FILE_OVERHEAD

    def trim(self, limit: int) -> None:
        """Evict least recently used entries until `on_disk` is within `limit`, and no
        more: diskcache's `cull` deletes 10 at a time (80 MiB of 8 MiB blocks to make room
        for one) and its `set` CULL_LIMIT whatever their size (16 KiB of small files' blocks
        for an 8 MiB one), so a 64 MiB cache dropped the file read last, or grew past 2x."""
        while (excess := self.on_disk() - limit) > 0:
            with self._transact() as (sql, cleanup):
                rows = sql("SELECT rowid, size, filename FROM Cache ORDER BY access_time "
                           "LIMIT ?", (TRIM_BATCH,)).fetchall()
                if not rows:
                    return
                taken = []
                for rowid, size, filename in rows:
                    taken.append((rowid, filename))
                    excess -= size + FILE_OVERHEAD
                    if excess <= 0:
                        break
                sql(f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(taken))})",
                    [rowid for rowid, _ in taken])
                for _, filename in taken:
                    cleanup(filename)

    def lookup(self, name: str) -> _Found | None:
        """(rowid, size, value) of `name` (a value file comes back open), or None: one
        SELECT and no transaction. Its access time is not updated: the caller batches
        that (`touch`)."""
        db_key, raw = self._disk.put(name)
        rows = self._sql("SELECT rowid, size, mode, filename, value FROM Cache "
                         "WHERE key = ? AND raw = ?", (db_key, raw)).fetchall()
        if not rows:
            return None
        ((rowid, size, mode, filename, value),) = rows
        try:
            return rowid, size, self._disk.fetch(mode, filename, value, True)
        except IOError:  # evicted between the SELECT and the open (as diskcache's get)
            return None

    def forget(self, filenames: list[str]) -> None:
        """Delete the rows of value files already removed (`_drop_for_room`)."""
        for at in range(0, len(filenames), TRIM_BATCH):
            batch = filenames[at:at + TRIM_BATCH]
            with self._transact() as (sql, _):
                sql(f"DELETE FROM Cache WHERE filename IN ({','.join('?' * len(batch))})", batch)

    def files_oldest_first(self) -> list[str]:
        """The value files of the entries, least recently used first (read only)."""
        rows = self._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL "
                         "ORDER BY access_time").fetchall()
        return [filename for (filename,) in rows]

    def touch(self, accessed: dict[int, float]) -> None:
        """Record the access times `accessed` (rowid -> time) in one transaction (a rowid
        evicted meanwhile updates nothing, or at worst the LRU rank of a newer block)."""
        with self._transact() as (sql, _):
            for rowid, when in accessed.items():
                sql("UPDATE Cache SET access_time = ? WHERE rowid = ?", (when, rowid))


class BlockCache:
    """Object blocks in two diskcache stores: `blocks/` (LRU, size-capped) and `pinned/`
    (never evicted; filled by `s3fuse pin`, emptied by `unpin`).

    SQLite transactions are serialized by one lock (see `_LockedCache`); multi-step
    changes (pin, unpin, prune) hold it throughout (it is reentrant). With a `reserve`,
    a block is stored only with room above the disk's free-space reserve, made by
    evicting LRU blocks when needed; else ReserveReached (ENOSPC): a read is then served
    uncached, a pin fails.
    """

    def __init__(self, directory: Path, size_limit: int | None, pinned_directory: Path | None = None,
                 reserve: DiskReserve | None = None, room: bool = True):
        """`size_limit` None: the limit the last daemon set (diskcache keeps it in its settings).
        `room`: on a full disk, drop the oldest cached blocks until OPEN_ROOM is free before
        opening (SQLite cannot open a database without room for its WAL index); False opens
        without removing anything (`s3fuse cache stats`)."""
        self.directory = directory
        self.reserve = reserve
        self._lock = threading.RLock()
        # (no walk of the files otherwise; a store not made yet has none)
        full = room and directory.is_dir() and free_bytes(directory) < OPEN_ROOM
        dropped, freed = (_drop_for_room(directory, _value_files_oldest_first(directory))
                          if full else ([], 0))
        self._lru = _store(directory, size_limit, "least-recently-used", self._lock)
        if dropped:
            self._lru.forget(dropped)
        #: (blocks, bytes) dropped to open the store on a full disk (`prune` counts them)
        self.dropped_at_open = (len(dropped), freed)
        self.size_limit = int(self._lru.size_limit)
        self._pinned = _store(pinned_directory or directory.parent / "pinned", 1 << 62, "none",
                              self._lock)
        self._touched: dict[int, float] = {}  # LRU rowid -> access time not yet written
        self._touched_since = 0.0
        self._touch_lock = threading.Lock()
        self._opened: OrderedDict[str, tuple[_LockedCache, _Found]] = OrderedDict()
        self._opening: set[str] = set()  # blocks open_ahead is looking up; a get drops them
        self._opened_lock = threading.Lock()

    def get(self, bucket: str, key: str, etag: str, index: int) -> memoryview | None:
        name = block_id(bucket, key, etag, index)
        with self._opened_lock:
            held = self._opened.pop(name, None)
            self._opening.discard(name)  # read here: what is being opened ahead is not kept
        if held is not None:
            data = self._read(held[0], name, held[1])
            if data is not None:
                return data
        for store in (self._pinned, self._lru):
            data = self._read(store, name)
            if data is not None:
                return data
        return None

    def open_ahead(self, bucket: str, key: str, etag: str, index: int) -> None:
        """Look up block `index` and open its value file now, for a `get` soon (see
        OPENED_AHEAD_MAX); nothing when it is not cached or cannot be looked up."""
        name = block_id(bucket, key, etag, index)
        with self._opened_lock:
            if name in self._opened or name in self._opening:
                return
            self._opening.add(name)
        found = None
        try:
            for store in (self._pinned, self._lru):
                found = store.lookup(name)
                if found is not None:
                    break
        except (OSError, sqlite3.Error) as exc:  # `get` will say what is wrong
            log.debug("cache block %r not opened ahead: %s", name.split("\x00")[1:3], exc)
        with self._opened_lock:
            # a `get` of the block while it was looked up read it on its own: an open file
            # kept now would never be read, only pushed out (a test saw one left over)
            wanted = name in self._opening
            self._opening.discard(name)
            pushed_out = []
            if found is not None and wanted:
                self._opened[name] = (store, found)
                pushed_out = [self._opened.popitem(last=False)[1][1]
                              for _ in range(len(self._opened) - OPENED_AHEAD_MAX)]
        if found is not None and not wanted:
            _close(found[2])
        for _, _, value in pushed_out:
            _close(value)

    def _drop_opened(self) -> None:
        with self._opened_lock:
            held, self._opened = list(self._opened.values()), OrderedDict()
            self._opening.clear()  # nor is what is being looked up kept
        for _, (_, _, value) in held:
            _close(value)

    def get_range(self, bucket: str, key: str, etag: str, index: int, start: int,
                  stop: int) -> memoryview | None:
        """Bytes [start, stop) of a cached block (short at its end), reading from disk only
        the chunks under them: a few KiB of a big file read at random cost no 8 MiB read."""
        name = block_id(bucket, key, etag, index)
        for store in (self._pinned, self._lru):
            data = self._read(store, name, span=(start, stop))
            if data is not None:
                return data
        return None

    def _read(self, store: _LockedCache, name: str, found: _Found | None = None,
              span: tuple[int, int] | None = None) -> memoryview | None:
        """Block `name` from `store` (bytes `span` of it only: `get_range`), looked up now
        unless `found` (by `open_ahead`)."""
        try:
            # a value file comes back open, and is read after the SELECT (value files are
            # never rewritten in place; an open one survives eviction)
            found = found or store.lookup(name)
            if found is None:
                return None
            rowid, size, value = found
            if isinstance(value, bytes):  # small values live in SQLite itself
                data = unseal(name, value)
                if span is not None:
                    data = data[span[0]:span[1]]
            elif span is not None:
                with value:
                    data = read_range(value.fileno(), name, size, *span)
            else:
                with value:
                    # one byte more than the index says: a longer file fails unseal
                    blob = (os.pread(value.fileno(), size + 1, 0) if size <= BUFFERED_READ_MAX
                            else read_file(value.fileno()))
                data = unseal(name, blob)
            if store is self._lru:
                self._touch(rowid)
            return data
        except (CorruptData, OSError) as exc:
            log.warning("cache block %r is corrupt or unreadable (%s): dropped", name.split("\x00")[1:3], exc)
            with self._lock:
                store.delete(name)
            return None

    def _touch(self, rowid: int) -> None:
        """Note that LRU block `rowid` was read now; write the notes once there are
        TOUCH_BATCH of them or the oldest is TOUCH_DELAY old."""
        now = time.time()
        with self._touch_lock:
            if not self._touched:
                self._touched_since = now
            self._touched[rowid] = now
            due = len(self._touched) >= TOUCH_BATCH or now - self._touched_since >= TOUCH_DELAY
        if due:
            self.flush_touches()

    def flush_touches(self) -> None:
        """Write the access times noted so far (before anything that evicts by them)."""
        with self._touch_lock:
            accessed, self._touched = self._touched, {}
        if accessed:
            self._lru.touch(accessed)

    def put(self, bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        name = block_id(bucket, key, etag, index)
        if name not in self._pinned:  # (a block pinned meanwhile may also stay in the LRU
            # store until evicted: harmless, `get` looks in the pinned store first)
            self.flush_touches()  # storing may evict (cull): by up-to-date access times
            self.claim(len(data))
            self._lru.set(name, _SealedBlock(name, data), read=True)
            self._lru.trim(self.size_limit)  # by bytes, the least recently used first

    def claim(self, n: int, fresh: bool = False) -> None:
        """Room for `n` more bytes above the reserve (a block's, a staging file's), evicting
        LRU blocks if that makes it; else ReserveReached (ENOSPC). `fresh`: see DiskReserve."""
        if self.claim_now(n, fresh):
            return
        assert self.reserve is not None  # claim_now: no reserve, no limit
        with self._lock:
            if len(self._lru):
                self.prune(None, max(0, self._lru.on_disk() - (n - self.reserve.room())))
        self.reserve.claim(n, fresh)  # ReserveReached when even that is not room enough

    def has_room(self, n: int) -> bool:
        """Whether `n` bytes fit on the disk above its reserve now, evicting nothing (one
        statvfs, no claim: the trio loop may ask)."""
        return free_bytes(self.directory) - (self.reserve.bytes if self.reserve else 0) >= n

    def claim_now(self, n: int, fresh: bool = False) -> bool:
        """`claim` when no block must be evicted for it (no disk work: the trio loop may
        ask); False when it would have to be."""
        if self.reserve is None:
            return True
        try:
            self.reserve.claim(n, fresh)
        except ReserveReached:
            return False
        return True

    def pin(self, bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        """Keep this block until unpinned (moved out of the LRU store)."""
        name = block_id(bucket, key, etag, index)
        with self._lock:
            self._lru.delete(name)  # first: its room goes to the pinned copy
            if name not in self._pinned:
                self.claim(len(data))
                self._pinned.set(name, _SealedBlock(name, data), read=True)

    def unpin(self, bucket: str, key: str, etag: str, index: int) -> None:
        """Back to the LRU store: still cached, evictable again."""
        name = block_id(bucket, key, etag, index)
        data = self._read(self._pinned, name)
        with self._lock:
            if data is not None:
                self._lru.set(name, _SealedBlock(name, bytes(data)), read=True)
            self._pinned.delete(name)

    def contains(self, bucket: str, key: str, etag: str, index: int) -> bool:
        name = block_id(bucket, key, etag, index)
        with self._lock:
            return name in self._pinned or name in self._lru

    def pinned(self, bucket: str, key: str, etag: str, index: int) -> bool:
        with self._lock:
            return block_id(bucket, key, etag, index) in self._pinned

    def usage(self) -> dict[str, int]:
        """Bytes on disk and block counts; an empty store counts 0 bytes (not the pages of
        its empty SQLite file: status showed "pinned 28 KiB in 0 pins")."""
        with self._lock:
            used, pinned = len(self._lru), len(self._pinned)
            return {"used": self._lru.on_disk() if used else 0, "blocks": used,
                    "pinned": self._pinned.on_disk() if pinned else 0,
                    "pinned_blocks": pinned}

    def make_room(self, *stores: _LockedCache) -> None:
        """On a full disk, remove the value files of the least recently used entries of
        `stores` (the LRU store by default) until OPEN_ROOM is free, then their rows:
        SQLite needs room in its WAL to delete rows at all, so a prune or clear of a full
        cache otherwise failed and freed nothing. Each removed file is a block the caller
        is about to drop anyway; a row left by a crash in between reads as a miss."""
        for store in stores or (self._lru,):
            if free_bytes(self.directory) >= OPEN_ROOM:
                return
            dropped, _ = _drop_for_room(Path(store.directory), store.files_oldest_first(),
                                        logging.INFO)
            if dropped:
                store.forget(dropped)

    def evict_to_reserve(self) -> None:
        """Evict LRU blocks until the disk is above its reserve again, as far as cached
        blocks can make it: a daemon starting on a full disk (after a crash, or with
        others filling it) needs room to record uploads, pinned blocks and staged
        writes stay."""
        if self.reserve is None or self.reserve.room() >= 0:
            return
        self._drop_opened()
        with self._lock:
            self.make_room()
            try:
                self.claim(0)
            except ReserveReached:
                log.warning("the cache disk of %s stays below its reserve with no cached block "
                            "left to evict: free space on it", self.directory)

    def prune(self, older_than: float | None, max_size: int | None) -> tuple[int, int]:
        """Drop LRU blocks last used before `older_than` (epoch seconds), then least
        recently used ones until the store is at most `max_size`. Pinned blocks stay.
        Returns (blocks removed, bytes removed), those dropped to open it included."""
        self._drop_opened()  # a held file would keep a removed block's disk space
        with self._lock:
            before_n = len(self._lru) + self.dropped_at_open[0]
            before_bytes = self._lru.on_disk() + self.dropped_at_open[1]
            self.dropped_at_open = (0, 0)
            self.make_room()
            self.flush_touches()
            if older_than is not None:
                rows = self._lru._sql("SELECT key FROM Cache WHERE access_time < ?",
                                      (older_than,)).fetchall()
                for (name,) in rows:
                    self._lru.delete(name)
            if max_size is not None:
                self._lru.trim(max_size)
            return before_n - len(self._lru), before_bytes - self._lru.on_disk()

    def clear(self, pinned: bool = True) -> None:
        self._drop_opened()
        with self._lock:
            self.make_room(self._lru, *((self._pinned,) if pinned else ()))
            self._lru.clear()
            if pinned:
                self._pinned.clear()

    def close(self) -> None:
        self._drop_opened()
        self.flush_touches()
        with self._lock:
            self._lru.close()
            self._pinned.close()


def _close(value: Any) -> None:
    if not isinstance(value, bytes):  # small values live in SQLite: nothing was opened
        value.close()


def _value_files_oldest_first(directory: Path) -> list[str]:
    """The value files of the store in `directory` (as its rows name them), oldest written
    first: an order to drop them in before the store can be opened to ask for its own."""
    found = []
    for path in directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
        try:
            found.append((path.stat().st_mtime, str(path.relative_to(directory))))
        except OSError:  # removed meanwhile
            continue
    return [name for _, name in sorted(found)]


def _drop_for_room(directory: Path, filenames: list[str],
                   level: int = logging.WARNING) -> tuple[list[str], int]:
    """Remove value files of `directory`, in the order of `filenames`, until OPEN_ROOM is
    free on its disk (none when it is already); the names removed, and their bytes.
    Logged at `level`: a warning when a store is opened so (a mount starting on a full
    disk), routine eviction otherwise (a prune, a pin filling the disk)."""
    dropped: list[str] = []
    freed = 0
    for filename in filenames:
        if free_bytes(directory) >= OPEN_ROOM:
            break
        check_filename(filename)  # never a path the store did not make
        path = directory / filename
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
        dropped.append(filename)
    if dropped:
        log.log(level, "the cache disk of %s is full: dropped %d cached blocks to make room",
                directory, len(dropped))
    return dropped, freed


def _store(directory: Path, size_limit: int | None, policy: str,
           lock: threading.RLock) -> _LockedCache:
    settings = {} if size_limit is None else {"size_limit": size_limit}
    return _LockedCache(str(directory), disk=SafeDisk, eviction_policy=policy,
                        cull_limit=CULL_LIMIT,
                        statistics=False, lock=lock, **settings)
