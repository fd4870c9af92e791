"""Cache writes slower than S3 do not pile up in memory (issue 13).

Every block fetched from S3 is written to the disk cache in the background. When the
disk was slower than S3, each one waited in memory for its turn: a 320 MiB sequential
read through a disk writing 80 MB/s held ~300 MiB of blocks. Reads now wait for the
disk once PENDING_WRITES blocks are waiting (backpressure), so memory stays bounded
and every block read is still written (what was read stays readable offline).
"""
from __future__ import annotations

import time
import tracemalloc

import trio

from s3fuse.data.reader import BLOCK_SIZE, MEMORY_BYTES, PENDING_WRITES, BlockReader, ReadState
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
