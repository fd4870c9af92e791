"""s3fuse.archive on well-formed archives: exact member tables and bytes in every
format, and how few source bytes indexing and member reads cost."""
from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import os
import random
import sqlite3
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest

from s3fuse.archive import ArchiveError, ArchiveIndex, Limits, Member, build_index, iter_decompressed, read_member
from s3fuse.archive import index as archive_index
from s3fuse.archive.compression import resolve_format, sniff
from s3fuse.archive.index import gzip_readers_bytes, gzip_window_bytes

MiB = 1 << 20
MTIME = 1_700_000_000
BIG = "big/twenty.bin"

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "tar": lambda raw: raw,
    "gzip": lambda raw: gzip.compress(raw, 1, mtime=0),
    "xz": lambda raw: lzma.compress(raw, preset=0),
    "bz2": lambda raw: bz2.compress(raw, 1),
}


class MemSource:
    """In-memory RangeSource that counts reads and bytes read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.reads = 0
        self.bytes_read = 0

    def read(self, offset: int, size: int) -> bytes:
        chunk = self.data[offset : offset + size]
        self.reads += 1
        self.bytes_read += len(chunk)
        return chunk

    def reset(self) -> None:
        self.reads = self.bytes_read = 0


def make_tar(files: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT, dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for i, (name, data) in enumerate(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME + i
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tarfile_members(raw: bytes) -> list[Member]:
    """The oracle: where Python's tarfile says each regular file's data lies."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [Member(i.name, i.offset_data, i.size, int(i.mtime)) for i in tar if i.isreg()]


def small_files(count: int, seed: int = 7) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        f"small/{i // 100:02d}/item-{i:04d}.json": rng.randbytes(24).hex().encode() * rng.randint(0, 60)
        for i in range(count)
    }


def mixed_files() -> dict[str, bytes]:
    big = bytearray(20 * MiB)  # mostly zeros so xz and bz2 stay fast
    for at in range(0, len(big), 256 << 10):
        big[at : at + 4096] = os.urandom(4096)
    return {
        BIG: bytes(big),
        "empty.txt": b"",
        "deep/" + "sub/" * 5 + "n" * 150 + ".txt": b"long name",
        "unicode/" + "\u00e9" * 60 + ".txt": b"non-ascii name",
        **small_files(2000),
    }


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return mixed_files()


