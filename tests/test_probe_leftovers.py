"""Scratch keys of the conditional-request probe (upload/conditions.py) in listings.

The probe writes `<dir>/.s3fuse-probe-<16 hex>` beside the first conditional write to a
bucket and deletes it at once; gone offline meanwhile, it deletes it at the next start,
from the journal. A wiped cache directory loses that journal: found by the POSIX model
test (offline mid-probe, then a remount with an empty cache listed the key as a file).
Listings hide such keys, a writable mount removes one older than PROBE_STALE, and no file
of such a name is made through the mount.
"""
from __future__ import annotations

import dataclasses
import logging
import stat
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

from s3fuse.errors import InvalidArgument, NotFound
from s3fuse.names import is_probe_name
from s3fuse.store.memory import MemoryStore
from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.tree.bucket import BucketTree, ReadOnlyBucketTree, entries_from_pages
from s3fuse.tree.bucket.listing import PROBE_STALE
from s3fuse.upload.conditions import probe_key
from s3fuse.util.oncelog import OnceLogger
from tests.support.bucketrig import bucket_tree, posix

B = "bkt"
OLD = "d/.s3fuse-probe-0123456789abcdef"
YOUNG = "d/.s3fuse-probe-fedcba9876543210"


def test_the_probe_names_its_keys_as_the_listings_recognise_them() -> None:
    for key in (probe_key("a/b/c"), probe_key("top")):
        assert is_probe_name(key.rpartition("/")[2])
    for other in (".s3fuse-probe-0123", ".s3fuse-probe-0123456789ABCDEF", "s3fuse-probe-x",
                  ".s3fuse-probe-0123456789abcdef0", "x.s3fuse-probe-0123456789abcdef"):
        assert not is_probe_name(other)


def test_a_listing_sets_probe_keys_aside() -> None:
    pages = [ListPage(prefixes=[], objects=[ObjectInfo("d/a", 1, 1_000, "e1"),
                                            ObjectInfo(OLD, 0, 1_000, "e2")])]
    entries = entries_from_pages(pages, "d/", OnceLogger(logging.getLogger("test")), now=1.0)
    assert [e.name for e in entries] == ["a"]


def aged(store: MemoryStore, key: str, seconds: float) -> None:
    with store._lock:
        objects = store._buckets[B]
        objects[key] = dataclasses.replace(objects[key],
                                           mtime_ns=time.time_ns() - int(seconds * 1e9))


@pytest.fixture
def store() -> MemoryStore:
    memory = MemoryStore()
    memory.create_bucket(B)
    for key in ("d/", "d/kept", OLD, YOUNG):
        memory.put_object(B, key, b"")
    aged(memory, OLD, PROBE_STALE + 60)
    return memory


@pytest.fixture(params=[BucketTree, ReadOnlyBucketTree])
async def any_tree(request: pytest.FixtureRequest, tmp_path: Path,
                   store: MemoryStore) -> AsyncIterator[BucketTree]:
    async with bucket_tree(tmp_path, store, B, request.param) as (made, _):
        yield made


@pytest.fixture
async def tree(tmp_path: Path, store: MemoryStore) -> AsyncIterator[BucketTree]:
    async with bucket_tree(tmp_path, store, B) as (made, _):
        yield made


async def gone(store: MemoryStore, key: str) -> None:
    with trio.move_on_after(5):
        while key in store.objects(B):
            await trio.sleep(0.01)


async def test_listings_hide_probe_keys_and_a_writable_mount_removes_a_stale_one(
        any_tree: BucketTree, store: MemoryStore) -> None:
    tree = any_tree
    assert [e.name for e in await tree.listdir("d")] == ["kept"]
    assert await tree.lookup("d", OLD.rpartition("/")[2]) is None
    with pytest.raises(NotFound):
        await tree.stat(YOUNG)
    writable = tree.writable
    if writable:
        await gone(store, OLD)
    else:
        await trio.sleep(0.5)  # ample for a removal that must not come
    assert (OLD in store.objects(B)) is not writable  # read-only: nothing written
    assert YOUNG in store.objects(B)  # a probe may be running: its own to delete


async def test_no_file_takes_a_probe_name(tree: BucketTree) -> None:
    with pytest.raises(InvalidArgument):
        await tree.create("d", YOUNG.rpartition("/")[2], posix(stat.S_IFREG))
    with pytest.raises(InvalidArgument):
        await tree.rename("d", "kept", "d", OLD.rpartition("/")[2])


async def test_a_renamed_directory_leaves_no_probe_key_behind(tree: BucketTree,
                                                              store: MemoryStore) -> None:
    await tree.rename("", "d", "", "e")
    with trio.move_on_after(5):  # the removals are journalled: they land in the background
        while sorted(store.objects(B)) != ["e/", "e/kept"]:
            await trio.sleep(0.01)
    assert sorted(store.objects(B)) == ["e/", "e/kept"]
