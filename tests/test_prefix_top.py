"""The top directory of a prefix source shows its marker's mode, owner and times, and a
chmod of it changes them (it showed the mount's defaults and a chmod wrote those over the
stored owner and group)."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import AsyncIterator

import pyfuse3
import pytest
import trio

from s3fuse.daemon import Components
from s3fuse.posix import Posix, from_headers, to_headers
from s3fuse.store.memory import MemoryStore
from tests.test_fake_stack import B, running
from tests.test_namespace_posix import Ctx, Fields
from tests.test_ops import lookup_path

STORED = Posix(mode=stat.S_IFDIR | stat.S_ISGID | 0o770, uid=1001, gid=1004,
               mtime_ns=1_600_000_000 * 10**9)


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    memory.put_object(B, "team/", b"", metadata=to_headers(STORED))
    memory.put_object(B, "team/readme.txt", b"hello")
    memory.put_object(B, "bare/f", b"no marker")
    return memory


@pytest.fixture
async def parts(request: pytest.FixtureRequest, tmp_path: Path, store: MemoryStore
                ) -> AsyncIterator[Components]:
    """A mount of the prefix `request.param[0]` ("team", or "bare": keys only) with the
    metadata TTL `request.param[1]` (and `request.param[2]`: posix_metadata, True if absent)."""
    prefix, ttl, *posix = request.param
    async for components in running(tmp_path, store, ttl=ttl, source=f"s3://{B}/{prefix}",
                                    posix_metadata=posix[0] if posix else True):
        yield components


@pytest.mark.parametrize("parts", [("team", 60)], indirect=True)
async def test_the_top_shows_its_markers_mode_owner_and_mtime(parts: Components, store: MemoryStore):
    top = await lookup_path(parts.ops, B)
    assert stat.S_IMODE(top.st_mode) == stat.S_ISGID | 0o770
    assert (top.st_uid, top.st_gid) == (1001, 1004)
    assert top.st_mtime_ns == STORED.mtime_ns
    heads = store.request_counts()["HeadObject"]
    await parts.ops.getattr(top.st_ino)  # known for the TTL: no HEAD per stat
    assert store.request_counts()["HeadObject"] == heads


@pytest.mark.parametrize("parts", [("team", 0.2)], indirect=True)
async def test_a_chmod_of_the_top_keeps_the_stored_owner(parts: Components, store: MemoryStore):
    top = await lookup_path(parts.ops, B)
    request = pyfuse3.EntryAttributes()
    request.st_mode = stat.S_IFDIR | 0o1777
    attrs = await parts.ops.setattr(top.st_ino, request, Fields(update_mode=True), None,
                                    Ctx(uid=0, gid=0))
    assert stat.S_IMODE(attrs.st_mode) == 0o1777 and attrs.st_uid == 1001  # shown at once
    await parts.writes.queue.sync(timeout=10)
    stored = from_headers(store.head(B, "team/").metadata or {}, is_dir=True)
    assert (stored.mode, stored.uid, stored.gid) == (stat.S_IFDIR | 0o1777, 1001, 1004)
    await trio.sleep(0.3)  # past the TTL: HEADed again, the same
    again = await parts.ops.getattr(top.st_ino)
    assert (stat.S_IMODE(again.st_mode), again.st_uid, again.st_gid) == (0o1777, 1001, 1004)


@pytest.mark.parametrize("parts", [("bare", 60)], indirect=True)
async def test_a_top_without_marker_shows_the_defaults(parts: Components, store: MemoryStore):
    top = await lookup_path(parts.ops, B)
    assert stat.S_IMODE(top.st_mode) == 0o755 and top.st_uid == 0
    store.reachable = False  # offline: what was known (here: no marker), no error
    assert stat.S_IMODE((await parts.ops.getattr(top.st_ino)).st_mode) == 0o755


@pytest.mark.parametrize("parts", [("team", 60, False)], indirect=True)
async def test_no_posix_metadata_a_chmod_of_the_top_keeps_what_its_marker_stores(
        parts: Components, store: MemoryStore):
    """--no-posix-metadata: the top shows the defaults (stats look nothing up), but its
    chmod looks the marker up first and keeps its owner, group and mtime; then shows them."""
    top = await lookup_path(parts.ops, B)
    assert stat.S_IMODE(top.st_mode) == 0o755 and store.request_counts().get("HeadObject", 0) == 0
    request = pyfuse3.EntryAttributes()
    request.st_mode = stat.S_IFDIR | 0o750
    attrs = await parts.ops.setattr(top.st_ino, request, Fields(update_mode=True), None,
                                    Ctx(uid=0, gid=0))
    assert stat.S_IMODE(attrs.st_mode) == 0o750 and attrs.st_uid == 1001
    await parts.writes.queue.sync(timeout=10)
    stored = from_headers(store.head(B, "team/").metadata or {}, is_dir=True)
    assert (stored.mode, stored.uid, stored.gid, stored.mtime_ns) == (
        stat.S_IFDIR | 0o750, 1001, 1004, STORED.mtime_ns)
