"""Cache writes slower than S3 do not pile up in memory (issue 13).

Every block fetched from S3 is written to the disk cache in the background. When the
disk was slower than S3, each one waited in memory for its turn: a 320 MiB sequential
read through a disk writing 80 MB/s held ~300 MiB of blocks. Reads now wait for the
disk once PENDING_WRITES blocks are waiting (backpressure), so memory stays bounded
and every block read is still written (what was read stays readable offline).
"""
from __future__ import annotations

import time
import weakref
import tracemalloc

import trio

from s3fuse.data.reader import (BLOCK_SIZE, MEMORY_BYTES, PENDING_WRITES, SMALL_PENDING_WRITES,
                                 BlockReader, ReadState)
from s3fuse.model import ObjectRef
from s3fuse.store.memory import MemoryStore
from s3fuse.util.supervisor import Supervisor

MiB = 1 << 20
SIZE = 320 * MiB


class SlowDisk:
    """A block cache on a disk writing one 8 MiB block in 0.1 s."""

    def __init__(self) -> None:
        self.written: set[int] = set()

    def get(self, bucket: str, key: str, etag: str, index: int) -> None:
        return None

    def put(self, bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        time.sleep(0.1)
        self.written.add(index)


async def test_a_slow_disk_slows_reads_instead_of_filling_memory():
    store = MemoryStore()
    store.create_bucket("b")
    store.put_object("b", "k", b"x" * SIZE)
    ref = ObjectRef("b", "k", store.head("b", "k").etag, SIZE)
    disk = SlowDisk()
    background = Supervisor()
    reader = BlockReader(store, disk, background=background)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            background.bind(nursery)
            state, offset = ReadState(), 0
            while offset < SIZE:
                offset += len(await reader.read(ref, offset, MiB, state))
            await reader.flush()
            nursery.cancel_scope.cancel()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = MEMORY_BYTES + (PENDING_WRITES + 4) * BLOCK_SIZE  # + blocks in flight from S3
    assert peak < bound, f"{peak / MiB:.0f} MiB held reading {SIZE // MiB} MiB"
    assert disk.written == set(range(SIZE // BLOCK_SIZE))  # every block read is cached


class Block(bytearray):
    """A fetched block that can be watched (weak references) until its last view goes."""


class WatchedStore(MemoryStore):
    """Hands out every GET body as a Block and records how many are alive at each GET."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = 0
        self.most_alive = 0

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None
            ) -> bytes:
        body = Block(super().get(bucket, key, etag, start, end))
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(body, self._gone)
        return body  # type: ignore[return-value]

    def _gone(self) -> None:
        self.alive -= 1


def kernel_order(size: int, chunk: int) -> list[int]:
    """Offsets in the order the kernel's concurrent read-ahead may deliver them: pairs
    swapped, and now and then one read arriving a few chunks early."""
    offsets = list(range(0, size, chunk))
    for i in range(0, len(offsets) - 1, 2):
        offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
    for i in range(5, len(offsets) - 3, 11):
        offsets.insert(i, offsets.pop(i + 3))
    return offsets


async def test_blocks_in_memory_in_flight_and_unwritten_are_pending_writes_at_most():
    """A block kept in memory holds its write slot until it leaves, so the blocks read
    ahead, those left behind but not yet written and those being fetched are
    PENDING_WRITES at most together (a cold 256 MiB read peaked one block above that in
    1 run of 8). Blocks already read give their slot back when a fetch needs one."""
    store, block = WatchedStore(), MiB
    size = 48 * block
    store.create_bucket("b")
    store.put_object("b", "k", bytes(range(256)) * (size // 256))
    ref = ObjectRef("b", "k", store.head("b", "k").etag, size)
    disk = SlowDisk()
    disk_put = disk.put
    disk.put = lambda *args: (time.sleep(0.01), disk_put(*args))  # type: ignore[method-assign]
    background = Supervisor()
    reader = BlockReader(store, disk, block_size=block, memory_bytes=4 * block,  # type: ignore[arg-type]
                         background=background)
    async with trio.open_nursery() as nursery:
        background.bind(nursery)
        state, out = ReadState(), {}
        for offset in kernel_order(size, block // 4):
            out[offset] = bytes(await reader.read(ref, offset, block // 4, state))
        await reader.flush()
        nursery.cancel_scope.cancel()
    assert b"".join(out[o] for o in sorted(out)) == bytes(range(256)) * (size // 256)
    assert store.most_alive <= PENDING_WRITES, store.most_alive
    assert disk.written == set(range(size // block))
    # a second object read after the first finds slots: the first one's blocks give theirs
    assert reader._write_slots.value + len(reader._memory_slots) == PENDING_WRITES


class CountingStore(MemoryStore):
    """Counts the GETs of each byte range, each taking a few milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: dict[int, int] = {}

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None
            ) -> bytes:
        self.gets[start] = self.gets.get(start, 0) + 1
        time.sleep(0.005)
        return super().get(bucket, key, etag, start, end)


class StallingDisk(SlowDisk):
    """A disk that takes its time with the first blocks written (a cold cache directory:
    new directories, the SQLite file), then keeps up."""

    def put(self, bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        time.sleep(0.3 if len(self.written) < 3 else 0.01)
        self.written.add(index)


async def test_read_ahead_waiting_for_the_disk_never_takes_the_block_being_read():
    """With every write slot held by blocks waiting for the disk, a read-ahead waits for one
    instead of evicting the block its reader is in the middle of: each block is fetched
    once (a cold 256 MiB `cat` fetched 2 of its 32 blocks twice)."""
    size = 12 * BLOCK_SIZE
    store = CountingStore()
    store.create_bucket("b")
    store.put_object("b", "k", bytes(size))
    ref = ObjectRef("b", "k", store.head("b", "k").etag, size)
    disk = StallingDisk()
    background = Supervisor()
    reader = BlockReader(store, disk, background=background)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        background.bind(nursery)
        state, offset = ReadState(), 0
        while offset < size:
            offset += len(await reader.read(ref, offset, MiB, state))
            await trio.sleep(0)  # the next FUSE request comes after the read-ahead has run
        await reader.flush()
        nursery.cancel_scope.cancel()
    assert store.gets == {index * BLOCK_SIZE: 1 for index in range(size // BLOCK_SIZE)}
    assert disk.written == set(range(size // BLOCK_SIZE))


class PendingCounter(MemoryStore):
    """Counts blocks fetched (or being fetched) and not yet written by `disk`."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0
        self.most_pending = 0

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None
            ) -> bytes:
        self.pending += 1
        self.most_pending = max(self.most_pending, self.pending)
        time.sleep(0.002)
        return super().get(bucket, key, etag, start, end)


async def test_small_objects_have_write_slots_of_their_own():
    """Many small objects read at once (DataLoader workers, `cat dir/*` with its sibling
    prefetch) do not queue behind each other's cache writes in the 5 slots sized for
    8 MiB blocks: they have SMALL_PENDING_WRITES of their own, still a bound."""
    store, count = PendingCounter(), 3 * SMALL_PENDING_WRITES
    store.create_bucket("b")
    for i in range(count):
        store.put_object("b", f"k{i}", bytes([i]) * 4096)
    refs = [ObjectRef("b", f"k{i}", store.head("b", f"k{i}").etag, 4096) for i in range(count)]
    disk = SlowDisk()

    def slow_put(bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        time.sleep(0.01)
        disk.written.add(int(key[1:]))
        store.pending -= 1
    disk.put = slow_put  # type: ignore[method-assign]
    background = Supervisor()
    reader = BlockReader(store, disk, background=background)  # type: ignore[arg-type]
    got: dict[int, bytes] = {}

    async def read(i: int) -> None:
        got[i] = bytes(await reader.read(refs[i], 0, 4096))
    async with trio.open_nursery() as nursery:
        background.bind(nursery)
        async with trio.open_nursery() as readers:
            for i in range(count):
                readers.start_soon(read, i)
        await reader.flush()
        nursery.cancel_scope.cancel()
    assert got == {i: bytes([i]) * 4096 for i in range(count)}
    assert disk.written == set(range(count))
    assert PENDING_WRITES < store.most_pending <= SMALL_PENDING_WRITES, store.most_pending
