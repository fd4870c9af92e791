"""readdir of a bucket directory paged from the stored listing (tree/bucket/paged.py).

What a snapshot gave for free must hold chunk by chunk: every name once, in order,
whatever buffer size the kernel resumes with; offsets that resume where they were
(also a seekdir back to an old one); and changes made meanwhile, local (the pending
view) or learned (queued metadata writes), follow POSIX: entries that exist throughout
show exactly once, a removed one past the cursor does not show, an added one past the
cursor does.
"""
from __future__ import annotations

import time
from pathlib import Path

import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.cache.overlay import Overlay
from s3fuse.model import Entry
from s3fuse.tree.bucket.dirtimes import DirTimes
from s3fuse.tree.bucket.keys import BucketKeys
from s3fuse.tree.bucket.listing import Listings
from s3fuse.tree.bucket.paged import CHUNK, CHECKPOINT, PagedDir
from s3fuse.tree.bucket.pending import PendingView
from s3fuse.util.supervisor import Supervisor

N = 3000


def name(i: int) -> str:
    return f"f{i:05d}"


class Setup:
    def __init__(self, tmp_path: Path):
        self.keys = BucketKeys("bkt", "")
        self.meta = MetaStore(tmp_path / "meta.sqlite")
        now = time.time()
        self.meta.replace_listing(self.keys.ns_id, "d", (Entry(name(i), False, 1, 1, "e", now)
                                                         for i in range(N)), now)
        self.overlay = Overlay()
        self.listings = Listings(self.keys, None, self.meta, ttl=3600,  # type: ignore[arg-type]
                                 limiter=trio.CapacityLimiter(1), background=Supervisor())
        self.pending = PendingView(self.keys, self.overlay, self.listings)

    def open(self) -> PagedDir:
        return PagedDir("d", self.listings, self.pending, DirTimes())


async def read_all(stream: PagedDir, start: int, step: int) -> list[tuple[int, str]]:
    out = []
    while page := await stream.page(start, step):
        out.extend((offset, entry.name) for offset, _, entry in page)
        start = page[-1][0]
    return out


async def test_every_name_once_in_order_whatever_the_buffer(tmp_path: Path):
    s = Setup(tmp_path)
    for step in (1, 7, CHUNK, 500):
        got = await read_all(s.open(), 0, step)
        assert [n for _, n in got] == [name(i) for i in range(N)]
        assert [o for o, _ in got] == list(range(1, N + 1))
    s.meta.close()


async def test_a_refused_entry_resumes_where_it_was(tmp_path: Path):
    """The kernel's buffer fills mid-page: it comes back with the offset of the last
    entry it took, also the one just before a chunk."""
    s = Setup(tmp_path)
    stream = s.open()
    page = await stream.page(CHUNK - 1, 3)   # reads the first chunk ... of offsets 1..CHUNK
    assert [e.name for _, _, e in page] == [name(CHUNK - 1), name(CHUNK), name(CHUNK + 1)]
    page = await stream.page(CHUNK, 2)       # the last offset before this chunk
    assert [(o, e.name) for o, _, e in page] == [(CHUNK + 1, name(CHUNK)),
                                                 (CHUNK + 2, name(CHUNK + 1))]
    s.meta.close()


async def test_seekdir_back_to_an_old_offset(tmp_path: Path):
    s = Setup(tmp_path)
    stream = s.open()
    await read_all(stream, 0, 100)
    for offset in (CHECKPOINT, CHECKPOINT + 5, 17, 2 * CHECKPOINT + 300, N):
        page = await stream.page(offset, 2)
        assert [(o, e.name) for o, _, e in page] == [(o + 1, name(o)) for o in range(offset, min(offset + 2, N))]
    fresh = s.open()  # no checkpoint yet: counted from the start
    assert [e.name for _, _, e in await fresh.page(N - 1, 5)] == [name(N - 1)]
    s.meta.close()


async def test_changes_meanwhile_follow_posix(tmp_path: Path):
    s = Setup(tmp_path)
    stream = s.open()
    first = await read_all_until(stream, 4 * CHUNK)  # up to a chunk's end: a chunk read is
    cursor = first[-1][0]                            # served as read (POSIX: unspecified)
    # local changes (the pending view) and learned ones (queued metadata writes), some
    # before the cursor, some past it, some in a chunk not read yet
    s.overlay.file("bkt", "d/f00500x", 3)              # added before the cursor: not shown
    s.overlay.file("bkt", "d/f01500x", 3)              # added past it: shown
    s.overlay.delete("bkt", "d/" + name(1200))              # removed past it: not shown
    s.meta.remove_entry(s.keys.ns_id, "d", name(2500))
    s.meta.update_entry(s.keys.ns_id, "d", Entry("f02600x", False, 1, 1, "e2", time.time()))
    for i in range(1030, 1030 + 2 * CHUNK):          # a whole chunk removed, and more
        if i != 1100:
            s.overlay.delete("bkt", "d/" + name(i))
    rest = await read_all(stream, cursor, 37)
    names = [n for _, n in first] + [n for _, n in rest]
    assert len(names) == len(set(names))
    gone = {name(1200), name(2500)} | {name(i) for i in range(1030, 1030 + 2 * CHUNK) if i != 1100}
    assert set(names) == {name(i) for i in range(N)} - gone | {"f01500x", "f02600x"}
    assert names == sorted(names)
    assert [o for o, _ in rest] == list(range(cursor + 1, cursor + 1 + len(rest)))
    s.meta.close()


async def read_all_until(stream: PagedDir, count: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    while len(out) < count:
        page = await stream.page(out[-1][0] if out else 0, min(64, count - len(out)))
        out.extend((offset, entry.name) for offset, _, entry in page)
    return out


async def test_many_local_additions_come_in_chunks(tmp_path: Path):
    """A directory only this mount wrote to (nothing stored): its local names, chunk by chunk."""
    s = Setup(tmp_path)
    for i in range(CHUNK * 2 + 5):
        s.overlay.file("bkt", f"new/{name(i)}", 1)
    stream = PagedDir("new", s.listings, s.pending, DirTimes())
    got = await read_all(stream, 0, 1000)
    assert [n for _, n in got] == [name(i) for i in range(CHUNK * 2 + 5)]
    assert len(stream._chunk) <= CHUNK
    s.meta.close()
