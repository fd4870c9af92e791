"""The archive source of shard reads: a member run keeps the other archive blocks in memory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from s3fuse.cache.blocks import BlockCache
from s3fuse.data.reader import BlockReader, ReadState
from s3fuse.errors import CorruptData
from s3fuse.model import ObjectRef
from s3fuse.tree.shards import ReaderSource
from s3fuse.tree.sources import SliceSource
from s3fuse.util.supervisor import Supervisor

MiB = 1 << 20


class CountingBlocks(BlockCache):
    """The block cache, counting the blocks read back from disk (by index)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, 256 * MiB)
        self.loads: list[int] = []

    def get(self, bucket: str, key: str, etag: str, index: int):  # type: ignore[no-untyped-def]
        self.loads.append(index)
        return super().get(bucket, key, etag, index)


class Store:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gets: list[tuple[int, int]] = []

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        stop = len(self.data) if end is None else min(end, len(self.data))
        self.gets.append((start, stop))
        return self.data[start:stop]


def setup(tmp_path: Path, blocks: int) -> tuple[BlockReader, CountingBlocks, Store, ObjectRef]:
    data = os.urandom(blocks * MiB)
    cache = CountingBlocks(tmp_path / "blocks")
    store = Store(data)
    reader = BlockReader(store, cache, block_size=MiB, memory_bytes=8 * MiB,  # type: ignore[arg-type]
                         background=Supervisor())
    return reader, cache, store, ObjectRef("b", "archive.tar.gz", "e1", len(data))


async def test_a_run_in_mid_archive_keeps_the_blocks_before_it_in_memory(tmp_path: Path):
    reader, cache, store, ref = setup(tmp_path, 8)
    await reader.block(ref, 0)
    await reader.block(ref, 1)

    def member_run() -> bytes:  # one member inflated from a seek point at 6 MiB
        source = ReaderSource(reader, ref)
        return b"".join(source.read(6 * MiB + i * (256 << 10), 256 << 10) for i in range(4))
    got = await trio.to_thread.run_sync(member_run)
    assert got == store.data[6 * MiB:7 * MiB]
    cache.loads.clear()
    await reader.block(ref, 0)  # still in memory: neither the disk cache nor S3 asked
    await reader.block(ref, 1)
    assert cache.loads == []


async def test_what_is_cached_under_a_byte_range(tmp_path: Path):
    reader, cache, store, ref = setup(tmp_path, 4)
    await reader.block(ref, 1)
    assert reader.in_memory(ref, MiB, MiB) and reader.in_memory(ref, MiB + 5, 0)
    assert not reader.in_memory(ref, MiB, MiB + 1) and not reader.in_memory(ref, MiB - 1, 2)
    cache.put(ref.bucket, ref.key, ref.etag, 1, store.data[MiB:2 * MiB])  # on disk
    assert await trio.to_thread.run_sync(reader.on_disk, ref, MiB + 10, 100)
    assert not await trio.to_thread.run_sync(reader.on_disk, ref, 0, MiB + 1)


async def test_a_read_after_a_seek_takes_only_its_range_of_a_block_on_disk(tmp_path: Path):
    reader, cache, store, ref = setup(tmp_path, 8)
    cache.put(ref.bucket, ref.key, ref.etag, 6, store.data[6 * MiB:7 * MiB])  # on disk only
    state = ReadState()
    got = await reader.read(ref, 6 * MiB + 1000, 5000, state)
    assert got == store.data[6 * MiB + 1000:6 * MiB + 6000]
    assert cache.loads == [] and store.gets == []  # neither the whole block nor S3
    assert await reader.read(ref, 6 * MiB + 6000, 100, state) == store.data[6 * MiB + 6000:6 * MiB + 6100]
    assert cache.loads == []
    got = await reader.read(ref, 0, 100, ReadState())  # a run from the start: whole blocks
    assert got == store.data[:100] and store.gets == [(0, MiB)]


async def test_a_slice_cut_by_the_archive_end_is_eio_never_short(tmp_path: Path):
    """A plain tar's member read from the archive's blocks, where an index (stored before
    cut members were dropped) places its end past the archive's: EIO, not fewer bytes."""
    reader, cache, store, archive = setup(tmp_path, 2)
    member = ObjectRef("b", "archive.tar.gz#m.bin", "e1", 400_000)

    def never(start: int, stop: int) -> bytes:
        raise AssertionError("the member's bytes come from the archive's blocks")
    source = SliceSource(reader, member, never, archive, 2 * MiB - 300_000)
    assert await source.read(0, 1000) == store.data[2 * MiB - 300_000:2 * MiB - 299_000]
    with pytest.raises(CorruptData, match="ends inside member"):
        await source.read(0, 400_000)
    with pytest.raises(CorruptData):
        await source.read(350_000, 1000)
    assert await source.read(400_000, 10) == b""