@pytest.fixture(scope="module", params=[tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def raw_tar(request: pytest.FixtureRequest, files: dict[str, bytes]) -> bytes:
    return make_tar(files, request.param, dirs=("small/", "deep/"))


@pytest.mark.parametrize("fmt", ["tar", "gzip", "xz", "bz2"])
def test_member_table_and_bytes_are_exact(fmt: str, raw_tar: bytes, files: dict[str, bytes]) -> None:
    source = MemSource(COMPRESS[fmt](raw_tar))
    index = build_index(source, None, "shard", Limits())

    assert index.format == fmt
    assert index.members == tarfile_members(raw_tar)
    assert {m.path for m in index.members} == set(files)
    assert index.skipped == []
    assert index.uncompressed_size == len(raw_tar)
    assert (index.gzip_index is not None) == (fmt == "gzip")

    big = next(m for m in index.members if m.path == BIG)
    assert read_member(source, index, big, 7_000_000, 1000) == files[BIG][7_000_000:7_001_000]
    assert read_member(source, index, big, big.size + 5, 100) == b""
    if fmt in ("tar", "gzip"):
        for member in index.members:
            assert read_member(source, index, member, 0, member.size) == files[member.path]
        assert read_member(source, index, big, big.size - 10, 100) == files[BIG][-10:]
    else:  # each read decompresses from the start: check the whole stream, then one read
        assert b"".join(chunk for _, chunk in iter_decompressed(source, fmt, Limits())) == raw_tar
        last = index.members[-1]
        assert read_member(source, index, last, 0, last.size) == files[last.path]


def test_plain_tar_hops_over_big_members() -> None:
    raw = make_tar({f"part{i}.bin": bytes(20 * MiB) for i in range(4)})
    source = MemSource(raw)
    index = build_index(source, None, "shard.tar", Limits())
    assert [m.size for m in index.members] == [20 * MiB] * 4
    assert source.reads <= 6
    assert source.bytes_read < len(raw) / 10


def test_plain_tar_of_small_members_costs_few_large_reads() -> None:
    raw = make_tar(small_files(2000))
    source = MemSource(raw)
    index = build_index(source, None, "shard.tar", Limits())
    assert len(index.members) == 2000
    assert source.reads <= len(raw) // MiB + 3


def test_gzip_member_read_inflates_from_a_nearby_seek_point() -> None:
    payload = os.urandom(4 * MiB)
    raw = make_tar({f"m{i:02d}.bin": payload[i:] + payload[:i] for i in range(16)})  # 64 MiB
    blob = gzip.compress(raw, 0, mtime=0)  # stored blocks: fast, and compressed size = uncompressed
    source = MemSource(blob)
    index = build_index(source, None, "shard.tar.gz", Limits())
    # 64 seek points (1 MiB apart: gzip_spacing), each with its 32 KiB window: ~3%
    assert index.gzip_index is not None and len(index.gzip_index) < len(blob) / 25

    for member in (index.members[-1], index.members[7]):
        source.reset()
        got = read_member(source, index, member, member.size - 100_000, 100_000)
        assert got == raw[member.offset + member.size - 100_000 : member.offset + member.size]
        assert source.bytes_read < len(blob) / 6


def test_index_fields_round_trip_through_sqlite(raw_tar: bytes, files: dict[str, bytes]) -> None:
    source = MemSource(gzip.compress(raw_tar, 1, mtime=0))
    built = build_index(source, "gzip", "shard.tar.gz", Limits())

    db = sqlite3.connect(":memory:")
    db.execute("create table member (path text, offset integer, size integer, mtime integer)")
    db.execute("create table archive (format text, gzip_index blob, size integer)")
    db.executemany("insert into member values (?, ?, ?, ?)", built.members)
    db.execute("insert into archive values (?, ?, ?)", (built.format, built.gzip_index, built.uncompressed_size))
    fmt, blob, size = db.execute("select * from archive").fetchone()
    members = [Member(*row) for row in db.execute("select * from member order by rowid")]
    restored = ArchiveIndex(fmt, members, [], blob, size)

    assert restored == built
    for member in restored.members[::50]:
        assert read_member(source, restored, member, 0, member.size) == files[member.path]


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bz2"])
def test_concatenated_streams(fmt: str) -> None:
    files = small_files(300)
    raw = make_tar(files)
    cut = len(raw) // 2 + 123  # inside some member
    source = MemSource(COMPRESS[fmt](raw[:cut]) + COMPRESS[fmt](raw[cut:]))
    index = build_index(source, None, "shard", Limits())
    assert index.members == tarfile_members(raw)
    assert b"".join(c for _, c in iter_decompressed(source, fmt, Limits())) == raw
    for member in index.members[140:160]:
        assert read_member(source, index, member, 0, member.size) == files[member.path]


def test_magic_bytes_override_the_declaration(caplog: pytest.LogCaptureFixture) -> None:
    files = small_files(5)
    raw = make_tar(files)
    with caplog.at_level(logging.INFO, logger="s3fuse.archive"):
        plain = build_index(MemSource(raw), "gzip", "shard.tar.gz", Limits())
        gzipped = build_index(MemSource(COMPRESS["gzip"](raw)), None, "shard.tar", Limits())
    assert (plain.format, gzipped.format) == ("tar", "gzip")
    assert "declared gzip but the bytes are tar" in caplog.text
    assert "declared tar but the bytes are gzip" in caplog.text
    assert plain.members == gzipped.members == tarfile_members(raw)

    assert resolve_format("bzip2", "x", COMPRESS["bz2"](raw)) == ("bz2", None)
    assert resolve_format(None, "x.tar.xz", COMPRESS["xz"](raw)) == ("xz", None)
    assert resolve_format(None, "no-suffix", raw) == ("tar", None)
    assert resolve_format("xz", "x", raw)[1] == "x: declared xz but the bytes are tar"
    with pytest.raises(ArchiveError, match="not a tar"):
        resolve_format("zstd", "x.tar.zst", b"\x28\xb5\x2f\xfd" + bytes(600))


def test_sniff() -> None:
    raw = make_tar({"a": b"x"})
    assert sniff(raw[:512]) == "tar"
    assert sniff(bytes(1024)) == "tar"  # an empty archive
    assert sniff(b"\x1f\x8b\x08" + bytes(9)) == "gzip"
    assert sniff(b"\xfd7zXZ\x00" + bytes(9)) == "xz"
    assert sniff(b"BZh9" + bytes(9)) == "bz2"
    assert sniff(b"BZh0" + bytes(9)) == "unknown"
    assert sniff(b"hello") == "unknown"
    bz2_named = make_tar({"BZh91AY": b"x"})  # a tar whose first name looks like bz2 magic
    assert sniff(bz2_named[:512]) == "tar"


@pytest.mark.parametrize("fmt", ["tar", "gzip", "xz", "bz2"])
def test_empty_archive_has_no_members(fmt: str) -> None:
    index = build_index(MemSource(COMPRESS[fmt](make_tar({}))), None, "empty", Limits())
    assert (index.format, index.members, index.skipped) == (fmt, [], [])


def test_concurrent_gzip_member_reads() -> None:
    files = small_files(400)
    source = MemSource(gzip.compress(make_tar(files), 1, mtime=0))
    index = build_index(source, None, "shard.tar.gz", Limits(), spacing=256 << 10)
    members = index.members * 3
    random.Random(1).shuffle(members)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda m: read_member(source, index, m, 0, m.size), members))
    assert got == [files[m.path] for m in members]


