"""The read side of POSIX metadata over the in-memory store: stored headers show on
lookup/stat, unknown ones are HEADed in parallel batches only when needed and stored,
a relist keeps them for the same version, and --no-posix-metadata sends no HEAD."""
from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import stat
import threading
import time
from collections import Counter
from pathlib import Path
from typing import AsyncIterator, Sequence

import pyfuse3
import pytest
import trio

from s3fuse.cache import meta as meta_module
from s3fuse.cache.meta import MetaStore, version
from s3fuse.config import parse_source
from s3fuse.model import Entry
from s3fuse.posix import NO_HEADERS, Posix, from_headers
from s3fuse.store.memory import MemoryStore
from s3fuse.store.protocol import HeadsAnswered, ObjectInfo
from s3fuse.tree.bucket import BucketTree
from s3fuse.tree.bucket.listing import REVALIDATE_WAIT
from s3fuse.tree.bucket.posixheads import BATCH, MAX_BATCH, STORE_GROUP, WHOLE_GET
from s3fuse.util.supervisor import Supervisor
from tests.test_fake_stack import B as FAKE_B, read_file, running
from tests.test_ops import lookup_path

B = "bkt"
NS = "ns"
EXEC = {"mode": str(stat.S_IFREG | 0o755), "uid": "1000", "gid": "1001",
        "mtime": "1700000000.123456789", "ctime": "1700000001", "atime": "1700000002"}


