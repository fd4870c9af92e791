"""A directory's listing is ingested page by page (tree/bucket/ingest.py, Ingest): no
ListObjectsV2 page outlives the next one's fetch, so a million-key directory does not hold a million
S3 records besides its entries; what spans pages (the marker, a key that is also a
prefix) comes out as when every page was held."""
from __future__ import annotations

import gc
import logging
import weakref
from pathlib import Path

import trio

from s3fuse.cache.meta import MetaStore, version
from s3fuse.config import parse_source
from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.tree.bucket import BucketTree
from s3fuse.tree.bucket.ingest import Ingest
from s3fuse.util.oncelog import OnceLogger

PAGES = 4
PER_PAGE = 50


class Objects(list):
    """A page's records, in a list that can be watched (weakref) for being freed."""


class PagedListing:
    """A store listing `d/` in PAGES pages; counts, as it makes each page, the pages
    before it still alive (the caller's loop variable holds the last one)."""

    def __init__(self) -> None:
        self.made: list[weakref.ref] = []
        self.alive_after: list[int] = []  # pages still alive when the next one was made

    def list_pages(self, bucket: str, prefix: str):  # type: ignore[no-untyped-def]
        for page in range(PAGES):
            gc.collect()
            self.alive_after.append(sum(ref() is not None for ref in self.made))
            yield ListPage([], self.objects(page))  # no local holds it meanwhile

    def objects(self, page: int) -> Objects:
        made = Objects(ObjectInfo(f"d/f{page:02d}{i:03d}", i, 1_000, f"e{i}")
                       for i in range(PER_PAGE))
        self.made.append(weakref.ref(made))
        return made


async def test_no_page_is_held_while_the_next_one_is_fetched(tmp_path: Path) -> None:
    store = PagedListing()
    tree = BucketTree(parse_source("s3://bkt"), store, MetaStore(tmp_path / "meta.sqlite"),  # type: ignore[arg-type]
                      None, ttl=60, list_limiter=trio.CapacityLimiter(4))  # type: ignore[arg-type]
    names = [e.name for e in await tree.listdir("d")]
    assert names == sorted(f"f{p:02d}{i:03d}" for p in range(PAGES) for i in range(PER_PAGE))
    assert store.alive_after == [0, 1, 1, 1]  # the one just ingested, no older one


def obj(key: str, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key, 1, 1_000, etag)


def test_what_spans_pages_comes_out_as_from_one_page() -> None:
    ingest = Ingest("p/", OnceLogger(logging.getLogger("test")), now=1.0)
    ingest.add(ListPage([], [obj("p/a"), obj("p/clash")]))
    assert ingest.marker == ""
    ingest.add(ListPage(["p/clash/"], [obj("p/", "m"), obj("p/z")]))
    assert ingest.marker == version("m", 1_000)
    assert [(e.name, e.is_dir) for e in ingest.entries()] == [
        ("a", False), ("clash", True), ("z", False)]


def test_keys_that_cannot_be_names_are_hidden_with_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    """troubleshooting.md: hidden and logged once at WARNING (it was INFO: a mount at the
    default level said nothing of the objects it did not show)."""
    ingest = Ingest("p/", OnceLogger(logging.getLogger("test")), now=1.0)
    with caplog.at_level(logging.WARNING):
        ingest.add(ListPage(["p/..//"], [obj("p/ok"), obj("p/.."), obj("p/..")]))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "hiding s3 prefix 'p/..//': not a valid POSIX name"),
        (logging.WARNING, "hiding s3 key 'p/..': not a valid POSIX name")]
    assert [e.name for e in ingest.entries()] == ["ok"]
