"""The parts of the bucket namespace on their own (tree/bucket/): the path <-> key map,
the view of pending uploads over stored listings, what listings learn when an upload
lands, and utimens on a file that is still open (the overlay owns its fields)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.cache.overlay import Overlay
from s3fuse.errors import CacheFull, NotFound
from s3fuse.model import Entry
from s3fuse.posix import Posix
from s3fuse.store.memory import MemoryStore
from s3fuse.tree.bucket.keys import BucketKeys
from s3fuse.tree.bucket.listing import Listings
from s3fuse.tree.bucket.pending import GONE, RECORDED_MAX, PendingView
from s3fuse.tree.contract import AttrChanges
from s3fuse.upload.uploader import UploadResult
from s3fuse.util.supervisor import Supervisor
from tests.test_fake_stack import B, running

KEYS = BucketKeys(B, "p/")


def parts(tmp_path: Path) -> tuple[MetaStore, Listings, Overlay, PendingView]:
    meta = MetaStore(tmp_path / "meta.sqlite")
    store = MemoryStore()
    store.create_bucket(B)
    listings = Listings(KEYS, store, meta, ttl=60, limiter=trio.CapacityLimiter(2),
                        background=Supervisor())
    overlay = Overlay()
    return meta, listings, overlay, PendingView(KEYS, overlay, listings)


def test_keys_place_keys_and_markers_inside_the_tree_only() -> None:
    assert KEYS.key("d/f") == "p/d/f" and KEYS.dir_prefix("d") == "p/d/" and KEYS.dir_prefix("") == "p/"
    assert KEYS.place("p/d/f") == ("d", "f") and KEYS.place("p/d/") == ("", "d")
    assert KEYS.place("p/") is None and KEYS.place("q/f") is None
    assert KEYS.ref("d/f", Entry("f", False, 3, 0, "e1")).uri == f"s3://{B}/p/d/f"


async def test_local_changes_are_merged_into_a_stored_listing_in_name_order(tmp_path: Path):
    meta, listings, overlay, pending = parts(tmp_path)
    now = time.time()
    stored = [Entry("a", False, 1, 0, "ea", now), Entry("c", True, 0, 0, "", now),
              Entry("e", False, 1, 0, "ee", now), Entry("g", False, 1, 0, "eg", now)]
    meta.replace_listing(KEYS.ns_id, "d", stored, now)
    overlay.file(B, "p/d/b", 5)          # new, between two stored names
    overlay.delete(B, "p/d/c/")          # a stored directory removed
    overlay.file(B, "p/d/e", 9)          # a stored file rewritten
    overlay.directory(B, "p/d/z/")       # new, after every stored name
    overlay.delete(B, "p/d/never")       # removed before S3 ever listed it: nothing to hide
    await pending.listing_or_local("d")
    merged = pending.merge("d", await listings.entries("d"))
    assert [(e.name, e.is_dir, e.size) for e in merged] == [
        ("a", False, 1), ("b", False, 5), ("e", False, 9), ("g", False, 1), ("z", True, 0)]
    assert pending.local("d", "c") is GONE and pending.local("d", "a") is None
    assert [e.name for e in stored] == ["a", "c", "e", "g"]  # the stored list is not changed
    meta.close()


async def test_uploads_landing_are_learned_by_the_listings(tmp_path: Path):
    meta, listings, overlay, pending = parts(tmp_path)
    now = time.time()
    meta.replace_listing(KEYS.ns_id, "d", [Entry("old", False, 1, 0, "eo", now)], now)
    pending.uploaded("p/d/new", UploadResult("e1", size=3))
    pending.uploaded("p/d/old", None)
    pending.uploaded("p/d/sub/", UploadResult("e2", size=0))
    pending.uploaded("q/d/elsewhere", UploadResult("e3", size=1))  # another prefix: not ours
    pending.uploaded("p/", UploadResult("e4", size=0))              # the tree's own marker
    new = listings.entry("d", "new")
    assert new is not None and (new.etag, new.size, new.checked_at) == ("e1", 3, 0.0)  # HEAD next
    assert listings.entry("d", "old") is None
    sub = listings.entry("d", "sub")
    assert sub is not None and sub.is_dir and meta.listed_at(KEYS.ns_id, "d/sub") == 0.0
    assert [e.name for e in await listings.entries("d")] == ["new", "sub"]
    pending.uploaded("p/d/new", UploadResult("e5", conflict_key="p/d/new.conflict"))
    assert listings.entry("d", "new") is None and meta.listed_at(KEYS.ns_id, "d") == 0.0
    meta.close()


async def test_a_landing_told_twice_is_written_to_the_listings_once(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """The queue tells each landing twice (before and after its journal row ends): the
    second telling writes nothing (a point write on the loop per copy slowed `chmod` of
    1,000 files), unless the first could not be written; a new landing is written."""
    meta, listings, overlay, pending = parts(tmp_path)
    learned: list[tuple[str, str | None]] = []
    learn = listings.learn

    def counting(parent: str, name: str, entry: Entry | None) -> None:
        learned.append((name, None if entry is None else entry.etag))
        learn(parent, name, entry)
    monkeypatch.setattr(listings, "learn", counting)
    for _ in range(2):
        pending.uploaded("p/d/f", UploadResult("e1", size=3))
        pending.uploaded("p/d/gone", None)
    assert learned == [("f", "e1"), ("gone", None)]
    pending.uploaded("p/d/f", UploadResult("e2", size=3))  # the next version of the key
    assert learned[-1] == ("f", "e2") and listings.entry("d", "f").etag == "e2"

    full = {"fail": True}

    def refusing(parent: str, name: str, entry: Entry | None) -> None:
        if full.pop("fail", False):
            raise CacheFull("disk full")
        counting(parent, name, entry)
    monkeypatch.setattr(listings, "learn", refusing)
    pending.uploaded("p/d/h", UploadResult("e3", size=1))  # not written: the second try is
    pending.uploaded("p/d/h", UploadResult("e3", size=1))
    assert learned[-1] == ("h", "e3") and listings.entry("d", "h").etag == "e3"
    meta.close()


async def test_landings_told_once_are_not_remembered_forever(tmp_path: Path) -> None:
    """A landing whose second telling never comes (the journal failed in between) is
    forgotten once RECORDED_MAX newer ones wait for theirs: the memory stays bounded."""
    meta, _, _, pending = parts(tmp_path)
    for i in range(RECORDED_MAX + 10):
        pending.uploaded(f"p/d/f{i}", UploadResult(f"e{i}", size=1))
    assert len(pending._recorded) == RECORDED_MAX
    assert "p/d/f0" not in pending._recorded and f"p/d/f{RECORDED_MAX + 9}" in pending._recorded
    meta.close()


async def test_a_fresh_listing_is_not_asked_again_until_it_is_expired(tmp_path: Path):
    """ensure() runs for every lookup: a fresh listing is remembered (no query, no LIST),
    and whatever expires it (a change behind it, an unknown version) lists again."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    store = MemoryStore()
    store.create_bucket(B)
    store.put_object(B, "p/d/a", b"1")
    listings = Listings(KEYS, store, meta, ttl=60, limiter=trio.CapacityLimiter(2),
                        background=Supervisor())

    def lists() -> int:
        return store.request_counts().get("ListObjectsV2", 0)

    queried: list[str] = []
    listed_at = meta.listed_at
    meta.listed_at = lambda ns, path: queried.append(path) or listed_at(ns, path)  # type: ignore[method-assign]
    await listings.ensure("d")
    assert lists() == 1 and [e.name for e in await listings.entries("d")] == ["a"]
    await listings.ensure("d")  # reads what the listing stored, and remembers it
    asked = len(queried)
    for _ in range(3):
        await listings.ensure("d")
    assert lists() == 1 and len(queried) == asked  # remembered: not even a query
    store.put_object(B, "p/d/b", b"2")
    listings.expire("d")
    await listings.ensure("d")
    assert lists() == 2 and [e.name for e in await listings.entries("d")] == ["a", "b"]
    listings.unknown("d", "b")
    await listings.ensure("d")
    assert lists() == 3
    await listings.ensure("d")
    assert lists() == 3
    meta.close()


