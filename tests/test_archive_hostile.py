"""s3fuse.archive against hostile and broken archives: unsafe names, special
entries, corruption, truncation, caps and decompression bombs."""
from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import tarfile
import time
import tracemalloc
import zlib
from typing import Any

import pytest

from s3fuse.archive import ArchiveError, ArchiveIndex, Limits, build_index, read_member
from s3fuse.names import safe_member_path
from tests.test_archive import COMPRESS, MTIME, MemSource, make_tar, small_files, tarfile_members

MiB = 1 << 20


def header(name: bytes, kind: bytes = b"0", size: int = 0, *, size_field: bytes | None = None,
           prefix: bytes = b"", poke: dict[int, int] | None = None) -> bytes:
    """One ustar header block with a correct checksum, for what tarfile refuses to write."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"%011o\0" % MTIME
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[345 : 345 + len(prefix)] = prefix
    for at, value in (poke or {}).items():
        block[at] = value
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def entry(name: bytes, data: bytes = b"", kind: bytes = b"0", **kw: Any) -> bytes:
    return header(name, kind, len(data), **kw) + pad(data)


def pax(records: dict[bytes, bytes], kind: bytes = b"x") -> bytes:
    payload = b""
    for key, value in records.items():
        body = b" %s=%s\n" % (key, value)
        length = len(body) + 1
        length += len(str(length + len(str(length)))) - 1  # the length counts its own digits
        payload += b"%d%s" % (length, body)
    return entry(b"PaxHeader", payload, kind)


END = bytes(1024)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.txt", "a/b.txt"),
        ("./a/b.txt", "a/b.txt"),
        ("dir/", "dir"),
        ("/etc/passwd", None),
        ("../x", None),
        ("a/../../x", None),
        ("a/./b", None),
        ("a//b", None),
        ("././a", None),
        ("./", None),
        ("", None),
        ("a\0b", None),
        ("n" * 255, "n" * 255),
        ("n" * 256, None),
        ("\u00e9" * 128, None),  # 256 bytes in UTF-8
        ("/".join(["d" * 200] * 20), "/".join(["d" * 200] * 20)),  # 4019 bytes
        ("/".join(["d" * 200] * 21), None),  # 4220 bytes
        ("bad\udcff", None),  # not encodable
    ],
)
def test_safe_member_path(name: str, expected: str | None) -> None:
    assert safe_member_path(name) == expected


def hostile_archive() -> bytes:
    return b"".join([
        entry(b"ok/first.txt", b"first"),
        entry(b"/etc/passwd", b"root"),
        entry(b"../evil", b"evil"),
        entry(b"a/../../b", b"evil"),
        entry(b"./dotted.txt", b"dotted"),
        entry(b"dir/", kind=b"5"),
        header(b"link", b"2"),
        header(b"hardlink", b"1", 1000),  # a size but, like every link, no data blocks
        header(b"tty", b"3"),
        header(b"disk", b"4"),
        header(b"pipe", b"6"),
        entry(b"sparse", b"s" * 600, b"S"),
        header(b"sparse-chained", b"S", 600, poke={482: 1})  # two extension blocks before the data
        + bytes(504) + b"\x01" + bytes(7) + bytes(512) + pad(b"s" * 600),
        entry(b"weird", b"w" * 600, b"Z"),
        pax({b"path": b"nul\0inside"}), entry(b"placeholder", b"nul"),
        pax({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"}), entry(b"pax-sparse", b"map"),
        entry(b"bad\xff.txt", b"latin-1"),
        pax({b"size": b"11", b"mtime": b"1234.5"}), entry(b"pax-size.txt") + pad(b"hello world"),
        entry(b"b256.txt", size_field=b"\x80" + (7).to_bytes(11, "big")) + pad(b"base256"),
        entry(b"name.txt", b"prefixed", prefix=b"some/prefix"),
        entry(b"dup.txt", b"first version"),
        entry(b"dup.txt", b"second version"),
        entry(b"ok/last.txt", b"last"),
        END,
    ])


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
def test_hostile_entries_are_skipped_and_reported(fmt: str) -> None:
    source = MemSource(COMPRESS[fmt](hostile_archive()))
    index = build_index(source, None, "hostile", Limits())

    got = {m.path: read_member(source, index, m, 0, m.size) for m in index.members}
    assert got == {
        "ok/first.txt": b"first",
        "dotted.txt": b"dotted",
        "pax-size.txt": b"hello world",
        "b256.txt": b"base256",
        "some/prefix/name.txt": b"prefixed",
        "dup.txt": b"second version",
        "ok/last.txt": b"last",
    }
    assert next(m for m in index.members if m.path == "pax-size.txt").mtime == 1234
    assert index.skipped == [
        ("/etc/passwd", "unsafe path"),
        ("../evil", "unsafe path"),
        ("a/../../b", "unsafe path"),
        ("link", "symbolic link"),
        ("hardlink", "hard link"),
        ("tty", "character device"),
        ("disk", "block device"),
        ("pipe", "FIFO"),
        ("sparse", "GNU sparse file"),
        ("sparse-chained", "GNU sparse file"),
        ("weird", "unsupported entry type b'Z'"),
        ("nul\0inside", "unsafe path"),
        ("pax-sparse", "GNU sparse file"),
        ("bad\ufffd.txt", "name is not UTF-8"),
        ("dup.txt", "duplicate"),
    ]


@pytest.mark.parametrize(("later", "reason"), [
    (entry(b"d.txt", kind=b"2", poke={157: ord("x")}), "symbolic link"),
    (entry(b"./d.txt", kind=b"1", poke={157: ord("x")}), "hard link"),
    (entry(b"d.txt/", kind=b"5"), "directory"),
    (entry(b"d.txt", kind=b"6"), "FIFO"),
], ids=["symlink", "hard-link", "directory", "fifo"])
def test_a_later_entry_that_is_no_file_replaces_an_earlier_file(later: bytes, reason: str) -> None:
    """The last entry of a name wins, as tar -x and tarfile.getmember take it: a file
    followed by a symlink (or directory...) of its name is not served; before, the old
    bytes were. A regular file after both wins again."""
    raw = entry(b"d.txt", b"old") + later + entry(b"other.txt", b"other") + END
    index = build_index(MemSource(raw), None, "x.tar", Limits())
    assert [m.path for m in index.members] == ["other.txt"]
    assert ("d.txt", f"replaced by a later {reason}") in index.skipped
    source = MemSource(raw[:-len(END)] + entry(b"d.txt", b"new") + END)
    index = build_index(source, None, "x.tar", Limits())
    assert [m.path for m in index.members] == ["other.txt", "d.txt"]
    assert read_member(source, index, index.members[1], 0, 3) == b"new"


def test_gnu_long_link_and_global_pax_headers() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        link = tarfile.TarInfo("l" * 120)
        link.type, link.linkname = tarfile.SYMTYPE, "t" * 200  # GNU 'K' + 'L' headers
        tar.addfile(link)
        info = tarfile.TarInfo("after.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    gnu = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tar:
        tar.addfile(info, io.BytesIO(b"ok"))
    with_global = buf.getvalue()
    assert b"g" in with_global[156:157]

    for raw in (gnu, with_global):
        source = MemSource(raw)
        index = build_index(source, None, "x.tar", Limits())
        assert [m.path for m in index.members] == ["after.txt"]
        assert read_member(source, index, index.members[0], 0, 2) == b"ok"
    assert build_index(MemSource(gnu), None, "x.tar", Limits()).skipped == [("l" * 120, "symbolic link")]


def corrupt(raw: bytes, at: int) -> bytes:
    return raw[:at] + b"\x01" + raw[at + 1 :]


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
def test_corrupt_header_checksum(fmt: str) -> None:
    files = {"a.txt": b"a" * 700, "b.txt": b"b" * 10, "c.txt": b"c"}
    raw = make_tar(files, tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError, match="corrupt tar header at offset 0") as first:
        build_index(MemSource(COMPRESS[fmt](corrupt(raw, 20))), None, "x", Limits())
    assert first.value.partial is None

    third = tarfile_members(raw)[2].offset - 512
    source = MemSource(COMPRESS[fmt](corrupt(raw, third + 20)))
    with pytest.raises(ArchiveError, match=f"corrupt tar header at offset {third}") as later:
        build_index(source, None, "x", Limits())
    partial = later.value.partial
    assert partial is not None and [m.path for m in partial.members] == ["a.txt", "b.txt"]
    assert [read_member(source, partial, m, 0, m.size) for m in partial.members] == [files["a.txt"], files["b.txt"]]


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
@pytest.mark.parametrize("cut", [0, 50_000, 100_000 - 1])
def test_a_tar_cut_inside_member_data_drops_only_that_member(fmt: str, cut: int) -> None:
    """As `tar -t` lists the members before its "Unexpected EOF": the cut one is not shown
    (skipped, so reported), never listed at a size no read can deliver. A gzip stream that
    ends cleanly around a cut tar is the same case."""
    files = {"a.txt": b"a" * 5000, "b.bin": b"b" * 100_000}
    raw = make_tar(files)
    source = MemSource(COMPRESS[fmt](raw[: tarfile_members(raw)[1].offset + cut]))
    index = build_index(source, None, "x", Limits())
    assert [m.path for m in index.members] == ["a.txt"]
    assert index.skipped == [("b.bin", f"archive ends inside its data ({cut} of 100000 bytes)")]
    assert index.skipped_count == 1
    assert read_member(source, index, index.members[0], 0, 5000) == files["a.txt"]


def test_a_member_whose_data_ends_with_the_archive_is_kept() -> None:
    """Only missing data drops a member: padding and end-of-archive blocks may be cut."""
    files = {"a.txt": b"a" * 5000, "b.bin": b"b" * 1000}
    raw = make_tar(files)
    source = MemSource(raw[: tarfile_members(raw)[1].offset + 1000])
    index = build_index(source, None, "x.tar", Limits())
    assert [m.path for m in index.members] == ["a.txt", "b.bin"] and not index.skipped
    b = index.members[1]
    assert read_member(source, index, b, 0, b.size) == files["b.bin"]


def test_tar_cut_inside_a_header() -> None:
    raw = make_tar({"a.txt": b"a", "b.txt": b"b"})
    with pytest.raises(ArchiveError, match="truncated tar header at offset 1024") as err:
        build_index(MemSource(raw[:1024 + 100]), None, "x.tar", Limits())
    assert err.value.partial is not None and [m.path for m in err.value.partial.members] == ["a.txt"]


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bz2"])
def test_truncated_compressed_stream(fmt: str) -> None:
    files = {**small_files(50), "tail.bin": os.urandom(MiB)}  # the tail is most of the compressed bytes
    blob = COMPRESS[fmt](make_tar(files))
    source = MemSource(blob[: len(blob) * 2 // 3])
    with pytest.raises(ArchiveError, match=f"truncated {fmt} stream") as err:
        build_index(source, None, "x", Limits())
    partial = err.value.partial
    assert partial is not None and [m.path for m in partial.members] == list(files)
    for member in partial.members[-3:-1]:
        assert read_member(source, partial, member, 0, member.size) == files[member.path]
    tail = partial.members[-1]
    with pytest.raises(ArchiveError):
        read_member(source, partial, tail, 0, tail.size)


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bz2"])
@pytest.mark.parametrize("garbage", [b"-----SIGNATURE-----\n", b"\xff" * 10240, b"\0" * 100 + b"PK\x05\x06"],
                         ids=["signature", "filler", "zeros-then-bytes"])
def test_trailing_garbage_after_the_stream_is_ignored(fmt: str, garbage: bytes) -> None:
    """Bytes after the compressed stream that cannot start another one: every member is
    served (GNU tar lists them, gzip says "trailing garbage ignored"); before, the shard was
    empty ("incorrect header check"). Read through the seek points restored from the stored
    index too, as after a remount."""
    files = {**small_files(30), "tail.bin": os.urandom(MiB)}
    source = MemSource(COMPRESS[fmt](make_tar(files)) + garbage)
    index = build_index(source, None, "x", Limits())
    assert [m.path for m in index.members] == list(files)
    restored = ArchiveIndex(fmt, [], [], index.gzip_index, index.uncompressed_size)
    for m in index.members[-2:]:
        assert read_member(source, index, m, 0, m.size) == files[m.path]
        assert read_member(source, restored, m, 0, m.size) == files[m.path]


def test_garbage_that_starts_a_stream_is_still_corrupt() -> None:
    """A following gzip member that is broken is no trailing garbage: the tar may go on in it."""
    blob = gzip.compress(make_tar({"a.txt": b"a"}), mtime=0) + b"\x1f\x8b\x08\0garbage, not deflate"
    with pytest.raises(ArchiveError, match="corrupt gzip data|truncated gzip stream"):
        build_index(MemSource(blob), None, "x", Limits())


def gzip_zeros_bomb(size: int) -> bytes:
    """A valid gzip of a tar header for one `size`-byte member, then `size` zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = header(b"bomb.bin", size=size)
    parts = [deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)]
    mib_of_zeros = deflate.compress(bytes(MiB)) + deflate.flush(zlib.Z_FULL_FLUSH)  # identical after each full flush
    parts += [mib_of_zeros] * (size // MiB)
    crc = zlib.crc32(head)
    for _ in range(size // MiB):
        crc = zlib.crc32(bytes(MiB), crc)
    trailer = struct.pack("<II", crc, (size + 512) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"".join(parts) + deflate.flush() + trailer


def test_gzip_bomb_is_refused_while_streaming() -> None:
    bomb = gzip_zeros_bomb(1 << 30)
    assert len(bomb) < 2 * MiB
    assert zlib.decompressobj(31).decompress(bomb[:4096], 4096)[:8] == b"bomb.bin"  # it is a real gzip
    tracemalloc.start()
    started = time.process_time()  # CPU, not wall time: a loaded machine took 6.4 s of that
    try:
        with pytest.raises(ArchiveError, match="max_ratio"):
            build_index(MemSource(bomb), None, "bomb.tar.gz", Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - started < 5  # not all of the GiB inflated
    assert peak < 64 * MiB


@pytest.mark.parametrize("fmt", ["xz", "bz2"])
def test_ratio_cap_for_xz_and_bz2(fmt: str) -> None:
    raw = make_tar({"zeros": bytes(8 * MiB)})
    with pytest.raises(ArchiveError, match="max_ratio"):
        build_index(MemSource(COMPRESS[fmt](raw)), None, "x", Limits(max_ratio=50, ratio_grace_bytes=MiB))


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bz2"])
def test_a_modest_archive_may_compress_past_the_ratio(fmt: str) -> None:
    """A zero-filled image beside a small file compresses 1,000x: under ratio_grace_bytes
    (256 MiB of output) that is no bomb. Before, the ratio was judged past 1 MiB and the
    shard showed empty."""
    files = {"readme.txt": b"hello\n", "disk.img": bytes(24 * MiB)}
    source = MemSource(COMPRESS[fmt](make_tar(files)))
    assert source.size * 200 < 24 * MiB
    index = build_index(source, None, "x", Limits())
    assert [m.path for m in index.members] == list(files)
    assert read_member(source, index, index.members[1], 24 * MiB - 10, 10) == bytes(10)


@pytest.mark.parametrize("fmt", ["tar", "xz"])
def test_total_bytes_cap(fmt: str) -> None:
    raw = make_tar({"a": bytes(3 * MiB), "b": bytes(3 * MiB)})
    with pytest.raises(ArchiveError, match="max_total_bytes") as err:
        build_index(MemSource(COMPRESS[fmt](raw)), None, "x", Limits(max_total_bytes=4 * MiB, max_ratio=1e9))
    assert err.value.partial is not None and [m.path for m in err.value.partial.members] == ["a"]


def test_member_count_cap() -> None:
    raw = make_tar(small_files(2000))
    with pytest.raises(ArchiveError, match="max_members") as err:
        build_index(MemSource(raw), None, "x.tar", Limits(max_members=100))
    assert err.value.partial is not None and len(err.value.partial.members) == 100


def test_member_size_cap() -> None:
    raw = make_tar({"a": b"a", "big": bytes(2 * MiB)})
    with pytest.raises(ArchiveError, match="'big' is 2097152 bytes, over max_member_bytes"):
        build_index(MemSource(raw), None, "x.tar", Limits(max_member_bytes=MiB))


def test_oversized_extended_header() -> None:
    raw = header(b"PaxHeader", b"x", 2 * MiB) + bytes(2 * MiB) + entry(b"a", b"a") + END
    with pytest.raises(ArchiveError, match="oversized extended header"):
        build_index(MemSource(raw), None, "x.tar", Limits())


def test_corrupt_pax_record() -> None:
    raw = entry(b"PaxHeader", b"99 path=x\n", b"x") + entry(b"a", b"a") + END
    with pytest.raises(ArchiveError, match="corrupt pax header at offset 0"):
        build_index(MemSource(raw), None, "x.tar", Limits())


@pytest.mark.parametrize("kind", [b"x", b"g"])
def test_a_pax_keyword_that_is_not_utf8_is_skipped(kind: bytes) -> None:
    """GNU tar --xattrs of an xattr named user.caf\\xe9 writes that keyword raw: tar and
    tarfile list the members; before, the whole archive was corrupt. The records around
    it still count (mtime: the next entry's, or every entry's for a global header)."""
    raw = pax({b"SCHILY.xattr.user.caf\xe9": b"1", b"mtime": b"1234"}, kind) \
        + entry(b"a", b"aaa") + entry(b"b", b"bb") + END
    index = build_index(MemSource(raw), None, "x.tar", Limits())
    later = 1234 if kind == b"g" else MTIME
    assert [(m.path, m.size, m.mtime) for m in index.members] == [("a", 3, 1234), ("b", 2, later)]
    assert not index.skipped


def test_unknown_format() -> None:
    with pytest.raises(ArchiveError, match="not a tar"):
        build_index(MemSource(b"PK\x03\x04" + bytes(1000)), "gzip", "x.zip", Limits())


def test_corrupt_xz_data() -> None:
    blob = bytearray(lzma.compress(make_tar(small_files(50)), preset=0))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ArchiveError, match="corrupt xz data"):
        build_index(MemSource(bytes(blob)), None, "x.tar.xz", Limits())


class FailingSource(MemSource):
    """Fails every read once armed, as a lost S3 connection would."""

    armed = False
    error = ConnectionResetError("S3 went away")

    def read(self, offset: int, size: int) -> bytes:
        if self.armed:
            raise self.error
        return super().read(offset, size)


@pytest.mark.parametrize("fmt", ["tar", "gzip", "bz2"])
def test_source_errors_propagate_unchanged(fmt: str) -> None:
    source = FailingSource(COMPRESS[fmt](make_tar(small_files(20))))
    index = build_index(source, None, "x", Limits())
    source.armed = True
    member = index.members[-1]
    with pytest.raises(ConnectionResetError) as err:
        read_member(source, index, member, 0, member.size)
    assert err.value is FailingSource.error


def test_corrupt_stored_gzip_index() -> None:
    source = MemSource(gzip.compress(make_tar(small_files(20)), 1, mtime=0))
    index = build_index(source, None, "x.tar.gz", Limits())
    index.gzip_index = index.gzip_index[:-10]  # type: ignore[index]
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        read_member(source, index, index.members[0], 0, 10)


def test_gzip_crc_mismatch_is_an_archive_error() -> None:
    blob = bytearray(gzip.compress(make_tar(small_files(20)), 1, mtime=0))
    blob[-8] ^= 0xFF  # the trailer's CRC
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        build_index(MemSource(bytes(blob)), None, "x.tar.gz", Limits())


# ------------------------------------------------------------------ a million tiny members (issue 7)


def tiny_tar(count: int) -> bytes:
    """`count` one-byte members in `count // 1000` directories, built from one header
    template (tarfile takes ~50x longer): 1 KiB per member, gzip makes it ~2%."""
    block = bytearray(header(b""))
    block[124:136] = b"%011o\0" % 1
    block[148:156] = b" " * 8
    base = sum(block)
    data = b"x" + bytes(511)
    out = bytearray()
    for i in range(count):
        name = b"d%04d/m%07d" % (i // 1000, i)
        block[0 : len(name)] = name
        block[148:156] = b"%06o\0 " % (base + sum(name))
        out += block
        out += data
    return bytes(out + END)


def fast_gzip(raw: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def index_metered(blob: bytes, limits: Limits, traced: bool = True) -> tuple[Any, float, int]:
    """(index, seconds, peak bytes): traced allocations, or (untraced: tracemalloc doubles
    the time of a million members) the growth of the process's peak RSS."""
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    if traced:
        tracemalloc.start()
    began = time.monotonic()
    try:
        index = build_index(MemSource(blob), None, "tiny.tar.gz", limits)
        elapsed = time.monotonic() - began
        peak = (tracemalloc.get_traced_memory()[1] if traced
                else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - before)
        return index, elapsed, peak
    finally:
        if traced:
            tracemalloc.stop()


def test_tiny_tar_is_a_valid_tar() -> None:
    with tarfile.open(fileobj=io.BytesIO(tiny_tar(3))) as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [
            ("d0000/m0000000", 1), ("d0000/m0000001", 1), ("d0000/m0000002", 1)]


@pytest.mark.parametrize("count", [100_000, pytest.param(
    1_000_000, marks=[pytest.mark.soak, pytest.mark.timeout(900)])])
def test_many_tiny_members_index_in_bounded_time_and_memory(count: int) -> None:
    blob = fast_gzip(tiny_tar(count))
    index, elapsed, peak = index_metered(blob, Limits(), traced=count <= 100_000)
    assert len(index.members) == count
    assert index.members[-1].path == "d%04d/m%07d" % ((count - 1) // 1000, count - 1)
    assert elapsed < count / 1000, elapsed          # under 1 ms a member (~0.05 here)
    assert peak < 64 * MiB + count * 400, peak // MiB  # the member list, ~210 bytes a member


@pytest.mark.parametrize("count", [100_000, pytest.param(
    1_000_001, marks=[pytest.mark.soak, pytest.mark.timeout(900)])])
def test_one_member_too_many_is_refused_early(count: int) -> None:
    """Over max_members: refused as the entries stream by, not after indexing them all."""
    cap = 1_000_000 if count > 1_000_000 else 20_000
    blob = fast_gzip(tiny_tar(count))
    began = time.monotonic()
    with pytest.raises(ArchiveError, match="max_members") as err:
        build_index(MemSource(blob), None, "tiny.tar.gz", Limits(max_members=cap))
    assert str(err.value) == f"more than {cap} entries (max_members)"
    if count < 1_000_000:
        assert time.monotonic() - began < 15