class CountingStore(MemoryStore):
    """MemoryStore that remembers each HEADed key and the size of each batch of HEADs."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: Counter[str] = Counter()
        self.batches: list[int] = []
        self._count_lock = threading.Lock()

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._count_lock:
            self.heads[key] += 1
        return super().head(bucket, key)

    def head_many(self, bucket: str, keys: Sequence[str], answered: HeadsAnswered) -> None:
        with self._count_lock:
            self.batches.append(len(keys))
        super().head_many(bucket, keys, answered)


@pytest.fixture
def store() -> CountingStore:
    memory = CountingStore()
    memory.create_bucket(B)
    return memory


def make_tree(tmp_path: Path, store: MemoryStore, background: Supervisor | None = None,
              **options: object) -> BucketTree:
    return BucketTree(parse_source(f"s3://{B}"), store, MetaStore(tmp_path / "meta.sqlite"),
                      None, ttl=60, list_limiter=trio.CapacityLimiter(8),  # type: ignore[arg-type]
                      background=background, **options)  # type: ignore[arg-type]


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    running = Supervisor()
    async with trio.open_nursery() as nursery:
        running.bind(nursery)
        yield running
        nursery.cancel_scope.cancel()


def older(store: MemoryStore, key: str) -> None:
    """Make `key`'s LastModified a second older (S3 shows whole seconds: a change within
    the same second as the PUT cannot be told from it)."""
    obj = store._buckets[B][key]
    store._buckets[B][key] = dataclasses.replace(obj, mtime_ns=obj.mtime_ns - 10**9)


async def test_lookup_and_stat_show_the_stored_headers(tmp_path: Path, store: CountingStore,
                                                       supervisor: Supervisor) -> None:
    store.put_object(B, "run.sh", b"#!/bin/sh\n", metadata=EXEC)
    store.put_object(B, "link", b"run.sh", metadata={"mode": "41471", "mtime": "1700000000"})
    store.put_object(B, "plain", b"x")
    store.put_object(B, "private/", b"", metadata={"mode": str(stat.S_IFDIR | 0o700), "uid": "7"})
    store.put_object(B, "implicit/f", b"y")
    tree = make_tree(tmp_path, store, supervisor)
    assert [e.posix for e in await tree.listdir("")] == [None] * 5  # a listing has no headers

    found = await tree.lookup("", "link")
    assert found is not None and found[1].posix is not None and found[1].posix.is_symlink
    run = await tree.stat("run.sh")
    assert run.posix == from_headers(EXEC) and run.posix.mode == stat.S_IFREG | 0o755
    assert (run.posix.uid, run.posix.gid) == (1000, 1001)
    assert run.mtime_ns == 1_700_000_000_123_456_789 and run.size == 10  # the stored mtime
    plain = await tree.stat("plain")
    assert plain.posix == NO_HEADERS and plain.mtime_ns == store.head(B, "plain").mtime_ns

    private = await tree.stat("private")
    assert private.is_dir and private.posix is not None
    assert (private.posix.mode, private.posix.uid) == (stat.S_IFDIR | 0o700, 7)
    heads = sum(store.heads.values())
    assert (await tree.stat("implicit")).posix == NO_HEADERS  # its listing shows no marker
    assert sum(store.heads.values()) == heads and "implicit/" not in store.heads
    assert store.heads["private/"] == 1


async def test_300_cold_files_are_headed_in_parallel_batches_once_each(
        tmp_path: Path, store: CountingStore, supervisor: Supervisor) -> None:
    names = [f"f{i:03d}" for i in range(300)]
    for i, name in enumerate(names):
        store.put_object(B, name, b"x", metadata={"mode": str(stat.S_IFREG | 0o600), "uid": str(i)})
    store.latency = 0.02
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    started = time.monotonic()
    for i, name in enumerate(names):  # `ls -l`: a stat of each, in order
        entry = await tree.stat(name)
        assert entry.posix is not None and entry.posix.uid == i
    elapsed = time.monotonic() - started
    assert store.heads == Counter(names)  # each key once
    assert store.batches[0] == BATCH and max(store.batches) <= MAX_BATCH  # together, not one by one
    rounds = math.ceil(300 / BATCH)
    assert elapsed < 300 * store.latency / 4, (elapsed, rounds)  # not 300 sequential HEADs

    store.heads.clear()  # stored: a remount with the same cache sends none again
    again = make_tree(tmp_path, store, supervisor)
    assert [(await again.stat(name)).posix.uid for name in names[:5]] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert not store.heads


async def test_no_posix_metadata_sends_no_head(tmp_path: Path, store: CountingStore,
                                               supervisor: Supervisor) -> None:
    for i in range(100):
        store.put_object(B, f"d/f{i}", b"x", metadata=EXEC)
    store.put_object(B, "d/sub/", b"", metadata={"mode": "16832"})
    tree = make_tree(tmp_path, store, supervisor, posix_metadata=False)
    assert not tree.posix_lookups
    for entry in await tree.listdir("d"):
        found = await tree.lookup("d", entry.name)
        assert found is not None and found[1].posix is None  # the defaults show
        assert (await tree.stat(f"d/{entry.name}")).posix is None
    assert "HeadObject" not in store.request_counts()


async def test_a_relist_keeps_metadata_of_the_same_version_only(tmp_path: Path, store: CountingStore,
                                                                supervisor: Supervisor) -> None:
    store.put_object(B, "kept", b"k", metadata=EXEC)
    etag = store.put_object(B, "copied", b"c", metadata=EXEC)
    store.put_object(B, "rewritten", b"r", metadata=EXEC)
    for key in ("kept", "copied", "rewritten"):
        older(store, key)
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    for name in ("kept", "copied", "rewritten"):
        assert (await tree.stat(name)).posix == from_headers(EXEC)
    # another client: a chmod by metadata copy (same single-part ETag, new LastModified),
    # and a rewrite with other bytes and no headers
    assert store.copy_object(B, "copied", "copied", etag, metadata={"mode": "33152"}) == etag
    store.put_object(B, "rewritten", b"other")
    store.heads.clear()
    tree._listings.expire("")
    listed = {e.name: e for e in await tree.listdir("")}
    assert listed["kept"].posix == from_headers(EXEC)
    assert listed["kept"].mtime_ns == 1_700_000_000_123_456_789
    assert listed["copied"].posix is None and listed["rewritten"].posix is None
    assert (await tree.stat("kept")).posix == from_headers(EXEC) and not store.heads
    assert (await tree.stat("copied")).posix == Posix(mode=0o100600)
    assert (await tree.stat("rewritten")).posix == NO_HEADERS
    assert store.heads == Counter(["copied", "rewritten"])


async def test_a_marker_without_an_mtime_shows_its_last_modified_after_relistings(
        tmp_path: Path, store: CountingStore, supervisor: Supervisor) -> None:
    """compat.md: no mtime header, mtime = LastModified; a marker put by the AWS CLI or
    a console showed the mount's start time (a listing's directory rows have no date)."""
    store.put_object(B, "bare/", b"")
    store.put_object(B, "bare/f", b"x")
    store.put_object(B, "moded/", b"", metadata={"mode": str(stat.S_IFDIR | 0o700)})
    for key in ("bare/", "moded/"):
        obj = store._buckets[B][key]
        store._buckets[B][key] = dataclasses.replace(obj, mtime_ns=1_600_000_000 * 10**9)
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    for _ in range(2):
        for name in ("bare", "moded"):
            shown = await tree.stat(name)
            assert shown.is_dir and shown.mtime_ns == 1_600_000_000 * 10**9, name
        assert (await tree.stat("moded")).posix.mode == stat.S_IFDIR | 0o700  # type: ignore[union-attr]
        tree._listings.expire("")  # relisted: the rows of directories have no date
        await tree.listdir("")
        store.heads.clear()
    assert not store.heads  # the relisting kept what the HEADs found


async def test_a_revalidation_head_refreshes_metadata(tmp_path: Path, store: CountingStore) -> None:
    etag = store.put_object(B, "f", b"x", metadata=EXEC)
    tree = make_tree(tmp_path, store)
    tree.ttl = 0.0  # every stat revalidates
    await tree.listdir("")
    assert (await tree.stat("f")).posix == from_headers(EXEC)
    store.copy_object(B, "f", "f", etag, metadata={"mode": "33152", "uid": "5"})
    assert (await tree.stat("f")).posix == Posix(mode=0o100600, uid=5)
    assert tree._listings.entry("", "f").posix == Posix(mode=0o100600, uid=5)  # type: ignore[union-attr]


async def test_offline_shows_the_defaults_at_once(tmp_path: Path, store: CountingStore,
                                                  supervisor: Supervisor) -> None:
    store.put_object(B, "f", b"x", metadata=EXEC)
    store.put_object(B, "g", b"x", metadata=EXEC)
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    store.link.failed("test: offline")
    with trio.fail_after(1):
        found = await tree.lookup("", "f")
    assert found is not None and found[1].posix is None
    assert not store.heads

    store.link.succeeded()  # a black hole: S3 takes far longer than the deadline
    store.latency = REVALIDATE_WAIT + 0.5
    started = trio.current_time()
    entry = await tree.stat("g")
    assert entry.posix is None and trio.current_time() - started < REVALIDATE_WAIT + 1
    assert not store.link.online


async def test_a_head_that_finds_nothing_forgets_the_entry(tmp_path: Path, store: CountingStore,
                                                           supervisor: Supervisor) -> None:
    store.put_object(B, "gone", b"x")
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    store.delete_object(B, "gone")
    assert await tree.lookup("", "gone") is None


class HostileSizes(CountingStore):
    """A store whose HEAD answers give a size no int64 holds (a hostile endpoint)."""

    def head_many(self, bucket: str, keys: Sequence[str], answered: HeadsAnswered) -> None:
        def bloated(results: list) -> None:
            answered([(key, dataclasses.replace(info, size=1 << 64)
                       if isinstance(info, ObjectInfo) else info) for key, info in results])
        super().head_many(bucket, keys, bloated)


async def test_answers_arriving_together_are_stored_together_without_holding_a_waiter(
        tmp_path: Path, store: CountingStore, supervisor: Supervisor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stored group is one transaction (and one wakeup of the loop): answers that
    nobody waits for yet are stored STORE_GROUP at a time, and a lookup waiting for one
    of the held answers gets it without waiting for the group to fill."""
    names = [f"f{i:03d}" for i in range(BATCH)]
    for i, name in enumerate(names):
        store.put_object(B, name, b"x", metadata={"uid": str(i)})
    stored: list[int] = []
    real = MetaStore.store_if_unknown

    def counted(self, ns, path, headed, answers):  # type: ignore[no-untyped-def]
        stored.append(len(headed))
        return real(self, ns, path, headed, answers)
    monkeypatch.setattr(MetaStore, "store_if_unknown", counted)
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    first = await tree.stat(names[0])  # starts the batch, waits for its own answer only
    assert first.posix is not None and first.posix.uid == 0
    with trio.fail_after(10):
        while sum(stored) < BATCH:  # the rest lands in the background
            await trio.sleep(0.01)
    assert sum(stored) == BATCH and len(stored) <= 2 + BATCH // STORE_GROUP, stored
    assert [(await tree.stat(n)).posix.uid for n in names] == list(range(BATCH))  # type: ignore[union-attr]


