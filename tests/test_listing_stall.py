"""Storing a huge listing never stalls the trio loop (issue 12).

While a 200,000-entry listing is written to meta.sqlite in a worker thread, stats and
lookups of another directory keep answering on the loop in milliseconds, and an
upload landing meanwhile is recorded without waiting; the listing still shows the
uploads that landed while it was in flight.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.config import parse_source
from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.tree.bucket import BucketTree
from s3fuse.upload.uploader import UploadResult

BIG = 200_000
BOUND = 0.3  # generous: the point is milliseconds, not the seconds of a bulk write


class BigDirectory:
    """A store listing `big/` as 200,000 objects (at once) and `small/` as one file."""

    def __init__(self) -> None:
        self.big = [ObjectInfo(f"big/part-{i:06d}-5f0c2a8e-3b1d-4c6e-9a7f-{i:012d}.parquet",
                               123456, 1_700_000_000 * 10**9, "0123456789abcdef") for i in range(BIG)]

    def list_pages(self, bucket: str, prefix: str) -> Iterator[ListPage]:
        if prefix == "big/":
            yield ListPage([], self.big)
        else:
            yield ListPage([], [ObjectInfo("small/a.txt", 3, 0, "ea")])


class WatchedStore(MetaStore):
    """A metadata store that tells when the big listing is being stored, and when it is done."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.storing = threading.Event()
        self.stored = threading.Event()

    def replace_staged(self, ns: str, path: str, *args: Any, **kwargs: Any) -> None:
        if path != "big":
            return super().replace_staged(ns, path, *args, **kwargs)
        self.storing.set()
        try:
            super().replace_staged(ns, path, *args, **kwargs)
        finally:
            self.stored.set()


async def test_stat_lookup_and_uploads_answer_while_a_huge_listing_is_stored(tmp_path: Path):
    meta = WatchedStore(tmp_path / "meta.sqlite")
    tree = BucketTree(parse_source("s3://bkt"), BigDirectory(), meta, None,  # type: ignore[arg-type]
                      ttl=60, list_limiter=trio.CapacityLimiter(4),
                      posix_metadata=False)  # a listing fake: no HEAD to answer
    await tree.listdir("small")
    latencies: list[float] = []
    landed: list[float] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.listdir, "big")
        await trio.to_thread.run_sync(meta.storing.wait)
        while not meta.stored.is_set():
            began = time.monotonic()
            assert (await tree.stat("small/a.txt")).etag == "ea"
            assert await tree.lookup("small", "a.txt") is not None
            latencies.append(time.monotonic() - began)
            if not landed:  # uploads land: one beside the file, one in the big directory
                began = time.monotonic()
                tree._uploaded("small/new.txt", UploadResult("e1", size=3))
                tree._uploaded("big/zz-landed.txt", UploadResult("e2", size=4))
                landed.append(time.monotonic() - began)
            await trio.sleep(0.005)  # the probe's pace, not a wait for the store

    assert landed and landed[0] < BOUND, landed
    assert len(latencies) >= 10, f"the loop answered only {len(latencies)} times while storing"
    assert max(latencies) < BOUND, latencies
    found = await tree.lookup("small", "new.txt")
    assert found is not None and found[1].etag == "e1"
    names = [e.name for e in await tree.listdir("big")]
    assert len(names) == BIG + 1 and names[-1] == "zz-landed.txt"  # not hidden by the listing
    meta.close()
    again = MetaStore(tmp_path / "meta.sqlite")                    # and written to disk
    assert again.entry(tree.ns_id, "big", "zz-landed.txt") is not None
    assert again.entry(tree.ns_id, "small", "new.txt") is not None
    again.close()
