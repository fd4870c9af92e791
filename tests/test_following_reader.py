"""FollowingReader (tree/bucket/localsource.py): a read handle that switches to the newest
version once this mount writes its file, without closing a source under a read in flight."""
from __future__ import annotations

from typing import Any, Callable

import trio

from s3fuse.errors import NotFound
from s3fuse.tree.bucket.localsource import FollowingReader


class Source:
    """A version's bytes; reads wait for `release` when `hold` is set."""

    def __init__(self, data: bytes, hold: bool = False):
        self.data = data
        self.size = len(data)
        self.version = data.decode()
        self.closed = False
        self.hold = trio.Event() if hold else None

    async def read(self, offset: int, size: int) -> bytes:
        if self.hold is not None:
            await self.hold.wait()
        assert not self.closed, "read on a closed source"
        return self.data[offset:offset + size]

    async def close(self) -> None:
        self.closed = True


class Followers:
    """What FollowingReader needs of the write-back layer."""

    def __init__(self) -> None:
        self.following: set[Any] = set()

    def follow(self, follower: Any) -> None:
        self.following.add(follower)

    def unfollow(self, follower: Any) -> None:
        self.following.discard(follower)


def reader(first: Source, reopen: Callable[[str], Any]) -> tuple[FollowingReader, Followers]:
    writes = Followers()
    return FollowingReader(first, writes, "b", "k", reopen), writes  # type: ignore[arg-type]


async def test_a_stale_reader_reads_the_newest_version_and_closes_the_old_one():
    old, new = Source(b"v1"), Source(b"v1+more")

    async def reopen(key: str) -> Source:
        assert key == "k"
        return new

    handle, writes = reader(old, reopen)
    assert writes.following == {handle} and await handle.read(0, 10) == b"v1"
    handle.stale = True
    assert await handle.read(0, 10) == b"v1+more"
    assert old.closed and handle.size == 7 and handle.version == "v1+more"
    await handle.close()
    assert new.closed and not writes.following


async def test_a_read_in_flight_keeps_its_source_open_until_it_ends():
    old, new = Source(b"old", hold=True), Source(b"new")

    async def reopen(key: str) -> Source:
        return new

    handle, _ = reader(old, reopen)
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _read_into(handle, results))
        await trio.sleep(0.01)                  # the first read waits inside the old source
        handle.stale = True
        assert await handle.read(0, 10) == b"new"
        assert not old.closed                   # still read by the first
        assert old.hold is not None
        old.hold.set()
    assert results == [b"old"] and old.closed
    await handle.close()


async def test_a_file_gone_meanwhile_keeps_the_version_read():
    old = Source(b"kept")

    async def reopen(key: str) -> Source:
        raise NotFound(key)

    handle, writes = reader(old, reopen)
    handle.stale = True
    assert await handle.read(0, 10) == b"kept"
    assert not old.closed and not writes.following
    await handle.close()
    assert old.closed


async def _read_into(handle: FollowingReader, results: list[bytes]) -> None:
    results.append(await handle.read(0, 10))
