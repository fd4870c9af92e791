"""The fleet's shared archive index: machine A indexes a .tar.gz shard and publishes its
member list and seek points; machine B (a fresh cache) fetches them and reads a member
near the end without decompressing the archive from the start. A stale, tampered or
forged index is ignored with one log line and the archive indexed locally (and the good
index published again). Over the in-memory store (fast, bytes counted per key), the
format's checks on their own, and once through real mounts."""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import struct
import threading
import zlib
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pyfuse3
import pytest
import trio
import trio.testing

from s3fuse.archive.index import LEGACY_SMALL_POINTS, build_index, gzip_spacing
from s3fuse.archive.index import read_member as inflate_member
from s3fuse.archive.limits import Limits
from s3fuse.archive.published import Rejected, allowance, decode, encode
from s3fuse.config import Config, build_config, parse_manifest
from s3fuse.daemon import Components, build
from s3fuse.errors import UsageError
from s3fuse.idle import Idle
from s3fuse.model import ObjectRef
from s3fuse.store.memory import MemoryStore
from s3fuse.tree.sharedindex import SharedIndex
from s3fuse.util.supervisor import Supervisor
from tests.support.archives import random_tar
from tests.test_archive import tarfile_members
from tests.test_ops import lookup_path
from tests.test_shard_cache_overflow import fetched

B = "bkt"
ARCHIVE = "ml/s/shard.tar.gz"
MANIFEST = "ml/s/manifest.jsonl"
MEMBERS = 16
MEMBER = 4 << 20          # 64 MiB of incompressible tar: 64 seek points, 8 blocks of 8 MiB
LAST = f"m{MEMBERS - 1:02d}.bin"
SHARED = f"s3://{B}/fleet-index"


@functools.lru_cache(maxsize=2)
def shard(seed: int = 5) -> tuple[bytes, dict[str, bytes]]:
    tar, members = random_tar(seed, MEMBERS, MEMBER)
    return gzip.compress(tar, 1, mtime=0), members


class Source:
    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


@functools.lru_cache(maxsize=1)
def blob() -> bytes:
    archive, _ = shard()
    index = build_index(Source(archive), "gzip", ARCHIVE, Limits())
    return encode(index, B, ARCHIVE, "e1", len(archive))


def reseal(data: bytes, change: Callable[[dict[str, Any], bytes, bytes],
                                         tuple[dict[str, Any], bytes, bytes]]) -> bytes:
    """`data` with its header and sections changed by `change`, checksum made valid again:
    what a forger who can write the shared prefix would publish."""
    magic, rest = data.split(b"\n", 1)
    line, body = rest.split(b"\n", 1)
    header = json.loads(line)
    members, seek = body[:header["members_bytes"]], body[header["members_bytes"]:]
    header, members, seek = change(header, members, seek)
    header.update(members_bytes=len(members), seek_bytes=len(seek),
                  sha256=hashlib.sha256(members + seek).hexdigest())
    return magic + b"\n" + json.dumps(header).encode() + b"\n" + members + seek


def with_members(edit: Callable[[list[list[Any]]], None]) -> Callable[..., Any]:
    def change(header: dict[str, Any], members: bytes, seek: bytes) -> tuple[dict[str, Any], bytes, bytes]:
        doc = json.loads(zlib.decompress(members))
        edit(doc["members"])
        return header, zlib.compress(json.dumps(doc).encode()), seek
    return change


def with_seek(edit: Callable[[bytearray], None]) -> Callable[..., Any]:
    def change(header: dict[str, Any], members: bytes, seek: bytes) -> tuple[dict[str, Any], bytes, bytes]:
        raw = bytearray(zlib.decompress(seek))
        edit(raw)
        return header, members, zlib.compress(bytes(raw))
    return change


# ---------------------------------------------------------------- the format on its own

