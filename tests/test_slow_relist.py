"""A slow relisting of a directory already listed (a huge one, ~25 s for 1,000,000 keys)
holds up a stat, lookup or readdir for RELIST_WAIT once; until it is stored the stored
listing answers, and later callers do not wait (an `ls -l` walking the directory used
to stall for the whole relisting at every TTL). A name the stored listing lacks is not
denied before the new listing is in."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.config import parse_source
from s3fuse.store.memory import MemoryStore
from s3fuse.store.s3 import ListPage, ObjectInfo
from s3fuse.tree.bucket import BucketTree, listing
from s3fuse.util.supervisor import Supervisor

TTL = 0.3
WAIT = 0.3


class SlowSecondPage(MemoryStore):
    """Lists `dir/` as `old.txt`; once `renamed`, as `new.txt` on a second page that
    comes only when `release` is set (a relisting S3 answers but takes long to finish)."""

    def __init__(self) -> None:
        super().__init__()
        self.renamed = False
        self.release = threading.Event()
        self.lists = 0

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        self.lists += 1
        if not self.renamed:
            yield ListPage([], [ObjectInfo("dir/old.txt", 3, 0, "e-old")])
            return
        yield ListPage([], [])
        self.release.wait(10)
        yield ListPage([], [ObjectInfo("dir/new.txt", 4, 0, "e-new")])


async def test_a_slow_relisting_serves_the_stored_listing_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "RELIST_WAIT", WAIT)
    store = SlowSecondPage()
    meta = MetaStore(tmp_path / "meta.sqlite")
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        tree = BucketTree(parse_source("s3://bkt"), store, meta, None,  # type: ignore[arg-type]
                          ttl=TTL, list_limiter=trio.CapacityLimiter(4),
                          posix_metadata=False, background=background)
        assert [e.name for e in await tree.listdir("dir")] == ["old.txt"]
        store.renamed = True
        await trio.sleep(TTL + 0.05)

        began = time.monotonic()
        assert await tree.lookup("dir", "old.txt") is not None   # the stored listing
        first = time.monotonic() - began
        began = time.monotonic()
        assert [e.name for e in await tree.listdir("dir")] == ["old.txt"]
        later = time.monotonic() - began
        assert WAIT * 0.9 <= first < WAIT + 1.0, first            # waited RELIST_WAIT once
        assert later < WAIT * 0.5, later                          # then not at all
        assert store.lists == 2                                   # one relisting, shared

        found: list[object] = []

        async def look_up_the_new_name() -> None:
            found.append(await tree.lookup("dir", "new.txt"))
        nursery.start_soon(look_up_the_new_name)
        await trio.sleep(WAIT)
        assert found == []       # not denied from the listing being replaced: it waits
        store.release.set()
        with trio.fail_after(5):
            while not found:
                await trio.sleep(0.02)
        assert found[0] is not None                               # the new listing's
        assert await tree.lookup("dir", "old.txt") is None
        assert [e.name for e in await tree.listdir("dir")] == ["new.txt"]
        nursery.cancel_scope.cancel()
    meta.close()