async def test_an_answer_sqlite_cannot_store_leaves_the_entry_unknown(
        tmp_path: Path, supervisor: Supervisor) -> None:
    """HEAD answers are stored from a loop callback, where an exception would end the
    mount (a Content-Length of 2**64 made SQLite raise OverflowError): the entry keeps
    the defaults and the mount goes on."""
    store = HostileSizes()
    store.create_bucket(B)
    store.put_object(B, "f", b"x", metadata=EXEC)
    tree = make_tree(tmp_path, store, supervisor)
    await tree.listdir("")
    found = await tree.lookup("", "f")
    assert found is not None and found[1].posix is None and found[1].size == 1
    assert store.batches == [1]
    assert await tree.lookup("", "f") is not None  # still serving


class NoTempDirectory:
    """A connection as SQLite answers when it cannot create its temporary file."""

    def execute(self, *args: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")


@pytest.mark.parametrize("merge_chunk, temp_table", [(meta_module.MERGE_CHUNK, True), (1, True),
                                                     (2, True), (1, False)])
def test_meta_store_keeps_posix_by_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           merge_chunk: int, temp_table: bool) -> None:
    """A relisting keeps the stored metadata of the versions it was read from: merged
    through a dict, or (more stored rows than MERGE_CHUNK: a big HEADed directory)
    through a temporary table, a chunk of new entries at a time; through a dict of them
    all when SQLite cannot make a temporary table."""
    monkeypatch.setattr(meta_module, "MERGE_CHUNK", merge_chunk)
    if not temp_table:
        copy = meta_module._copy_known
        monkeypatch.setattr(meta_module, "_copy_known",
                            lambda db, ns, path: copy(NoTempDirectory(), ns, path))  # type: ignore[arg-type]
    meta = MetaStore(tmp_path / "meta.sqlite")
    posix = Posix(mode=0o100755, uid=1, mtime_ns=5)
    meta.replace_listing(NS, "", [Entry("f", False, 1, 100, "e1"), Entry("d", True),
                                  Entry("up", False, 1, 100, "e2")])
    meta.update_entry(NS, "", Entry("f", False, 1, 5, "e1", 1.0, posix), version("e1", 100))
    meta.update_entry(NS, "", Entry("d", True, 0, 5, "", 1.0, posix), "")
    meta.update_entry(NS, "", Entry("up", False, 1, 5, "e2", 1.0, posix))  # an upload's
    assert meta.unknown_after(NS, "", "", 10) == []

    meta.replace_listing(NS, "", [Entry("d", True), Entry("f", False, 1, 100, "e1"),
                                  Entry("up", False, 1, 300, "e2")])
    shown = {e.name: e for e in meta.entries(NS, "") or []}
    assert shown["f"].posix == posix and shown["f"].mtime_ns == 5  # the stored mtime
    assert shown["d"].posix == posix and shown["up"].posix == posix
    meta.replace_listing(NS, "", [Entry("d", True), Entry("f", False, 1, 200, "e1"),
                                  Entry("up", False, 1, 300, "e3")])
    shown = {e.name: e for e in meta.entries(NS, "") or []}
    assert shown["f"].posix is None and shown["f"].mtime_ns == 200  # LastModified again
    assert shown["up"].posix is None and shown["d"].posix == posix
    assert [e.name for e in meta.unknown_after(NS, "", "e", 10)] == ["f", "up"]
    meta.close()