class GatedSource(MemSource):
    """A MemSource whose reads record how many run at once; with `meet`, each thread's
    first read waits there until `meet.parties` threads are inside reads together."""

    def __init__(self, data: bytes, meet: threading.Barrier | None = None) -> None:
        super().__init__(data)
        self.meet = meet
        self.inside = self.most_inside = 0
        self._count = threading.Lock()
        self._met = threading.local()

    def read(self, offset: int, size: int) -> bytes:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.meet is not None and not getattr(self._met, "done", False):
                self._met.done = True
                self.meet.wait()
            return super().read(offset, size)
        finally:
            with self._count:
                self.inside -= 1


def test_concurrent_member_reads_of_one_gzip_shard_do_not_queue(raw_tar: bytes,
                                                                 files: dict[str, bytes]) -> None:
    """DataLoader workers reading members of one .tar.gz at once each inflate with their
    own restored reader: both are inside a source read together (with one reader and a
    lock, the second waited for the first, S3 fetches under the lock included)."""
    blob = gzip.compress(raw_tar, 1, mtime=0)
    index = build_index(MemSource(blob), "gzip", "shard.tar.gz", Limits())
    source = GatedSource(blob, threading.Barrier(2, timeout=10))
    members = [m for m in index.members if m.size][:2]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda m: read_member(source, index, m, 0, m.size), members))
    assert got == [files[m.path] for m in members]
    assert source.most_inside == 2
    assert gzip_readers_bytes(index) == 2 * gzip_window_bytes(index)


def test_restored_gzip_readers_are_capped_by_their_windows(raw_tar: bytes,
                                                            files: dict[str, bytes]) -> None:
    """A big shard's reader holds MiBs of windows: no more readers than GZIP_READERS_BYTES
    allows (at least one), however many threads read; each gets the right bytes."""
    blob = gzip.compress(raw_tar, 1, mtime=0)
    index = build_index(MemSource(blob), "gzip", "shard.tar.gz", Limits())
    big = ArchiveIndex("gzip", index.members, [], index.gzip_index,
                       archive_index.GZIP_READERS_BYTES // archive_index.GZIP_WINDOW
                       * archive_index.DEFAULT_SPACING // 2)  # each reader: half the budget
    source = GatedSource(blob)
    members = [m for m in index.members if m.size] * 3
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda m: read_member(source, big, m, 0, m.size), members))
    assert got == [files[m.path] for m in members]
    assert big._gzip_readers is not None and big._gzip_readers.count == 1
    assert source.most_inside == 1
    assert gzip_readers_bytes(big) == gzip_window_bytes(big) > archive_index.GZIP_READERS_BYTES // 2


