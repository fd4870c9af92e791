"""The read path: object bytes from memory, the disk block cache, or ranged GETs.

Objects are cut into fixed blocks keyed by (bucket, key, etag, index), so bytes
of two versions can never mix. Small objects are one block fetched whole. A
handle reading sequentially gets several blocks fetched ahead in parallel;
random reads fetch only the blocks they touch. Small objects have an in-memory LRU of
their own, so a big sequential read never evicts them. Blocking work (boto3, disk) runs
in worker threads behind limiters; the trio loop only coordinates.
"""
from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Union

import trio

from ..cache.blocks import BlockCache
from ..errors import CorruptData, S3FuseError
from ..model import ObjectRef
from ..store.protocol import Store
from ..util.flight import SingleFlight
from ..util.lru import ByteLRU
from ..util.supervisor import CACHE_WRITE, READ_AHEAD, Supervisor

log = logging.getLogger(__name__)

#: A block's bytes: fetched (bytes) or read back from the disk cache (zero-copy view).
Buffer = Union[bytes, memoryview]
#: Blocking producer of bytes [start, stop) of a virtual object (runs in a worker thread).
Loader = Callable[[int, int], bytes]

BLOCK_SIZE = 8 << 20
READAHEAD_BLOCKS = 3
#: Blocks kept in memory: a sequential reader's window (the block it reads and the
#: READAHEAD_BLOCKS after it); blocks it has passed are dropped (`_drop_behind`).
MEMORY_BYTES = (READAHEAD_BLOCKS + 1) * BLOCK_SIZE
#: Blocks at most being fetched from S3, waiting for (or in) a write to the disk cache, or
#: kept in memory after it (see `_Slot`): a read that fetches one more waits
#: (backpressure), after evicting blocks already read. Without it a disk slower than S3
#: queued every block read in memory (304 MiB for a 320 MiB read at 40 MB/s); without
#: counting the blocks kept, a cold 256 MiB read held 6 blocks at times (a block left
#: behind but not yet written, the 4 of the window and one more fetched for a read that
#: arrived early): a peak RSS of 103 MiB in 1 run of 8, 95 MiB otherwise.
PENDING_WRITES = READAHEAD_BLOCKS + 2
#: The same for blocks of small objects (SMALL_OBJECT_BYTES at most: 4 MiB in all), apart:
#: in PENDING_WRITES' 5 slots, 16 DataLoader workers reading 34 KiB members of .tar.gz
#: shards queued behind each other's cache writes (the daemon's CPU -30% and the cold read
#: -25% without them, measured with no cache write at all).
SMALL_PENDING_WRITES = 64
#: Blocks already read that a read-ahead never evicts for a write slot: the one a reader
#: is in and the one before it (the kernel's read-ahead arrives out of order).
READ_KEPT_FOR_AHEAD = 2
#: The kernel sends read-ahead requests concurrently, so they can arrive out of
#: order: a read this close to where the last one ended still counts as sequential.
SEQUENTIAL_SLACK = 4 << 20
#: A read after a seek, of at most this much and less than a block into its run, of a
#: block not in memory is read from the disk cache alone: the chunks under it (each
#: checked, cache/blocks.py), not the whole block. 8 MiB read past the page cache took
#: 6-9 ms here, 1 MiB 0.7 ms: a member inflated from a seek point of a cached .tar.gz
#: (or any random read of a big cached file) paid the whole block each time it had left
#: the 32 MiB in memory.
RANGE_READ_MAX = 1 << 20
#: Blocks read ahead of a reader of an object whose last block loaded came from the disk
#: cache: one comes back in a few ms (cache/directio.py), and a deeper window only held
#: one more 8 MiB block (the peak RSS of a disk-cache read was 10 MiB above a cold one's).
DISK_READAHEAD_BLOCKS = 2
#: ...and how far ahead of it their blocks are looked up and opened, bytes not read yet
#: (cache/blocks.py OPENED_AHEAD_MAX: the lookups are disk round trips, the bytes memory).
DISK_OPEN_AHEAD_BLOCKS = 8
#: The longest a read-ahead waits for the disk to answer the block a reader waits for
#: (`_from_disk`): a disk busy with other work must not stop read-ahead for long.
DEMAND_FIRST_WAIT = 0.1
#: Objects whose last block's source (disk cache or S3) is remembered for that choice.
SOURCES_KEPT = 256
#: Objects this small (one block) are kept in memory in their own LRU of SMALL_MEMORY_BYTES:
#: in the big one, a 256 MiB read left only its own 8 MiB blocks, and every re-read of
#: 1,000 x 4 KiB files went back to the disk cache (a thread hop, a SELECT and a file each).
SMALL_OBJECT_BYTES = 64 << 10
SMALL_MEMORY_BYTES = 8 << 20
#: What a small object's entry costs beside its bytes (key tuple, dict slot, bytes header),
#: charged to SMALL_MEMORY_BYTES: 2,000 x 4 KiB files at most.
SMALL_ENTRY_OVERHEAD = 256