async def test_utimens_on_an_open_file_shows_until_it_is_uploaded(tmp_path: Path):
    store = MemoryStore()
    store.create_bucket(B)
    async for components in running(tmp_path, store):
        tree = components.root.get(0)
        posix = Posix(mode=0o100644, uid=0, gid=0, mtime_ns=5, ctime_ns=5, atime_ns=5)
        path, _, handle = await tree.create("", "n.txt", posix)
        await handle.write(0, b"four")
        await tree.setattr(path, AttrChanges(mtime_ns=1_000_000_000,
                                             posix=posix.replace(mtime_ns=1_000_000_000)), None)
        assert (await tree.stat(path)).mtime_ns == 1_000_000_000
        await handle.write(4, b"!")  # the open file shares the overlay's change
        assert (await tree.stat(path)).size == 5
        await handle.close()


async def test_every_listing_of_the_root_says_whether_the_bucket_exists(tmp_path: Path):
    """The flag that keeps creates out of a bucket that does not exist is set and cleared
    by the listing itself: a background re-list (a stored listing, being revalidated)
    that found the bucket made meanwhile left it set, and creates stayed ENOENT."""
    _, listings, _, _ = parts(tmp_path)
    store = listings._store
    store.delete_bucket(B)
    with pytest.raises(NotFound):
        await listings._refresh("")
    assert listings.bucket_missing
    store.create_bucket(B)
    await listings._refresh("")          # as the background revalidation calls it
    assert not listings.bucket_missing