def test_small_gzip_shards_get_closer_seek_points() -> None:
    """A random member of a small .tar.gz inflates from a point at most MIN_SPACING
    before it, not DEFAULT_SPACING: shards up to 32 MiB get 256 KiB, a 64 MiB one 512 KiB,
    a 100 MiB one 1 MiB, 256 MiB and over 2 MiB (before 2026-12-04: 2 MiB from 32 MiB,
    which indexes of that time keep: gzip_spacings)."""
    assert archive_index.gzip_spacing(2 * MiB) == archive_index.gzip_spacing(32 * MiB) \
        == archive_index.MIN_SPACING == 256 << 10
    assert archive_index.gzip_spacing(64 * MiB) == 512 << 10
    assert archive_index.gzip_spacing(100 * MiB) == 1 * MiB
    assert archive_index.gzip_spacing(256 * MiB) == archive_index.gzip_spacing(1 << 30) \
        == archive_index.DEFAULT_SPACING
    assert archive_index.gzip_spacings(8 * MiB) == (256 << 10, 512 << 10)
    assert archive_index.gzip_spacings(32 * MiB) == (256 << 10, archive_index.DEFAULT_SPACING)
    payload = os.urandom(256 << 10)
    raw = make_tar({f"m{i:02d}.bin": payload[i:] + payload[:i] for i in range(8)})  # 2 MiB
    blob = gzip.compress(raw, 0, mtime=0)
    source = MemSource(blob)
    index = build_index(source, None, "shard.tar.gz", Limits())
    assert index.spacing == archive_index.MIN_SPACING
    member = index.members[-1]
    source.reset()
    assert read_member(source, index, member, 0, member.size) == raw[member.offset:member.offset + member.size]
    assert source.bytes_read < member.size + 2 * archive_index.MIN_SPACING


def test_a_stored_index_tells_its_own_spacing() -> None:
    """An index stored before SMALL_POINTS changed keeps its seek points: the memory its
    readers are allowed is estimated from those, not from today's spacing."""
    raw = make_tar({f"m{i:02d}.bin": os.urandom(256 << 10) for i in range(40)})  # 10 MiB
    blob = gzip.compress(raw, 0, mtime=0)
    legacy = archive_index.gzip_spacing(len(blob), archive_index.LEGACY_SMALL_POINTS)
    built = build_index(MemSource(blob), None, "shard.tar.gz", Limits(), spacing=legacy)
    assert built.gzip_index is not None
    assert legacy != archive_index.gzip_spacing(len(blob))
    assert archive_index.stored_spacing(built.gzip_index, len(blob)) == legacy
    assert archive_index.stored_spacing(b"not zlib", len(blob)) == archive_index.gzip_spacing(len(blob))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("length", [98, 99, 100, 101])
def test_a_member_header_is_known_when_dot_slash_cuts_its_name(fmt: int, length: int) -> None:
    """`tar -C dir .` names members `./path`: with a path of 99 or 100 characters the
    header's name field holds `./` and the path cut at 100 bytes (an extension header
    has it whole). A shared index naming that member was refused as wrong (EIO) on every
    machine that fetched it."""
    from s3fuse.archive.tar import BLOCK, heads_member
    path = "clips/" + "h" * (length - 6)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as archive:
        info = tarfile.TarInfo("./" + path)
        info.size = 10
        archive.addfile(info, io.BytesIO(b"0123456789"))
    data = buf.getvalue()
    offset = data.index(b"0123456789")
    assert heads_member(data[offset - BLOCK:offset], path, 10)
    assert not heads_member(data[offset - BLOCK:offset], "clips/other", 10)
