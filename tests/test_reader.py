"""The read path: whole small objects, blocks, read-ahead, versions, proxies."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from s3fuse.cache.blocks import BlockCache
from s3fuse.data.reader import DISK_OPEN_AHEAD_BLOCKS, BlockReader, ReadState
from s3fuse.model import ObjectRef
from s3fuse.errors import StaleObject
from s3fuse.idle import Idle
from s3fuse.store.link import Link
from s3fuse.store.s3 import proxy_for
from s3fuse.util.supervisor import Supervisor

MiB = 1 << 20


class FakeStore:
    """Serves one object from memory and records every GET range."""

    def __init__(self, data: bytes, etag: str = "e1"):
        self.data = data
        self.etag = etag
        self.calls: list[tuple[int, int | None]] = []

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        if etag != self.etag:
            raise StaleObject(key)
        self.calls.append((start, end))
        return self.data[start:end if end is not None else len(self.data)]


def make_reader(tmp_path: Path, store: object, background: Supervisor | None = None,
                **kw: int) -> BlockReader:
    return BlockReader(store, BlockCache(tmp_path / "blocks", 256 * MiB), block_size=MiB,  # type: ignore[arg-type]
                       background=background, **kw)


async def test_small_object_is_one_whole_get(tmp_path: Path):
    store = FakeStore(b"x" * 1000)
    reader = make_reader(tmp_path, store)
    ref = ObjectRef("b", "k", "e1", 1000)
    assert await reader.read(ref, 0, 4096) == b"x" * 1000
    assert await reader.read(ref, 500, 10) == b"x" * 10
    assert store.calls == [(0, 1001)]  # one GET, bounded: one byte past the entry's size


async def test_random_reads_fetch_only_their_blocks(tmp_path: Path):
    data = os.urandom(10 * MiB)
    store = FakeStore(data)
    reader = make_reader(tmp_path, store)
    ref = ObjectRef("b", "k", "e1", len(data))
    state = ReadState(next_offset=-1)
    assert await reader.read(ref, 7 * MiB + 5, 100, state) == data[7 * MiB + 5:7 * MiB + 105]
    assert await reader.read(ref, 2 * MiB - 10, 20, state) == data[2 * MiB - 10:2 * MiB + 10]
    assert sorted(store.calls) == [(MiB, 2 * MiB), (2 * MiB, 3 * MiB), (7 * MiB, 8 * MiB)]


async def test_sequential_reads_prefetch_ahead_and_survive_restart(tmp_path: Path):
    data = os.urandom(6 * MiB)
    store = FakeStore(data)
    ref = ObjectRef("b", "k", "e1", len(data))
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        reader = make_reader(tmp_path, store, background, readahead=3)
        state = ReadState()
        assert await reader.read(ref, 0, 128 * 1024, state) == data[:128 * 1024]
        assert (await Idle(background, None, Link()).wait(10))["idle"]  # read-ahead done
        assert len(store.calls) == 4            # block 0 plus three ahead, in parallel
        out = b"".join([await reader.read(ref, off, 128 * 1024, state)
                        for off in range(128 * 1024, len(data), 128 * 1024)])
        assert data[:128 * 1024] + out == data
    fetched = len(store.calls)
    reader.blocks.close()
    again = make_reader(tmp_path, store)        # a new daemon: served from the disk cache
    assert await again.read(ref, 0, len(data)) == data
    assert len(store.calls) == fetched


def disk_cached(tmp_path: Path, blocks: int) -> tuple[bytes, ObjectRef, BlockCache]:
    """An object of `blocks` MiB blocks, all in a new disk cache."""
    data = os.urandom(blocks * MiB)
    cache = BlockCache(tmp_path / "blocks", 256 * MiB)
    for index in range(blocks):
        cache.put("b", "k", "e1", index, data[index * MiB:(index + 1) * MiB])
    return data, ObjectRef("b", "k", "e1", len(data)), cache


async def test_read_ahead_from_the_disk_cache_is_two_blocks_deep(tmp_path: Path):
    """A reader whose blocks come from the disk cache reads 2 blocks ahead, not 3 (each
    block ahead is 8 MiB of RSS, and the disk answers in milliseconds); until the first
    block says where they come from, the window is the usual one."""
    data, ref, cache = disk_cached(tmp_path, 8)
    store = FakeStore(data)
    loaded: list[int] = []
    get = cache.get

    def recording_get(bucket: str, key: str, etag: str, index: int) -> memoryview | None:
        loaded.append(index)
        return get(bucket, key, etag, index)

    cache.get = recording_get  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        reader = BlockReader(store, cache, block_size=MiB, readahead=3,  # type: ignore[arg-type]
                             background=background)
        state = ReadState()
        idle = Idle(background, None, Link())
        for block, expected in ((0, [0, 1, 2, 3]), (1, [0, 1, 2, 3]), (2, [0, 1, 2, 3, 4])):
            assert await reader.read(ref, block * MiB, 128 * 1024, state) == \
                data[block * MiB:block * MiB + 128 * 1024]
            await trio.testing.wait_all_tasks_blocked()  # the read-ahead spawned has started
            assert (await idle.wait(10))["idle"]
            assert sorted(loaded) == expected
    assert store.calls == []


async def test_the_block_a_reader_waits_for_comes_off_the_disk_before_the_read_ahead(
        tmp_path: Path):
    """The first read of a cached file: its block is read from the disk cache alone, and
    the blocks read ahead start once it is back (together they share the disk, and the
    reader waited for all four); from S3, the read-ahead goes at once (a disk miss)."""
    import threading
    data, ref, cache = disk_cached(tmp_path, 6)
    events: list[str] = []
    lock = threading.Lock()
    get = cache.get

    def recording_get(bucket: str, key: str, etag: str, index: int) -> memoryview | None:
        with lock:
            events.append(f"start {index}")
        found = get(bucket, key, etag, index)
        with lock:
            events.append(f"end {index}")
        return found

    cache.get = recording_get  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        reader = BlockReader(FakeStore(data), cache, block_size=MiB,  # type: ignore[arg-type]
                             readahead=3, background=background)
        assert await reader.read(ref, 0, 4096, ReadState()) == data[:4096]
        assert (await Idle(background, None, Link()).wait(10))["idle"]
    assert events[:2] == ["start 0", "end 0"]
    assert sorted(events[2:]) == sorted(f"{e} {i}" for e in ("start", "end") for i in (1, 2, 3))

    cold = FakeStore(os.urandom(6 * MiB))  # not cached: the GETs start together
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        reader = BlockReader(cold, BlockCache(tmp_path / "cold", 256 * MiB),  # type: ignore[arg-type]
                             block_size=MiB, readahead=3, background=background)
        slow_get = cold.get

        def blocked_block_zero(bucket: str, key: str, etag: str, start: int = 0,
                               end: int | None = None) -> bytes:
            if start == 0:
                trio.from_thread.run(gate.wait)
            return slow_get(bucket, key, etag, start, end)
        cold.get = blocked_block_zero  # type: ignore[method-assign]
        nursery.start_soon(reader.read, ObjectRef("b", "c", "e1", 6 * MiB), 0, 4096, ReadState())
        with trio.fail_after(5):
            while len(cold.calls) < 3:  # blocks 1-3 fetched while block 0 is still out
                await trio.sleep(0.01)
        gate.set()


async def test_blocks_further_ahead_in_the_disk_cache_are_opened_not_read(tmp_path: Path):
    """Beyond the two blocks read ahead from the disk cache, the next ones up to
    DISK_OPEN_AHEAD_BLOCKS are looked up and opened (disk round trips, no memory), each once."""
    data, ref, cache = disk_cached(tmp_path, 16)
    opened: list[int] = []
    open_ahead = cache.open_ahead
    cache.open_ahead = lambda b, k, e, i: opened.append(i) or open_ahead(b, k, e, i)  # type: ignore
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        reader = BlockReader(FakeStore(data), cache, block_size=MiB,  # type: ignore[arg-type]
                             readahead=3, background=background)
        state, idle = ReadState(), Idle(background, None, Link())
        out = b""
        for offset in range(0, len(data), 256 * 1024):
            out += bytes(await reader.read(ref, offset, 256 * 1024, state))
            if offset == MiB:  # block 0 came from the disk: after the 3 blocks read ahead
                # before that was known, the next ones up to 8 past the block read are opened
                await trio.testing.wait_all_tasks_blocked()
                assert (await idle.wait(10))["idle"]
                assert sorted(opened) == list(range(4, 1 + DISK_OPEN_AHEAD_BLOCKS + 1))
        assert out == data
    assert sorted(opened) == list(range(4, 16))  # each once, never one read ahead
    assert cache._opened == {}  # every file opened ahead was read


def test_a_block_read_while_it_is_opened_ahead_is_not_kept_open(tmp_path: Path):
    """A `get` between open_ahead's lookup and its keeping the file reads the block on its
    own: the file opened ahead is closed, not kept to be pushed out unread (once in CI)."""
    data, _, cache = disk_cached(tmp_path, 2)
    store = cache._lru
    lookup, opened = store.lookup, []

    def get_meanwhile(name: str):  # type: ignore[no-untyped-def]
        found = lookup(name)
        if found is not None and not opened:
            opened.append(found[2])
            assert bytes(cache.get("b", "k", "e1", 1)) == data[MiB:]
        return found

    store.lookup = get_meanwhile  # type: ignore[method-assign]
    cache.open_ahead("b", "k", "e1", 1)
    assert opened and opened[0].closed and cache._opened == {}
    store.lookup = lookup  # type: ignore[method-assign]
    cache.open_ahead("b", "k", "e1", 0)  # no get meanwhile: kept for the get to come
    assert list(cache._opened) and bytes(cache.get("b", "k", "e1", 0)) == data[:MiB]
    assert cache._opened == {}


async def test_changed_etag_is_estale_never_mixed(tmp_path: Path):
    data = os.urandom(3 * MiB)
    store = FakeStore(data)
    reader = make_reader(tmp_path, store)
    ref = ObjectRef("b", "k", "e1", len(data))
    assert await reader.read(ref, 0, 10) == data[:10]
    store.etag = "e2"
    with pytest.raises(StaleObject):
        await reader.read(ref, 2 * MiB, 10)


def test_proxy_selection_follows_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert proxy_for("https://s3.amazonaws.com") == "http://proxy:3128"
    assert proxy_for("https://internal.example:9000") is None
    assert proxy_for("http://plain:9000") is None
