"""The FUSE adapter, the bucket namespace and the write-back engine end to end over the
in-memory store: S3Operations called directly on the components `daemon.build` wires,
with injected faults and no moto (fast)."""
from __future__ import annotations

import errno
import os
from contextlib import ExitStack
from pathlib import Path
from typing import AsyncIterator

import pyfuse3
import pytest
import trio

from s3fuse.config import Config, parse_source
from s3fuse.daemon import Components, build
from s3fuse.fs.inodes import ROOT_INODE
from s3fuse.store.liveness import probe_while_offline
from s3fuse.store.memory import MemoryStore
from s3fuse.upload.conditions import PROBE_PUTS
from tests.test_ops import lookup_path

B = "bkt"


class Names:
    """A readdir token: collects the names the adapter replies."""

    def __init__(self) -> None:
        self.names: list[str] = []


@pytest.fixture(autouse=True)
def readdir_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    def reply(token: Names, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if name not in (b".", b".."):
            token.names.append(os.fsdecode(name))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    for key, data in {"a.txt": b"alpha", "d/b.txt": b"bravo", "d/e/f": b"deep"}.items():
        memory.put_object(B, key, data)
    return memory


async def running(tmp_path: Path, store: MemoryStore, ttl: float = 60,
                  source: str = f"s3://{B}", posix_metadata: bool = True
                  ) -> AsyncIterator[Components]:
    cfg = Config(mountpoint=tmp_path / "mnt", sources=(parse_source(source, B),),
                 cache_dir=tmp_path / "cache", region="us-east-1", metadata_ttl=ttl,
                 posix_metadata=posix_metadata)
    with ExitStack() as stack:
        parts = build(cfg, stack, store=store)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            parts.supervisor.bind(nursery)
            await parts.writes.start()
            nursery.start_soon(probe_while_offline, store, 0.02)
            yield parts
            await parts.writes.queue.stop()
            nursery.cancel_scope.cancel()


@pytest.fixture
async def parts(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Components]:
    async for components in running(tmp_path, store):
        yield components


async def listdir(parts: Components, *path: str) -> list[str]:
    ino = (await lookup_path(parts.ops, *path)).st_ino if path else ROOT_INODE
    fh = await parts.ops.opendir(ino, None)
    token = Names()
    await parts.ops.readdir(fh, 0, token)
    await parts.ops.releasedir(fh)
    return [n for n in token.names if n not in (".", "..")]


async def write_file(parts: Components, name: str, data: bytes, *dirs: str) -> int:
    """create + write + flush + release, as `cp` does; returns the inode."""
    parent = (await lookup_path(parts.ops, B, *dirs)).st_ino
    info, attrs = await parts.ops.create(parent, name.encode(), 0o644, os.O_WRONLY, None)
    assert await parts.ops.write(info.fh, 0, data) == len(data)
    await parts.ops.flush(info.fh)
    await parts.ops.release(info.fh)
    return attrs.st_ino


async def read_file(parts: Components, *path: str) -> bytes:
    attrs = await lookup_path(parts.ops, *path)
    info = await parts.ops.open(attrs.st_ino, os.O_RDONLY, None)
    try:
        return bytes(await parts.ops.read(info.fh, 0, 1 << 20))
    finally:
        await parts.ops.release(info.fh)


async def settled(parts: Components) -> None:
    """Wait until background tasks (listings fetched ahead of the walk) have landed."""
    with trio.fail_after(10):
        while parts.supervisor.in_flight():
            await parts.supervisor.changed().wait()


async def test_lookup_getattr_readdir_read(parts: Components, store: MemoryStore) -> None:
    assert await listdir(parts) == [B]
    assert await listdir(parts, B) == ["a.txt", "d"]
    assert sorted(await listdir(parts, B, "d")) == ["b.txt", "e"]
    attrs = await lookup_path(parts.ops, B, "d", "b.txt")
    assert attrs.st_size == 5 and (await parts.ops.getattr(attrs.st_ino)).st_size == 5
    assert await read_file(parts, B, "d", "b.txt") == b"bravo"
    await settled(parts)  # d/e is listed ahead in the background: counted before, not after
    listed = store.request_counts()["ListObjectsV2"]
    for _ in range(3):  # negative lookups are answered from the listing, not S3
        assert (await lookup_path(parts.ops, B, "d", "nope")).st_ino == 0
    assert store.request_counts()["ListObjectsV2"] == listed
    assert store.request_counts()["HeadObject"] == 1  # b.txt's metadata, once (then stored)


async def test_write_flush_release_lands_in_s3_shown_before(parts: Components,
                                                            store: MemoryStore) -> None:
    store.latency = 0.05
    store.fail("PutObject", times=2)  # transient: retried by the queue
    ino = await write_file(parts, "new.txt", b"fresh bytes", "d")
    assert "new.txt" in await listdir(parts, B, "d")  # pending: shown before it lands
    assert (await parts.ops.getattr(ino)).st_size == 11
    assert await read_file(parts, B, "d", "new.txt") == b"fresh bytes"
    status = await parts.writes.queue.sync(timeout=10)
    assert status["files"] == 0 and status["failures"] == []
    assert store.objects(B)["d/new.txt"] == b"fresh bytes"
    # the fixture's, two faults, the bucket's condition probe, the upload
    assert store.request_counts()["PutObject"] == 3 + 2 + PROBE_PUTS + 1


async def test_unlink_and_rename(parts: Components, store: MemoryStore) -> None:
    root = (await lookup_path(parts.ops, B)).st_ino
    d = (await lookup_path(parts.ops, B, "d")).st_ino
    await parts.ops.rename(root, b"a.txt", d, b"moved.txt", 0, None)
    await parts.ops.unlink(d, b"b.txt", None)
    assert sorted(await listdir(parts, B, "d")) == ["e", "moved.txt"]
    assert await read_file(parts, B, "d", "moved.txt") == b"alpha"
    await parts.writes.queue.sync(timeout=10)
    assert store.objects(B) == {"d/moved.txt": b"alpha", "d/e/f": b"deep"}


async def test_listings_revalidate_after_the_ttl_and_serve_offline(
        tmp_path: Path, store: MemoryStore) -> None:
    async for parts in running(tmp_path, store, ttl=0.2):
        assert await listdir(parts, B) == ["a.txt", "d"]
        store.put_object(B, "later.txt", b"x")  # someone else writes
        assert await listdir(parts, B) == ["a.txt", "d"]  # within the TTL: the stored listing
        await trio.sleep(0.25)  # the TTL passes
        assert await listdir(parts, B) == ["a.txt", "d", "later.txt"]

        store.reachable = False
        await trio.sleep(0.25)
        assert await listdir(parts, B) == ["a.txt", "d", "later.txt"]  # offline: as last seen
        assert not store.link.online
        with pytest.raises(pyfuse3.FUSEError) as uncached:
            await read_file(parts, B, "later.txt")
        assert uncached.value.errno == errno.EHOSTUNREACH
        store.reachable = True