def test_round_trip_keeps_members_and_seek_points() -> None:
    archive, members = shard()
    index = build_index(Source(archive), "gzip", ARCHIVE, Limits())
    back = decode(blob(), B, ARCHIVE, "e1", len(archive))
    assert back.members == index.members and back.gzip_index == index.gzip_index
    assert (back.format, back.uncompressed_size) == ("gzip", index.uncompressed_size)
    assert len(blob()) < len(archive) // 25  # windows of 64 seek points, names, numbers


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
def test_the_index_of_a_tar_cut_inside_a_member_is_accepted(fmt: str) -> None:
    """Before, the cut member was indexed past the archive's end: every other machine
    refused the published index ('lies where no member can be') and published its own."""
    tar, members = random_tar(3, 3, 100_000)
    cut = tar[:tarfile_members(tar)[-1].offset + 50_000]  # the last member loses its tail
    archive = gzip.compress(cut, 1, mtime=0) if fmt == "gzip" else cut
    index = build_index(Source(archive), None, "s.tar", Limits())
    back = decode(encode(index, B, "s.tar", "e1", len(archive)), B, "s.tar", "e1", len(archive))
    assert [m.path for m in back.members] == list(members)[:2] == [m.path for m in index.members]
    assert back.skipped_count == 1


@pytest.mark.parametrize("archive", [gzip.compress(b"", mtime=0), gzip.compress(bytes(10240), mtime=0),
                                     bytes(10240)], ids=["empty-gzip", "empty-tar-gzip", "empty-tar"])
def test_the_index_of_an_empty_archive_is_accepted(archive: bytes) -> None:
    """A gzip of zero bytes has no seek point at all: every other machine refused its index
    ('seek points describe another stream') and published its own again, forever."""
    index = build_index(Source(archive), None, "e.tar.gz", Limits())
    back = decode(encode(index, B, "e.tar.gz", "e1", len(archive)), B, "e.tar.gz", "e1", len(archive))
    assert back.members == [] and back.uncompressed_size == index.uncompressed_size


def test_an_index_of_the_spacing_before_2026_12_04_still_serves() -> None:
    """Seek points 2 MiB apart (what a 64 MiB archive got before SMALL_POINTS went from 16
    to 128) are accepted and read with; a spacing no version makes is refused."""
    archive, members = shard()
    legacy = gzip_spacing(len(archive), LEGACY_SMALL_POINTS)
    assert legacy == 2 << 20 and gzip_spacing(len(archive)) == 1 << 20
    old = build_index(Source(archive), "gzip", ARCHIVE, Limits(), spacing=legacy)
    back = decode(encode(old, B, ARCHIVE, "e1", len(archive)), B, ARCHIVE, "e1", len(archive))
    assert back.spacing == legacy and back.gzip_index == old.gzip_index
    last = back.members[-1]
    assert inflate_member(Source(archive), back, last, 0, last.size) == members[last.path]
    other = build_index(Source(archive), "gzip", ARCHIVE, Limits(), spacing=512 << 10)
    with pytest.raises(Rejected, match="describe another stream"):
        decode(encode(other, B, ARCHIVE, "e1", len(archive)), B, ARCHIVE, "e1", len(archive))


def shift_first(members: list[list[Any]]) -> None:
    members[0][1] += 512


def swap_order(members: list[list[Any]]) -> None:
    members[0], members[1] = members[1], members[0]


def unsafe_path(members: list[list[Any]]) -> None:
    members[0][0] = "../../etc/passwd"


def past_the_end(members: list[list[Any]]) -> None:
    members[-1][2] = 1 << 40