def test_head_answers_are_stored_only_for_entries_still_as_headed(tmp_path: Path) -> None:
    """store_if_unknown (a HEAD batch's worker thread): an answer lands only on the entry
    it was asked for, unchanged and still unknown; a newer version stored meanwhile (an
    upload, a relist) or metadata already known stays."""
    meta = MetaStore(tmp_path / "meta.sqlite")
    listed = [Entry(n, False, 1, 100, "e" + n) for n in ("a", "b", "c", "d", "gone")]
    meta.replace_listing(NS, "", listed)
    posix = Posix(mode=0o100600, uid=9, mtime_ns=7)
    meta.update_entry(NS, "", Entry("b", False, 2, 200, "new-b"))  # an upload meanwhile
    meta.update_entry(NS, "", Entry("c", False, 1, 7, "ec", 1.0, posix), version("ec", 100))
    answered = Posix(mode=0o100755, uid=1, mtime_ns=5)
    answers = [(dataclasses.replace(e, mtime_ns=5, posix=answered), version(e.etag, 100))
               for e in listed[:4]]
    stored, gone = meta.store_if_unknown(NS, "", listed, [*answers, None])
    assert [e.name for e in stored] == ["a", "d"] and [e.name for e in gone] == ["gone"]
    shown = {e.name: e for e in meta.entries(NS, "") or []}
    assert shown["a"].posix == answered and shown["d"].posix == answered
    assert shown["b"].etag == "new-b" and shown["b"].posix is None
    assert shown["c"].posix == posix
    assert shown["gone"].posix is None  # the caller forgets it (Listings.unknown)
    meta.close()