@dataclass(slots=True)
class _Slot:
    """The write slot a fetched block took (from `pool`): held until the block is written
    to the disk cache and, for a block kept in the big LRU, until it leaves it too."""

    pool: trio.Semaphore
    holds: int = 1


@dataclass(slots=True)
class ReadState:
    """Per-handle access pattern, for read-ahead decisions."""

    next_offset: int = 0
    prefetched_to: int = field(default=-1)
    run_start: int = 0  # where the current sequential run began
    dropped_to: int = 0  # blocks below this index were dropped from memory behind the reader
    opened_to: int = -1  # blocks up to this index were opened ahead in the disk cache


class BlockReader:
    """Serves byte ranges of S3 objects through the block cache."""

    def __init__(self, store: Store, blocks: BlockCache, *, block_size: int = BLOCK_SIZE,
                 readahead: int = READAHEAD_BLOCKS, memory_bytes: int = MEMORY_BYTES,
                 small_memory_bytes: int = SMALL_MEMORY_BYTES, s3_concurrency: int = 16,
                 disk_concurrency: int = 4,
                 background: Supervisor | None = None):
        self.store = store
        self.blocks = blocks
        self.block_size = block_size
        self.readahead = readahead
        self._memory = ByteLRU(memory_bytes, on_leave=self._left_memory)
        self._memory_slots: dict[tuple[str, str, str, int], _Slot] = {}  # of blocks in it
        self._small = ByteLRU(small_memory_bytes, overhead=SMALL_ENTRY_OVERHEAD)
        self._flight: SingleFlight[Buffer] = SingleFlight()
        self._s3_limiter = trio.CapacityLimiter(s3_concurrency)
        self._disk_limiter = trio.CapacityLimiter(disk_concurrency)
        # writes to the disk cache queue on their own: a read checking the disk cache never
        # waits behind them. Two, not one: a single writer falls behind a cold sequential
        # read, and every block waiting to be written is 8 MiB of RSS.
        self._persist_limiter = trio.CapacityLimiter(2)
        self._loader_limiter = trio.CapacityLimiter(4)
        self._background = background or Supervisor()
        self._disk_error_logged = False
        self._disk_full = False
        self._persisting = 0
        self._write_slots = trio.Semaphore(PENDING_WRITES)
        self._small_write_slots = trio.Semaphore(SMALL_PENDING_WRITES)
        self.hits = 0  # blocks served from memory or disk
        self.misses = 0  # blocks fetched from S3
        self._persisted = trio.Event()
        self._on_disk: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
        #: objects whose block a reader waits for is being read from the disk cache
        self._demand_on_disk: dict[tuple[str, str, str], trio.Event] = {}

    def block_range(self, ref: ObjectRef) -> range:
        return range((ref.size + self.block_size - 1) // self.block_size)

    def _lru(self, ref: ObjectRef) -> ByteLRU:
        """The in-memory LRU for the blocks of `ref`: its own for a small object."""
        small = ref.size <= SMALL_OBJECT_BYTES and ref.size <= self.block_size
        return self._small if small else self._memory

    async def read(self, ref: ObjectRef, offset: int, size: int, state: ReadState | None = None,
                   loader: Loader | None = None) -> Buffer:
        """Bytes [offset, offset+size) of `ref`, short only at end of object.

        Within one block the result is a zero-copy view: pyfuse3 takes any buffer.
        `loader(start, stop)` replaces the ranged GET for virtual objects (archive
        members): their bytes are cached under `ref` like any object's.
        """
        end = min(offset + size, ref.size)
        if size <= 0 or offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        if state is not None:
            if abs(offset - state.next_offset) > SEQUENTIAL_SLACK:
                state.run_start = offset
            else:
                # a run from the start of the object (cat, cp) reads ahead at once; one
                # after a seek once it has read a block: a member inflated from a seek
                # point in a .tar.gz reads a few hundred KiB, not READAHEAD_BLOCKS blocks
                if not state.run_start or end - state.run_start >= self.block_size:
                    self._read_ahead(ref, last, state, loader)
                self._drop_behind(ref, offset, state)
            state.next_offset = max(end, state.next_offset) if offset <= state.next_offset else end
        ranged = (state is not None and state.run_start and end - offset <= RANGE_READ_MAX
                  and end - state.run_start < self.block_size)
        parts = []
        for index in range(first, last + 1):
            base = index * self.block_size
            start, stop = max(offset - base, 0), end - base
            part = await self._disk_range(ref, index, start, stop) if ranged else None
            if part is None:
                part = (await self.block(ref, index, loader))[start:stop]
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _disk_range(self, ref: ObjectRef, index: int, start: int, stop: int) -> Buffer | None:
        """Bytes [start, stop) of block `index` read from the disk cache alone (RANGE_READ_MAX);
        None when the block is in memory, being fetched, or not on disk."""
        bid = (ref.bucket, ref.key, ref.etag, index)
        if bid in self._lru(ref) or self._flight.busy(bid):
            return None
        data = await trio.to_thread.run_sync(self.blocks.get_range, *bid, start, stop,
                                             limiter=self._disk_limiter)
        if data is not None:
            self.hits += 1
        return data

    def _read_ahead(self, ref: ObjectRef, last: int, state: ReadState, loader: Loader | None) -> None:
        if not self._background.active:
            return
        depth = self.readahead
        on_disk = self._on_disk.get((ref.bucket, ref.key, ref.etag))
        if on_disk:
            depth = min(depth, DISK_READAHEAD_BLOCKS)
        final = len(self.block_range(ref)) - 1
        stop = min(last + depth, final)
        for index in range(max(last + 1, state.prefetched_to + 1), stop + 1):
            self.prefetch(ref, index, loader)
        state.prefetched_to = max(state.prefetched_to, stop)
        if on_disk:
            opened = min(last + DISK_OPEN_AHEAD_BLOCKS, final)
            for index in range(max(state.prefetched_to, state.opened_to) + 1, opened + 1):
                self._background.spawn(self._open_ahead, ref, index, kind=READ_AHEAD)
            state.opened_to = max(state.opened_to, opened)

    async def _open_ahead(self, ref: ObjectRef, index: int) -> None:
        await trio.to_thread.run_sync(self.blocks.open_ahead, ref.bucket, ref.key, ref.etag,
                                      index, limiter=self._disk_limiter)

    def _drop_behind(self, ref: ObjectRef, offset: int, state: ReadState) -> None:
        """Forget the blocks a sequential reader has left behind (by more than the slack
        reads may arrive out of order with): the kernel's page cache and the disk cache
        hold them, so a 256 MiB `cat` keeps the blocks ahead of it in memory, not the
        last 64 MiB it read."""
        behind = (offset - SEQUENTIAL_SLACK) // self.block_size  # blocks wholly passed
        for index in range(state.dropped_to, behind):
            self._memory.discard((ref.bucket, ref.key, ref.etag, index))
        state.dropped_to = max(state.dropped_to, behind)

    def prefetch(self, ref: ObjectRef, index: int, loader: Loader | None = None) -> None:
        """Fetch block `index` of `ref` in the background unless it is already here or coming."""
        bid = (ref.bucket, ref.key, ref.etag, index)
        if bid not in self._lru(ref) and not self._flight.busy(bid):
            self._background.spawn(self._prefetch, ref, index, loader, kind=READ_AHEAD)

    async def _prefetch(self, ref: ObjectRef, index: int, loader: Loader | None) -> None:
        try:
            await self.block(ref, index, loader, ahead=True)
        except S3FuseError as exc:  # the real read will retry and report
            log.debug("read-ahead of %s block %d failed: %s", ref.uri, index, exc)

    async def block(self, ref: ObjectRef, index: int, loader: Loader | None = None,
                    ahead: bool = False) -> Buffer:
        """Block `index` of `ref`; `ahead`: fetched before anyone reads it (read-ahead)."""
        bid = (ref.bucket, ref.key, ref.etag, index)
        data = self._lru(ref).get(bid)
        if data is not None:
            self.hits += 1
            return data
        return await self._flight.run(bid, self._load, ref, index, loader, ahead)

    async def _load(self, ref: ObjectRef, index: int, loader: Loader | None,
                    ahead: bool = False) -> Buffer:
        bid = (ref.bucket, ref.key, ref.etag, index)
        lru = self._lru(ref)
        small = lru is self._small
        data = await self._from_disk(ref, bid, ahead)
        self._loaded_from(ref, disk=data is not None)
        if data is None:
            self.misses += 1
            # a GET takes its write slot before it starts: blocks fetched and not yet
            # written are PENDING_WRITES at most, in flight included (a reader outrunning
            # the disk held its read-ahead in flight plus as many waiting for the disk).
            # A loader's takes it after: a loader reads its archive's blocks through here
            # and would wait for slots its own callers hold.
            if loader is None:
                pool = await self._take_write_slot(small, ahead)
            try:
                fetched = await self._fetch(ref, index, loader)
            except BaseException:
                if loader is None:
                    pool.release()
                raise
            if loader is not None:
                pool = await self._take_write_slot(small, ahead)
            slot: _Slot | None = self._written_later(bid, fetched, pool)
            data = fetched if small else memoryview(fetched)
        else:
            slot = None
            self.hits += 1
            if small:  # its own bytes, not a view of the buffer the file was read into
                data = bytes(data)
        lru.put(bid, data, ahead=ahead)
        if slot is not None:
            self._hold_in_memory(bid, slot)
        return data

    async def _from_disk(self, ref: ObjectRef, bid: tuple[str, str, str, int],
                         ahead: bool) -> Buffer | None:
        """Block `bid` from the disk cache, or None. A read-ahead waits until the disk has
        answered the block a reader waits for (a hit: ~10 ms for 8 MiB; a miss: a lookup):
        started together, the first read of a cached file shared the disk with three
        read-ahead blocks and came back after all four (~50 ms, not ~15), while the reader
        had nothing to read. A miss lets them go at once, so a cold read's GETs still start
        together."""
        obj = (ref.bucket, ref.key, ref.etag)
        if ahead:
            waiting = self._demand_on_disk.get(obj)
            if waiting is not None:
                with trio.move_on_after(DEMAND_FIRST_WAIT):
                    await waiting.wait()
            return await trio.to_thread.run_sync(self.blocks.get, *bid,
                                                 limiter=self._disk_limiter)
        asked = self._demand_on_disk.get(obj)
        if asked is None:
            asked = self._demand_on_disk[obj] = trio.Event()
        try:
            return await trio.to_thread.run_sync(self.blocks.get, *bid,
                                                 limiter=self._disk_limiter)
        finally:
            if self._demand_on_disk.get(obj) is asked:
                del self._demand_on_disk[obj]
            asked.set()

    async def _take_write_slot(self, small: bool, ahead: bool = False) -> trio.Semaphore:
        """A write slot for a block about to be fetched, and the pool it came from (a small
        object's: SMALL_PENDING_WRITES). For a big one, when none is free, blocks already
        read give theirs back first (evicted from memory, oldest first). For a read-ahead
        (`ahead`) only those older than the READ_KEPT_FOR_AHEAD most recently read:
        evicting any could take the block its reader is in the middle of, whose slot a
        pending cache write may still hold anyway (a cold 256 MiB read fetched 2 of its
        32 blocks twice); evicting none left the read-ahead of the next files of a
        directory (data/prefetch.py) waiting behind the files already read, one at a time."""
        if small:
            await self._small_write_slots.acquire()
            return self._small_write_slots
        keep = READ_KEPT_FOR_AHEAD if ahead else 0
        while not self._write_slots.value and self._memory.evict_read(keep):
            pass
        await self._write_slots.acquire()
        return self._write_slots

    def _written_later(self, bid: tuple[str, str, str, int], data: bytes,
                       pool: trio.Semaphore) -> _Slot:
        """Write `data` to the disk cache in the background; its slot until then."""
        slot = _Slot(pool)
        if not self._background.spawn(self._persist, bid, data, slot, kind=CACHE_WRITE):
            self._let_go(slot)
        return slot

    def _hold_in_memory(self, bid: tuple[str, str, str, int], slot: _Slot) -> None:
        """Let `slot` also wait for block `bid` to leave the big LRU. At most
        PENDING_WRITES - 1 slots wait so: a fetch always gets one in the end."""
        if (slot.holds and bid in self._memory
                and len(self._memory_slots) < PENDING_WRITES - 1):
            slot.holds += 1
            self._memory_slots[bid] = slot

    def _left_memory(self, bid: Hashable) -> None:
        slot = self._memory_slots.pop(bid, None)  # type: ignore[call-overload]
        if slot is not None:
            self._let_go(slot)

    def _let_go(self, slot: _Slot) -> None:
        slot.holds -= 1
        if not slot.holds:
            slot.pool.release()

    def _loaded_from(self, ref: ObjectRef, disk: bool) -> None:
        """Remember where the last block of `ref` loaded came from (read-ahead depth)."""
        key = (ref.bucket, ref.key, ref.etag)
        self._on_disk[key] = disk
        self._on_disk.move_to_end(key)
        if len(self._on_disk) > SOURCES_KEPT:
            self._on_disk.popitem(last=False)

    def coming(self, ref: ObjectRef) -> bool:
        """Is the first block of `ref` here or being fetched (no need to fetch it again)?"""
        bid = (ref.bucket, ref.key, ref.etag, 0)
        return bid in self._lru(ref) or self._flight.busy(bid)

    async def seed(self, ref: ObjectRef, data: bytes) -> None:
        """A whole small object fetched for another reason (a metadata lookup's GET,
        posixheads.py): cached as a read would have cached it."""
        bid = (ref.bucket, ref.key, ref.etag, 0)
        lru = self._lru(ref)
        if not ref.size or ref.size > self.block_size or len(data) != ref.size or bid in lru:
            return
        self.misses += 1
        small = lru is self._small
        slot = self._written_later(bid, data, await self._take_write_slot(small))
        lru.put(bid, bytes(data) if small else memoryview(data))
        self._hold_in_memory(bid, slot)

    async def _fetch(self, ref: ObjectRef, index: int, loader: Loader | None) -> bytes:
        start = index * self.block_size
        stop = min(start + self.block_size, ref.size)
        began = trio.current_time()
        if loader is not None:  # its own limiter: a loader may wait on S3 reads of its archive
            data = await trio.to_thread.run_sync(loader, start, stop, limiter=self._loader_limiter)
        else:
            # always a bounded range, whatever the entry (a manifest line) says the size
            # is; the last block asks one byte more: an object longer than its entry shows
            # (CorruptData below) instead of being served cut to the entry's size
            end = stop + 1 if stop == ref.size else stop
            data = await trio.to_thread.run_sync(
                self.store.get, ref.bucket, ref.key, ref.etag, start, end,
                limiter=self._s3_limiter)
        log.debug("fetched %s block %d (%d bytes) in %.1f ms", ref.uri, index, len(data),
                  (trio.current_time() - began) * 1000)
        if len(data) != stop - start:
            raise CorruptData(f"{ref.uri}: got {len(data)}{'+' if len(data) > stop - start else ''} "
                              f"bytes for block {index}, expected {stop - start} (the object "
                              "is not the size its entry says)")
        return data

    @property
    def disk_full(self) -> bool:
        """The last block could not be written, and the disk has not had room for one since:
        space freed by someone else ends the report at once, not at the next block read
        (which may never come while the data is read from memory or the page cache)."""
        if self._disk_full:
            try:
                self._disk_full = not self.blocks.has_room(2 * self.block_size)
            except OSError:  # the disk went: still nothing is being cached
                pass
            if not self._disk_full:
                self._disk_error_logged = False  # a later failure is news again
                log.info("the block cache's disk has room again: reads are cached")
        return self._disk_full

    async def _persist(self, bid: tuple[str, str, str, int], data: bytes, slot: _Slot) -> None:
        self._persisting += 1
        try:
            await trio.to_thread.run_sync(self.blocks.put, *bid, data, limiter=self._persist_limiter)
            self._disk_full = False
        except (OSError, sqlite3.Error) as exc:  # diskcache's SQLite: "database or disk is full"
            self._disk_full = True
            if not self._disk_error_logged:
                self._disk_error_logged = True
                log.warning("cannot write to the block cache (%s): serving reads uncached",
                            getattr(exc, "strerror", None) or exc)
        finally:
            self._let_go(slot)  # written (or not: disk full)
            self._persisting -= 1
            if not self._persisting:
                self._persisted.set()
                self._persisted = trio.Event()

    async def flush(self) -> None:
        """Wait until every fetched block is in the disk cache (before unmounting: what
        was read must stay readable offline)."""
        while self._persisting:
            await self._persisted.wait()

    async def is_cached(self, ref: ObjectRef) -> bool:
        """True when every block of `ref` is in the disk cache (readable offline)."""
        return await trio.to_thread.run_sync(self._on_disk_cache, ref, self.block_range(ref),
                                             limiter=self._disk_limiter)

    def _on_disk_cache(self, ref: ObjectRef, indexes: range) -> bool:
        return all(self.blocks.contains(ref.bucket, ref.key, ref.etag, i) for i in indexes)

    def in_memory(self, ref: ObjectRef, offset: int, size: int) -> bool:
        """Are the blocks under bytes [offset, offset+size) of `ref` in memory (a read of
        them needs neither S3 nor the disk)?"""
        return all((ref.bucket, ref.key, ref.etag, i) in self._lru(ref)
                   for i in self._blocks_under(offset, size))

    def on_disk(self, ref: ObjectRef, offset: int, size: int) -> bool:
        """Are the blocks under bytes [offset, offset+size) of `ref` in the disk cache?
        Blocking (SQLite): call it in a worker thread."""
        return self._on_disk_cache(ref, self._blocks_under(offset, size))

    def _blocks_under(self, offset: int, size: int) -> range:
        return range(offset // self.block_size, (offset + max(size, 1) - 1) // self.block_size + 1)

    async def pin(self, ref: ObjectRef, loader: Loader | None, keep: bool,
                  progress: Callable[[int], None]) -> None:
        """Move every block of `ref` into (keep) or out of the pinned store, fetching what
        is missing; `progress(n)` after each block. Blocks already pinned are skipped, so
        an interrupted pin resumes where it stopped."""
        for index in self.block_range(ref):
            bid = (ref.bucket, ref.key, ref.etag, index)
            length = min(self.block_size, ref.size - index * self.block_size)
            if not keep:
                await trio.to_thread.run_sync(self.blocks.unpin, *bid, limiter=self._disk_limiter)
            elif not await trio.to_thread.run_sync(self.blocks.pinned, *bid, limiter=self._disk_limiter):
                data = await self.block(ref, index, loader)
                await trio.to_thread.run_sync(self.blocks.pin, *bid, bytes(data), limiter=self._disk_limiter)
            progress(length)
