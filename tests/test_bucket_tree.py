"""Listing pages -> directory entries: markers, clashes and hostile names; listings racing uploads."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.config import parse_source
from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.names import ancestors, is_posix_name
from s3fuse.util.oncelog import OnceLogger
from s3fuse.tree.bucket import BucketTree, entries_from_pages
from s3fuse.upload.uploader import UploadResult


def obj(key: str, size: int = 1) -> ObjectInfo:
    return ObjectInfo(key, size, 1_000, "etag")


def test_entries_from_pages():
    pages = [
        ListPage(prefixes=["p/sub/", "p/clash/", "p//", "p/../"],
                 objects=[obj("p/"), obj("p/file"), obj("p/clash"), obj("p/.")]),
        ListPage(prefixes=["p/z/"], objects=[obj("p/" + "x" * 256), obj("p/ü")]),
    ]
    hidden = OnceLogger(logging.getLogger("test"))
    entries = entries_from_pages(pages, "p/", hidden, now=1.0)
    assert [(e.name, e.is_dir) for e in entries] == [
        ("clash", True), ("file", False), ("sub", True), ("z", True), ("ü", False)]


def test_posix_names():
    assert is_posix_name("a b") and is_posix_name("é" * 127)
    for bad in ("", ".", "..", "a/b", "a\0b", "é" * 128):
        assert not is_posix_name(bad)


def test_once_logger_logs_once(caplog):
    hidden = OnceLogger(logging.getLogger("once"))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            hidden.info("k", "hiding %s", "k")
    assert len(caplog.records) == 1


class SlowListing:
    """A store whose listing of `d/` waits until released: an upload finishes meanwhile."""

    def __init__(self) -> None:
        self.listing = threading.Event()
        self.release = threading.Event()

    def list_pages(self, bucket: str, prefix: str):  # type: ignore[no-untyped-def]
        self.listing.set()
        assert self.release.wait(10)
        yield ListPage([], [obj("d/old.txt"), obj("d/kept.txt")])


async def test_a_listing_in_flight_never_hides_an_upload_that_finished_meanwhile(tmp_path: Path):
    store = SlowListing()
    tree = BucketTree(parse_source("s3://bkt"), store, MetaStore(tmp_path / "meta.sqlite"),  # type: ignore[arg-type]
                      None, ttl=60, list_limiter=trio.CapacityLimiter(4))  # type: ignore[arg-type]
    listed: list[str] = []

    async def list_d() -> None:
        listed.extend(e.name for e in await tree.listdir("d"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(list_d)
        await trio.to_thread.run_sync(store.listing.wait)   # ListObjectsV2 sent ...
        tree._uploaded("d/new.txt", UploadResult("e1", size=3))  # ... then uploads land
        tree._uploaded("d/old.txt", None)
        store.release.set()                                  # ... then the answer arrives
    assert listed == ["kept.txt", "new.txt"]
    assert [e.name for e in await tree.listdir("d")] == ["kept.txt", "new.txt"]  # as stored


class SlowRootListing(SlowListing):
    """The bucket's top listing waits until released; it shows only what S3 held before."""

    def list_pages(self, bucket: str, prefix: str):  # type: ignore[no-untyped-def]
        self.listing.set()
        assert self.release.wait(10)
        yield ListPage([], [obj("gone-soon.txt")])


async def test_a_listing_in_flight_never_hides_a_directory_an_upload_made_meanwhile(tmp_path: Path):
    store = SlowRootListing()
    tree = BucketTree(parse_source("s3://bkt"), store, MetaStore(tmp_path / "meta.sqlite"),  # type: ignore[arg-type]
                      None, ttl=60, list_limiter=trio.CapacityLimiter(4))  # type: ignore[arg-type]
    listed: list[tuple[str, bool]] = []

    async def list_root() -> None:
        listed.extend((e.name, e.is_dir) for e in await tree.listdir(""))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(list_root)
        await trio.to_thread.run_sync(store.listing.wait)       # ListObjectsV2 of the top ...
        tree._uploaded("docs/a.txt", UploadResult("e1", size=5))  # ... then uploads make dirs
        tree._uploaded("x/y/z.txt", UploadResult("e2", size=1))
        store.release.set()                                      # ... then the answer arrives
    expected = [("docs", True), ("gone-soon.txt", False), ("x", True)]
    assert listed == expected
    assert [(e.name, e.is_dir) for e in await tree.listdir("")] == expected  # as stored
    y = tree._listings.entry("x", "y")  # x/ was never listed: its entry is stored alone
    assert y is not None and y.is_dir


def test_ancestors():
    assert ancestors("a/b/c") == ["a/b/c", "a/b", "a"] and ancestors("") == []