def test_a_directory_listing_records_its_marker(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "meta.sqlite")
    meta.replace_listing(NS, "", [Entry("bare", True), Entry("marked", True)])
    meta.replace_listing(NS, "bare", [], marker="")
    meta.replace_listing(NS, "marked", [], marker=version("m1", 100))
    assert meta.entry(NS, "", "bare").posix == NO_HEADERS  # type: ignore[union-attr]
    assert meta.entry(NS, "", "marked").posix is None  # type: ignore[union-attr]
    posix = Posix(mode=0o40700)
    meta.update_entry(NS, "", Entry("marked", True, 0, 0, "", 1.0, posix), version("m1", 100))
    meta.replace_listing(NS, "marked", [], marker=version("m1", 100))
    assert meta.entry(NS, "", "marked").posix == posix  # type: ignore[union-attr]
    meta.replace_listing(NS, "marked", [], marker=version("m1", 200))  # chmod'ed elsewhere
    assert meta.entry(NS, "", "marked").posix is None  # type: ignore[union-attr]
    meta.close()


async def test_readdir_replies_of_unknown_metadata_are_not_cached(
        tmp_path: Path, store: CountingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel keeps a readdir reply's attributes for their timeouts: an entry whose
    metadata is unknown gets 0, so the next lstat is a lookup, which HEADs it."""
    replies: dict[str, pyfuse3.EntryAttributes] = {}

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if name not in (b".", b".."):
            replies[os.fsdecode(name)] = attrs
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    store.put_object(B, "run.sh", b"#!/bin/sh\n", metadata=EXEC)
    store.put_object(B, "link", b"run.sh", metadata={"mode": "41471"})
    async for parts in running(tmp_path, store, ttl=60):
        ops = parts.ops
        bucket = (await lookup_path(ops, B)).st_ino
        fh = await ops.opendir(bucket, None)
        await ops.readdir(fh, 0, None)
        assert {n: (a.entry_timeout, a.attr_timeout) for n, a in replies.items()} == {
            "link": (0, 0), "run.sh": (0, 0)}
        assert not store.heads  # readdir (find) sends no HEAD
        link = await ops.lookup(bucket, b"link")
        assert stat.S_ISLNK(link.st_mode) and link.entry_timeout == link.attr_timeout
        assert link.entry_timeout == pytest.approx(60, abs=1)  # what is left of the TTL
        run = await ops.lookup(bucket, b"run.sh")
        assert stat.S_IMODE(run.st_mode) == 0o755 and (run.st_uid, run.st_gid) == (1000, 1001)
        assert run.st_mtime_ns == 1_700_000_000_123_456_789
        assert run.st_ctime_ns == 1_700_000_001 * 10**9
        assert store.heads == Counter(["link", "run.sh"])  # one batch: both at the first lookup
        replies.clear()
        await ops.readdir(fh, 0, None)
        assert replies["run.sh"].entry_timeout == pytest.approx(60, abs=1)  # known now
        await ops.releasedir(fh)


async def test_small_files_are_fetched_whole_by_their_lookup_one_request_each(
        tmp_path: Path) -> None:
    """`cat` of a cold directory of small files: once a file of it was read, a lookup's GET
    brings the headers and the bytes (cached), so a file costs one request, not a HEAD and
    then a GET; a file over WHOLE_GET is HEADed."""
    store = MemoryStore()
    store.create_bucket(FAKE_B)
    names = [f"f{i:03d}" for i in range(100)]
    for i, name in enumerate(names):
        store.put_object(FAKE_B, f"d/{name}", b"small %d" % i, metadata={"uid": str(i)})
    store.put_object(FAKE_B, "e/big", b"x" * (WHOLE_GET + 1), metadata={"uid": "7"})
    async for parts in running(tmp_path, store):
        await lookup_path(parts.ops, FAKE_B, "d")
        before = store.request_counts()
        for i, name in enumerate(names):  # cat *: lookup, open, read
            assert (await lookup_path(parts.ops, FAKE_B, "d", name)).st_uid == i
            assert await read_file(parts, FAKE_B, "d", name) == b"small %d" % i
        assert (await lookup_path(parts.ops, FAKE_B, "e", "big")).st_uid == 7
        counts = store.request_counts()
        sent = {op: counts.get(op, 0) - before.get(op, 0) for op in ("GetObject", "HeadObject")}
        # the first batch (before any file was read: `ls -l` reads nothing) HEADs; once a
        # file was read, lookups fetch small files whole: no read sends another GET
        assert sent == {"GetObject": 100, "HeadObject": BATCH + 1}
