"""Small objects in memory: their own bounded LRU, which a big sequential read never
empties, keyed by version; and the disk cache's buffered read of a small block."""
from __future__ import annotations

import os
from pathlib import Path

from s3fuse.cache.blocks import BlockCache
from s3fuse.data.reader import SMALL_ENTRY_OVERHEAD, BlockReader, ReadState
from s3fuse.errors import StaleObject
from s3fuse.model import ObjectRef
from s3fuse.util.lru import ByteLRU

MiB = 1 << 20
SMALL = 4096


class Objects:
    """Serves many objects from memory and counts every GET."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[str, bytes]] = {}  # key -> (etag, bytes)
        self.gets = 0

    def put(self, key: str, etag: str, data: bytes) -> ObjectRef:
        self.objects[key] = (etag, data)
        return ObjectRef("b", key, etag, len(data))

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        current, data = self.objects[key]
        if etag != current:
            raise StaleObject(key)
        self.gets += 1
        return data[start:end]


class CountingCache(BlockCache):
    """A disk block cache that counts its reads."""

    reads = 0

    def get(self, bucket: str, key: str, etag: str, index: int) -> memoryview | None:
        self.reads += 1
        return super().get(bucket, key, etag, index)


def reader_for(tmp_path: Path, store: Objects, **kw: int) -> tuple[BlockReader, CountingCache]:
    cache = CountingCache(tmp_path / "blocks", 256 * MiB)
    return BlockReader(store, cache, block_size=MiB, memory_bytes=2 * MiB, **kw), cache  # type: ignore[arg-type]


def test_the_per_entry_overhead_counts_against_the_cap() -> None:
    lru = ByteLRU(10_000, overhead=1000)
    for i in range(4):
        lru.put(i, b"x" * 2000)  # 3,000 each: three fit
    assert len(lru) == 3 and lru.size == 9000
    assert 0 not in lru and lru.get(3) == b"x" * 2000
    lru.discard(3)
    assert lru.size == 6000


async def test_small_files_stay_in_memory_through_a_big_sequential_read(tmp_path: Path) -> None:
    store = Objects()
    small = [store.put(f"f{i}", "e1", os.urandom(SMALL)) for i in range(100)]
    big = store.put("big", "e1", os.urandom(10 * MiB))
    reader, cache = reader_for(tmp_path, store)
    for ref in small:
        await reader.read(ref, 0, 128 << 10)
    state = ReadState()
    for offset in range(0, big.size, 128 << 10):  # passes 5x the big blocks' memory
        await reader.read(big, offset, 128 << 10, state)
    gets, reads = store.gets, cache.reads
    for i, ref in enumerate(small):
        assert await reader.read(ref, 0, 128 << 10) == store.objects[f"f{i}"][1]
    assert (store.gets, cache.reads) == (gets, reads)  # every one from memory
    assert await reader.read(big, 0, 10) == store.objects["big"][1][:10]
    assert cache.reads == reads + 1  # the big object's first block had left memory


async def test_the_small_cache_is_bounded_and_least_recently_used_goes(tmp_path: Path) -> None:
    store = Objects()
    small = [store.put(f"f{i}", "e1", os.urandom(SMALL)) for i in range(40)]
    reader, cache = reader_for(tmp_path, store, small_memory_bytes=20 * (SMALL + SMALL_ENTRY_OVERHEAD))
    for ref in small:
        await reader.read(ref, 0, SMALL)
    reads = cache.reads
    assert await reader.read(small[-1], 0, SMALL) == store.objects["f39"][1]
    assert cache.reads == reads  # among the last 20: in memory
    assert await reader.read(small[0], 0, SMALL) == store.objects["f0"][1]
    assert cache.reads == reads + 1  # evicted: loaded again


async def test_a_new_version_of_a_small_file_never_serves_the_old_bytes(tmp_path: Path) -> None:
    store = Objects()
    old = store.put("f", "e1", b"old bytes")
    reader, _ = reader_for(tmp_path, store)
    assert await reader.read(old, 0, SMALL) == b"old bytes"
    new = store.put("f", "e2", b"new bytes, longer")
    assert await reader.read(new, 0, SMALL) == b"new bytes, longer"
    assert await reader.read(old, 0, SMALL) == b"old bytes"  # the old version's own block
    gets = store.gets
    newest = store.put("f", "e3", b"newest")
    assert await reader.read(newest, 0, SMALL) == b"newest"
    assert store.gets == gets + 1  # a version not seen yet: fetched, whatever memory holds


async def test_a_seeded_small_object_is_served_from_the_small_cache(tmp_path: Path) -> None:
    store = Objects()
    ref = store.put("f", "e1", b"seeded")
    reader, cache = reader_for(tmp_path, store)
    await reader.seed(ref, b"seeded")
    assert reader.coming(ref)
    assert await reader.read(ref, 0, SMALL) == b"seeded"
    assert (store.gets, cache.reads) == (0, 0)


def test_a_small_block_file_longer_than_its_index_says_is_a_miss(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path / "blocks", 64 << 20)
    data = os.urandom(SMALL)
    cache.put("b", "k", "e", 0, data)
    assert cache.get("b", "k", "e", 0) == data
    (path,) = (tmp_path / "blocks").rglob("*.val")
    path.write_bytes(path.read_bytes() + b"x")  # read in one pread of its size + 1
    assert cache.get("b", "k", "e", 0) is None  # detected, dropped
    assert not cache.contains("b", "k", "e", 0)
    cache.close()


def test_the_lru_tells_every_entry_that_leaves_and_evicts_read_ones_on_request():
    left: list[str] = []
    lru = ByteLRU(30, on_leave=left.append)
    lru.put("a", b"x" * 10)
    lru.put("b", b"x" * 10, ahead=True)
    lru.put("c", b"x" * 10)
    lru.put("a", b"y" * 10)          # replaced: the old value left
    lru.put("big", b"x" * 31)        # too big to keep: left at once
    lru.put("d", b"x" * 10)          # over the cap: the oldest read entry goes
    assert left == ["a", "big", "c"]
    lru.discard("a")
    assert left[-1] == "a"
    assert lru.evict_read() and left[-1] == "d"
    assert not lru.evict_read()      # only "b" is left, fetched ahead and never read
    assert "b" in lru and len(lru) == 1


def test_evicting_for_a_read_ahead_keeps_the_blocks_read_last():
    """A read-ahead's write slot may come from blocks already read, never from the
    `keep` read last (the one a reader is in, and the one before it)."""
    left: list[str] = []
    lru = ByteLRU(100, on_leave=left.append)
    for key in "abcd":
        lru.put(key, b"x" * 10)
        lru.get(key)
    lru.put("e", b"x" * 10, ahead=True)
    assert lru.evict_read(keep=2) and lru.evict_read(keep=2)
    assert not lru.evict_read(keep=2)
    assert left == ["a", "b"] and "c" in lru and "d" in lru and "e" in lru