def points(count: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        struct.pack_into("<I", raw, 31, count)
    return edit


def window(size: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        struct.pack_into("<I", raw, 27, size)
    return edit


def point_outside(raw: bytearray) -> None:
    struct.pack_into("<Q", raw, 35 + 18 * 2, 1 << 50)  # the third point's compressed offset


def bad_bits(raw: bytearray) -> None:
    raw[35 + 18 * 2 + 16] = 9


def short_window(raw: bytearray) -> None:
    del raw[-100:]


@pytest.mark.parametrize("tamper,reason", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
    (lambda b: b.replace(b'"version":1', b'"version":2', 1), "format version"),
    (lambda b: b"not an index" + b, "not an s3fuse archive index"),
    (lambda b: b[:2000], "payload of"),
    (lambda b: reseal(b, with_members(shift_first)), "lies where no member can be"),
    (lambda b: reseal(b, with_members(swap_order)), "lies where no member can be"),
    (lambda b: reseal(b, with_members(unsafe_path)), "malformed"),
    (lambda b: reseal(b, with_members(past_the_end)), "malformed|lies where"),
    (lambda b: reseal(b, with_seek(points(1 << 31))), "describe another stream"),
    (lambda b: reseal(b, with_seek(points(3))), "do not add up"),
    (lambda b: reseal(b, with_seek(points(0))), "describe another stream"),
    (lambda b: reseal(b, with_seek(window(1 << 30))), "describe another stream"),
    (lambda b: reseal(b, with_seek(point_outside)), "out of order or outside"),
    (lambda b: reseal(b, with_seek(bad_bits)), "out of order or outside"),
    (lambda b: reseal(b, with_seek(short_window)), "do not add up"),
    (lambda b: reseal(b, lambda h, m, s: (h, m, zlib.compress(bytes(64 << 20)))), "allowance"),
    (lambda b: reseal(b, lambda h, m, s: (h, zlib.compress(b"[" * 100000), s)), "malformed"),
    (lambda b: reseal(b, lambda h, m, s: ({**h, "format": "tar"}, m, s)), "impossible"),
    (lambda b: reseal(b, lambda h, m, s: ({**h, "size": float(h["size"])}, m, s)), "malformed"),
    (lambda b: reseal(b, lambda h, m, s: ({**h, "skipped_count": 10**30}, m, s)), "more than a tar"),
], ids=["flipped-byte", "version", "magic", "truncated", "member-shifted", "member-order",
        "member-path", "member-size", "point-count-huge", "point-count-short", "point-count-none", "window-size",
        "point-outside", "point-bits", "window-short", "seek-bomb", "members-deep", "format",
        "size-float", "skipped-count"])
def test_a_tampered_index_is_rejected(tamper: Callable[[bytes], bytes], reason: str) -> None:
    archive, _ = shard()
    with pytest.raises(Rejected, match=reason) as caught:
        decode(tamper(blob()), B, ARCHIVE, "e1", len(archive))
    assert not caught.value.stale


def test_another_version_is_stale_and_an_oversized_blob_is_not_read() -> None:
    archive, _ = shard()
    for etag, size in (("e2", len(archive)), ("e1", len(archive) + 1)):
        with pytest.raises(Rejected) as caught:
            decode(blob(), B, ARCHIVE, etag, size)
        assert caught.value.stale
    with pytest.raises(Rejected, match="another object"):
        decode(blob(), B, "ml/s/other.tar.gz", "e1", len(archive))
    with pytest.raises(Rejected, match="over the"):
        decode(blob() + bytes(allowance(len(archive))), B, ARCHIVE, "e1", len(archive))


def test_the_option_is_validated() -> None:
    assert build_config({"shared_index": "auto"}).shared_index == "auto"
    assert build_config({"shared_index": SHARED}).shared_index == SHARED
    for bad in ("fleet-index", "s3://x/", "s3://bkt/a/../b", "http://bkt/p"):
        with pytest.raises(UsageError, match="shared_index|shared-index"):
            build_config({"shared_index": bad})


def test_auto_puts_indexes_beside_the_manifest() -> None:
    store = MemoryStore()
    archive = ObjectRef(B, ARCHIVE, "abc", 10)
    auto = SharedIndex(store, "auto").place(parse_manifest(f"s3://{B}/{MANIFEST}"), archive)
    name = hashlib.sha256(f"{B}/{ARCHIVE}".encode()).hexdigest()
    assert (auto.bucket, auto.key) == (B, f"ml/s/.s3fuse-index/{name}/abc.idx")
    fixed = SharedIndex(store, "s3://other/x/y/").place(parse_manifest(f"s3://{B}/{MANIFEST}"),
                                                        archive)
    assert (fixed.bucket, fixed.key) == ("other", f"x/y/{name}/abc.idx")


# ---------------------------------------------------------------- two machines, one store

class CountingStore(MemoryStore):
    """A MemoryStore that counts the bytes each GET returned, per key."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: Counter[str] = Counter()

    def get(self, bucket: str, key: str, etag: str, start: int = 0, end: int | None = None) -> bytes:
        data = super().get(bucket, key, etag, start, end)
        with self._lock:
            self.fetched[key] += len(data)
        return data


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "s3fuse")


@pytest.fixture
def store() -> CountingStore:
    memory = CountingStore()
    memory.create_bucket(B)
    archive, _ = shard()
    memory.put_object(B, ARCHIVE, archive)
    line = {"kind": "shard", "archive_key": ARCHIVE, "compression": "gzip"}
    memory.put_object(B, MANIFEST, json.dumps(line).encode() + b"\n")
    return memory


async def machine(tmp_path: Path, name: str, store: MemoryStore,
                  shared: str | None = SHARED, read_only: bool = False
                  ) -> AsyncIterator[Components]:
    cfg = Config(mountpoint=tmp_path / name / "mnt", cache_dir=tmp_path / name / "cache",
                 manifests=(parse_manifest(f"s3://{B}/{MANIFEST}", "s"),), region="us-east-1",
                 shared_index=shared, read_only=read_only)
    with ExitStack() as stack:
        parts = build(cfg, stack, store=store)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            parts.supervisor.bind(nursery)
            yield parts
            nursery.cancel_scope.cancel()


async def read_member(parts: Components, name: str) -> bytes:
    attrs = await lookup_path(parts.ops, "s", "shard.tar.gz", name)
    info = await parts.ops.open(attrs.st_ino, os.O_RDONLY, None)
    try:
        out = bytearray()
        while len(out) < attrs.st_size:
            chunk = await parts.ops.read(info.fh, len(out), 1 << 20)
            assert chunk
            out += chunk
        return bytes(out)
    finally:
        await parts.ops.release(info.fh)


async def settle(parts: Components, store: MemoryStore) -> None:
    state = await Idle(parts.supervisor, None, store.link).wait(30)
    assert state["idle"], state


async def first_machine(tmp_path: Path, store: CountingStore) -> None:
    """Machine A: indexes the shard (decompressing all of it) and publishes the index."""
    archive, members = shard()
    async for a in machine(tmp_path, "a", store):
        assert await read_member(a, "m00.bin") == members["m00.bin"]
        await settle(a, store)
    assert store.fetched[ARCHIVE] >= len(archive)
    assert [k for k in store.objects(B) if k.endswith(".idx")] == [published_key(store)]


def published_key(store: MemoryStore) -> str:
    return SharedIndex(store, SHARED).place(
        parse_manifest(f"s3://{B}/{MANIFEST}"),
        ObjectRef(B, ARCHIVE, store.head(B, ARCHIVE).etag, len(shard()[0]))).key


async def test_second_machine_fetches_the_index_and_reads_the_end(
        tmp_path: Path, store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    archive, members = shard()
    await first_machine(tmp_path, store)
    store.fetched.clear()
    before = store.request_counts()
    async for b in machine(tmp_path, "b", store):
        assert await read_member(b, LAST) == members[LAST]
        await settle(b, store)
    # the member's seek span and its blocks: at most two 8 MiB blocks of 64 MiB
    assert 0 < store.fetched[ARCHIVE] <= 16 << 20 < len(archive) // 3, store.fetched
    sent = Counter(store.request_counts()) - Counter(before)
    assert sent["PutObject"] == 0  # nothing published again
    assert sent["GetObject"] <= 2 + 1 + 1  # blocks, the index, the manifest
    assert any("index fetched from" in r.getMessage() for r in caplog.records)


async def test_without_the_option_nothing_is_fetched_or_published(
        tmp_path: Path, store: CountingStore) -> None:
    archive, members = shard()
    async for a in machine(tmp_path, "a", store, shared=None):
        assert await read_member(a, LAST) == members[LAST]
        await settle(a, store)
    assert not [k for k in store.objects(B) if k.endswith(".idx")]
    assert store.fetched[ARCHIVE] >= len(archive)


async def test_a_read_only_mount_fetches_but_never_publishes(
        tmp_path: Path, store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    """--read-only sends no write request: it indexes locally when nothing is published,
    and uses what a read-write machine published."""
    archive, members = shard()
    before = store.request_counts()
    async for a in machine(tmp_path, "ro", store, read_only=True):
        assert await read_member(a, LAST) == members[LAST]
        await settle(a, store)
    assert store.request_counts()["PutObject"] == before["PutObject"]  # the fixture's two
    assert not [k for k in store.objects(B) if k.endswith(".idx")]
    await first_machine(tmp_path, store)  # publishes
    store.fetched.clear()
    async for b in machine(tmp_path, "ro2", store, read_only=True):
        assert await read_member(b, LAST) == members[LAST]
        await settle(b, store)
    assert store.fetched[ARCHIVE] < len(archive) // 3  # the published index served
    assert any("index fetched from" in r.getMessage() for r in caplog.records)


def ignored(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the shared index code warned (the EIO a read answered is logged apart)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith("s3fuse.tree") and "shared index" in r.getMessage()]


async def rebuilt_by_second_machine(tmp_path: Path, store: CountingStore,
                                    caplog: pytest.LogCaptureFixture, members: dict[str, bytes]) -> None:
    """Machine B ignores what is published, indexes locally, reads right, publishes anew."""
    caplog.clear()
    store.fetched.clear()
    async for b in machine(tmp_path, "b", store):
        assert await read_member(b, LAST) == members[LAST]
        await settle(b, store)
    assert store.fetched[ARCHIVE] >= len(store.objects(B)[ARCHIVE])  # decompressed here
    assert len(ignored(caplog)) == 1, ignored(caplog)
    good = store.objects(B)[published_key(store)]  # published again, and sound
    archive = store.objects(B)[ARCHIVE]
    decode(good, B, ARCHIVE, store.head(B, ARCHIVE).etag, len(archive))


async def test_a_tampered_index_is_ignored_rebuilt_and_replaced(
        tmp_path: Path, store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    await first_machine(tmp_path, store)
    key = published_key(store)
    data = bytearray(store.objects(B)[key])
    data[len(data) // 2] ^= 0x40
    store.replace(B, key, bytes(data))
    await rebuilt_by_second_machine(tmp_path, store, caplog, shard()[1])
    assert "checksum mismatch" in ignored(caplog)[0]


async def test_a_stale_index_is_ignored_rebuilt_and_replaced(
        tmp_path: Path, store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    await first_machine(tmp_path, store)
    old = store.objects(B)[published_key(store)]
    archive, members = shard(6)  # the archive is rewritten: another ETag ...
    store.replace(B, ARCHIVE, archive)
    store.replace(B, published_key(store), old)  # ... and the old index sits at its name
    await rebuilt_by_second_machine(tmp_path, store, caplog, members)
    assert "stale" in ignored(caplog)[0]


async def test_a_forged_index_never_serves_wrong_bytes(
        tmp_path: Path, store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    """Checksummed and well formed, but the last member points at other bytes of the
    archive: its tar header does not match, so that read fails (EIO) and the next one,
    after a local index, is right; the local index is published over the forged one."""
    archive, members = shard()
    await first_machine(tmp_path, store)
    key = published_key(store)

    def swap_last_two(items: list[list[Any]]) -> None:  # same sizes: only the names tell
        items[-1][0], items[-2][0] = items[-2][0], items[-1][0]
    store.replace(B, key, reseal(store.objects(B)[key], with_members(swap_last_two)))
    caplog.clear()
    async for b in machine(tmp_path, "b", store):
        with pytest.raises(pyfuse3.FUSEError):
            await read_member(b, LAST)
        assert await read_member(b, LAST) == members[LAST]
        assert await read_member(b, "m00.bin") == members["m00.bin"]
        await settle(b, store)
    assert len(ignored(caplog)) == 1 and "wrong about" in ignored(caplog)[0], ignored(caplog)
    decode(store.objects(B)[key], B, ARCHIVE, store.head(B, ARCHIVE).etag, len(archive))


async def test_a_refused_publish_is_one_line(tmp_path: Path, store: CountingStore,
                                             caplog: pytest.LogCaptureFixture) -> None:
    store.fail("PutObject", times=1, error="permanent", prefix="fleet-index/")
    archive, members = shard()
    async for a in machine(tmp_path, "a", store):
        assert await read_member(a, LAST) == members[LAST]
        await settle(a, store)
    lines = [m for m in ignored(caplog) if "not published" in m]
    assert len(lines) == 1 and "publishes no more there" in lines[0], lines
    assert not [k for k in store.objects(B) if k.endswith(".idx")]


async def test_a_missing_index_bucket_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """--shared-index to a bucket that does not exist: one warning and one PUT, not one
    per shard, also for the publishes that were queued behind the first one."""
    archive, _ = shard()
    index = build_index(Source(archive), "gzip", ARCHIVE, Limits())
    store = MemoryStore()
    store.create_bucket(B)
    manifest = parse_manifest(f"s3://{B}/{MANIFEST}", "s")
    async with trio.open_nursery() as nursery:
        background = Supervisor()
        background.bind(nursery)
        shared = SharedIndex(store, "s3://no-such-bucket/fleet", background)
        for n in range(3):  # three shards indexed at once: their publishes wait in line
            shared.publish_later(manifest, ObjectRef(B, f"ml/s/{n}.tar.gz", "e1", len(archive)),
                                 index, Limits())
        await trio.testing.wait_all_tasks_blocked()  # the publishes started: counted as busy
        state = await Idle(background, None, store.link).wait(30)
        assert state["idle"], state
        shared.publish_later(manifest, ObjectRef(B, "ml/s/later.tar.gz", "e1", len(archive)),
                             index, Limits())
        nursery.cancel_scope.cancel()
    lines = [m for m in ignored(caplog) if "not published" in m]
    assert len(lines) == 1 and "publishes no more there" in lines[0], lines
    assert store.request_counts().get("PutObject", 0) == 1


async def test_a_hung_publish_does_not_hold_the_unmount(tmp_path: Path, store: CountingStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An index PUT that never answers is abandoned when the daemon stops (best effort):
    it held the unmount for its retries (3 x --request-timeout)."""
    hung, release = threading.Event(), threading.Event()
    put = store.put_object

    def hanging_put(bucket: str, key: str, *args: Any, **kwargs: Any) -> str:
        if key.startswith("fleet-index/"):
            hung.set()
            release.wait(60)
        return put(bucket, key, *args, **kwargs)
    monkeypatch.setattr(store, "put_object", hanging_put)
    archive, members = shard()
    try:
        started = trio.current_time()
        async for a in machine(tmp_path, "a", store):
            assert await read_member(a, LAST) == members[LAST]
            await trio.to_thread.run_sync(hung.wait, 10)
            started = trio.current_time()
        assert trio.current_time() - started < 5
    finally:
        release.set()


# ---------------------------------------------------------------- through real mounts

@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.mark.mount
def test_two_mounts_share_the_index_beside_the_manifest(s3, bucket, faults, mount_factory):  # type: ignore[no-untyped-def]
    archive, members = shard()
    s3.put_object(Bucket=bucket, Key=ARCHIVE, Body=archive)
    line = {"kind": "shard", "archive_key": ARCHIVE, "compression": "gzip"}
    s3.put_object(Bucket=bucket, Key=MANIFEST, Body=json.dumps(line).encode() + b"\n")
    args = ("--manifest", f"s=s3://{bucket}/{MANIFEST}", "--shared-index", "auto")
    a = mount_factory(*args, endpoint=faults.endpoint, name="a")
    assert a.path("s", "shard.tar.gz", "m00.bin").read_bytes() == members["m00.bin"]
    a.assert_idle()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="ml/s/.s3fuse-index/")
    assert [o["Key"].endswith(".idx") for o in listed.get("Contents", [])] == [True]
    assert fetched(faults, "shard.tar.gz", len(archive)) >= len(archive)
    a.stop()

    faults.seen.clear()
    b = mount_factory(*args, endpoint=faults.endpoint, name="b")
    assert b.path("s", "shard.tar.gz", LAST).read_bytes() == members[LAST]
    b.assert_idle()
    assert fetched(faults, "shard.tar.gz", len(archive)) <= 16 << 20
    assert "index fetched from" in b.log()
    assert faults.count("PUT", r"\.s3fuse-index/") == 0


async def test_a_handle_opened_on_a_wrong_index_fails_without_rebuilding_again(
        tmp_path: Path, store: CountingStore) -> None:
    """Handles opened before the index proved wrong keep its offsets: each of their reads
    threw away the index built here since, indexed the archive again and published it
    again. The archive is distrusted once; new opens read it right, and the old handle
    never serves the bytes at the wrong index's offset."""
    archive, members = shard()
    await first_machine(tmp_path, store)
    key = published_key(store)

    def swap_last_two(items: list[list[Any]]) -> None:
        items[-1][0], items[-2][0] = items[-2][0], items[-1][0]
    store.replace(B, key, reseal(store.objects(B)[key], with_members(swap_last_two)))
    seen: list[Any] = []

    async def read_held(b: Components, fh: int) -> str:
        try:
            data = await b.ops.read(fh, 0, 1 << 20)
        except pyfuse3.FUSEError as exc:
            return f"errno {exc.errno}"
        return "right" if data and data == members[LAST][:len(data)] else "wrong"
    async for b in machine(tmp_path, "b", store):
        attrs = await lookup_path(b.ops, "s", "shard.tar.gz", LAST)
        held = await b.ops.open(attrs.st_ino, os.O_RDONLY, None)
        seen.append(await read_held(b, held.fh))
        seen.append(await read_member(b, LAST) == members[LAST])  # indexed here
        await settle(b, store)
        fetched, puts = store.fetched[ARCHIVE], store.request_counts()["PutObject"]
        for _ in range(3):
            seen.append(await read_held(b, held.fh))
            seen.append(await read_member(b, LAST) == members[LAST])
        await settle(b, store)
        await b.ops.release(held.fh)
        seen.append(store.fetched[ARCHIVE] - fetched < len(archive))  # not indexed again
        seen.append(store.request_counts()["PutObject"] - puts)       # nor published again
    # the held handle: failed, or served the member's bytes another handle read: never
    # bytes of the wrong index's place
    assert seen[:2] == ["errno 5", True] and seen[-2:] == [True, 0], seen
    assert set(seen[2:-2:2]) <= {"errno 5", "right"} and all(seen[3:-2:2]), seen


async def test_an_index_fetchers_would_refuse_is_not_published(
        tmp_path: Path, store: CountingStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """(Seek points denser than a fetcher takes, from an archive of many tiny gzip
    streams): every fetcher refused it, indexed the archive and published it again."""
    import s3fuse.tree.sharedindex as sharedindex

    def refuse(*args: Any) -> None:
        raise sharedindex.Rejected("seek points describe another stream")
    monkeypatch.setattr(sharedindex, "decode", refuse)
    archive, members = shard()
    async for a in machine(tmp_path, "a", store):
        assert await read_member(a, "m00.bin") == members["m00.bin"]
        await settle(a, store)
    assert not [k for k in store.objects(B) if k.endswith(".idx")]
    assert "a fetcher would refuse it" in caplog.text


async def test_a_plain_tars_member_and_its_header_are_one_get(tmp_path: Path) -> None:
    """A machine that fetched a plain tar's index checks each member's tar header before
    serving it: that header was its own GET, two per member read."""
    store = CountingStore()
    store.create_bucket(B)
    tar, members = random_tar(9, 40, 3000)
    store.put_object(B, "ml/s/shard.tar", tar)
    line = {"kind": "shard", "archive_key": "ml/s/shard.tar"}
    store.put_object(B, MANIFEST, json.dumps(line).encode() + b"\n")
    got: dict[str, Any] = {}

    async def read_all(parts: Components) -> bool:
        ok = True
        for name, body in sorted(members.items()):
            attrs = await lookup_path(parts.ops, "s", "shard.tar", name)
            info = await parts.ops.open(attrs.st_ino, os.O_RDONLY, None)
            ok &= bytes(await parts.ops.read(info.fh, 0, 1 << 20)) == body
            await parts.ops.release(info.fh)
        return ok
    async for a in machine(tmp_path, "a", store):
        got["a"] = await read_all(a)
        await settle(a, store)
    gets = store.request_counts()["GetObject"]
    async for b in machine(tmp_path, "b", store):
        got["b"] = await read_all(b)
        await settle(b, store)
    got["gets"] = store.request_counts()["GetObject"] - gets
    assert got["a"] and got["b"]
    assert got["gets"] <= len(members) + 5, got  # the manifest, the index, one per member
