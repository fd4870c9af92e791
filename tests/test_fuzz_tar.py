"""Fuzzing the tar scanner: differential against Python's tarfile, then hostile mutations.

Valid archives are written by tarfile itself (ustar, GNU and PAX; files, directories,
symlinks, hard links; long and unicode names; sizes around block boundaries; odd mtimes;
extra and global PAX records), plain or compressed, and the index must list exactly the
regular files tarfile lists, at the same data offsets, with the same sizes and mtimes,
and read back the same bytes. Plain tars are indexed by header hopping with a drawn
window, so hops land anywhere in headers and member data.

Mutated archives (header fields rewritten with a fixed-up checksum, PAX records
scrambled, bytes flipped, truncation) may fail, but only with ArchiveError; what is
listed has safe paths, and no member extends past the archive except the very last
one, whose read then fails with ArchiveError instead of returning short bytes.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import re
import tarfile
from typing import Any
from unittest import mock

from hypothesis import event, given
from hypothesis import strategies as st

from s3fuse.archive import ArchiveError, ArchiveIndex, Limits, Member, build_index, read_member
from s3fuse.archive import index as archive_index
from s3fuse.archive.tar import TarScanner
from s3fuse.names import is_relative_path, safe_member_path
from tests.support.fuzz import MemSource, fuzz_settings

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
COMPRESS = {
    "tar": lambda raw: raw,
    "gzip": lambda raw: gzip.compress(raw, 1, mtime=0),
    "xz": lambda raw: lzma.compress(raw, preset=0),
    "bz2": lambda raw: bz2.compress(raw, 1),
}

# Name components: ordinary, unicode, awkward, unsafe ('.', '..') and over-long ones.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
component = st.one_of(
    st.text(_chars, min_size=1, max_size=12),
    st.sampled_from([".", "..", "a b", "-", "ü", "日本", "\U0001f600", "x" * 100, "y" * 255, "z" * 256]),
    st.integers(1, 300).map(lambda n: "é" * n),
)
name = st.builds(lambda prefix, parts: prefix + "/".join(parts), st.sampled_from(["", "", "", "./"]),
                 st.lists(component, min_size=1, max_size=5))
size = st.one_of(st.sampled_from([0, 1, 511, 512, 513, 1023, 1024, 1025]), st.integers(0, 5000))
mtime = st.one_of(st.integers(0, 8**11 - 1), st.integers(-(2**40), 2**40),
                  st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False))
entry = st.fixed_dictionaries(
    {"kind": st.sampled_from(["file", "file", "file", "dir", "symlink", "link"]),
     "name": name, "size": size, "mtime": mtime, "seed": st.integers(0, 2**32),
     "target": name},
    optional={"pax": st.dictionaries(st.sampled_from(["comment", "uname", "gname", "x.custom"]),
                                     st.text(_chars, max_size=40), max_size=3)},
)
archive_spec = st.fixed_dictionaries({
    "format": st.sampled_from(sorted(FORMATS)),
    "entries": st.lists(entry, max_size=8),
    "global": st.dictionaries(st.sampled_from(["comment", "x.note"]), st.text(_chars, min_size=1, max_size=30),
                              max_size=2),
    "trim_end": st.booleans(),
})


def write_tar(spec: dict[str, Any]) -> bytes:
    """The archive tarfile writes for `spec`; entries a format cannot hold are left out."""
    fmt = FORMATS[spec["format"]]
    entries = [made for made in map(tar_entry, spec["entries"]) if fits(made[0], fmt)]
    # tarfile cannot read back a global header with no member after it: none then.
    extra = spec["global"] if fmt == tarfile.PAX_FORMAT and entries else None
    buf = io.BytesIO()
    end = 0
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=extra) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
            end = tar.offset
    raw = buf.getvalue()
    # Without the end-of-archive blocks tarfile still reads it; so must we.
    return raw[:end] if spec["trim_end"] and end else raw


def tar_entry(e: dict[str, Any]) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(e["name"])
    info.mtime = e["mtime"]
    info.pax_headers = dict(e.get("pax", {}))
    data = b""
    if e["kind"] == "dir":
        info.type = tarfile.DIRTYPE
    elif e["kind"] in ("symlink", "link"):
        info.type = tarfile.SYMTYPE if e["kind"] == "symlink" else tarfile.LNKTYPE
        info.linkname = e["target"]
    else:
        data = random.Random(e["seed"]).randbytes(e["size"])
        info.size = len(data)
    return info, data


def fits(info: tarfile.TarInfo, fmt: int) -> bool:
    """Can `fmt` hold `info`? (ustar: no name over 255 bytes, no negative mtime...)"""
    try:
        info.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:
        return False
    return True


def model_path(name: str) -> str | None:
    """Independent of s3fuse.names: the path a member may be served under, else None."""
    if name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    try:
        ok = all(p not in ("", ".", "..") and len(p.encode()) <= 255 for p in parts)
        return name if ok and len(name.encode()) <= 4096 else None
    except UnicodeEncodeError:
        return None


def tarfile_view(raw: bytes) -> tuple[list[Member], dict[str, bytes], int]:
    """tarfile's regular files (the last entry of a path wins, whatever its type: a later
    symlink or directory hides a file), their bytes, and its link count."""
    members: dict[str, Member] = {}
    contents: dict[str, bytes] = {}
    links = 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar:
            links += info.issym() or info.islnk()
            path = model_path(info.name)
            if path is not None:
                members.pop(path, None)
            if path is None or not info.isreg():
                continue
            members[path] = Member(path, info.offset_data, info.size, int(info.mtime))
            extracted = tar.extractfile(info)
            assert extracted is not None
            contents[path] = extracted.read()
    return list(members.values()), contents, links


@fuzz_settings(150)
@given(archive_spec, st.sampled_from(sorted(COMPRESS)), st.integers(512, 8192), st.data())
def test_index_equals_tarfile_on_valid_archives(spec: dict[str, Any], compression: str, window: int,
                                                data: st.DataObject) -> None:
    raw = write_tar(spec)
    expected, contents, links = tarfile_view(raw)
    source = MemSource(COMPRESS[compression](raw))
    with mock.patch.object(archive_index, "HOP_WINDOW", window):
        index = build_index(source, None, "shard.tar", Limits(), spacing=64 << 10)
    assert index.format == compression
    assert index.members == expected
    assert sum(reason in ("symbolic link", "hard link") for _, reason in index.skipped) == links
    for member in index.members:
        assert read_member(source, index, member, 0, member.size) == contents[member.path]
        if member.size:
            start = data.draw(st.integers(0, member.size - 1))
            length = data.draw(st.integers(0, member.size + 10))
            assert read_member(source, index, member, start, length) == contents[member.path][start:start + length]


@fuzz_settings(100)
@given(archive_spec, st.lists(st.integers(1, 3000), min_size=1, max_size=40))
def test_feeding_in_any_chunks_gives_the_same_members(spec: dict[str, Any], cuts: list[int]) -> None:
    raw = write_tar(spec)
    whole = TarScanner(Limits())
    whole.feed(raw)
    whole.finish()
    pieces = TarScanner(Limits())
    pos = 0
    for cut in cuts * (len(raw) // sum(cuts) + 1):
        pieces.feed(raw[pos:pos + cut])
        pos += cut
        if pos >= len(raw):
            break
    pieces.finish()
    assert (pieces.members, pieces.skipped) == (whole.members, whole.skipped)


# ------------------------------------------------------------------ hostile mutations

# Header fields a mutation rewrites: (offset, length).
FIELDS = {"name": (0, 100), "mode": (100, 8), "mtime": (136, 12), "size": (124, 12), "type": (156, 1),
          "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155), "sparse": (482, 1)}
field_value = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"0", b"1", b"2", b"5", b"7", b"L", b"K", b"x", b"g", b"S", b"\0", b"V",
                     b"ustar\x0000", b"ustar  \x00", b"../etc/passwd", b"/abs", b"a/" * 60,
                     b"\x80" + b"\0" * 6 + b"\x10", b"\xff" * 12, b"77777777777", b"-1", b"1e3"]),
    st.integers(0, 2**40).map(lambda n: b"%011o\0" % n),
)
pax_record = st.one_of(
    st.sampled_from([b"path", b"size", b"mtime", b"linkpath", b"GNU.sparse.size", b"comment", b"\xff"]).flatmap(
        lambda key: st.one_of(st.binary(max_size=20), st.sampled_from([b"", b"..", b"-5", b"1e400", b"nan", b"a" * 600]))
        .map(lambda value: (key, value))),
)
mutation = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 1000), st.sampled_from(sorted(FIELDS)), field_value),
    st.tuples(st.just("pax"), st.integers(0, 1000), pax_record, st.booleans()),
    st.tuples(st.just("flip"), st.integers(0, 2**32), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**32)),
)


def header_offsets(raw: bytes) -> list[int]:
    """Every header block's offset, extension headers included (tarfile finds the members)."""
    offsets: set[int] = set()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar:  # (tarfile reads back every archive write_tar makes)
            offsets.update((info.offset, info.offset_data - 512))
            offsets.update(range(info.offset, info.offset_data, 512))
    return sorted(offsets) or [0]


def fix_checksum(raw: bytearray, at: int) -> None:
    block = raw[at:at + 512]
    if len(block) == 512:
        block[148:156] = b" " * 8
        raw[at + 148:at + 156] = b"%06o\0 " % sum(block)


def pax_payload(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def mutate(raw: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(raw)
    headers = header_offsets(raw)
    for m in mutations:
        if not out:
            break
        if m[0] == "field":
            at = headers[m[1] % len(headers)]
            if at + 512 > len(out):
                continue
            start, length = FIELDS[m[2]]
            out[at + start:at + start + length] = m[3][:length].ljust(length, b"\0")
            fix_checksum(out, at)
        elif m[0] == "pax":
            # An extended header of our own, inserted before a header: 'x' (or 'g').
            at = headers[m[1] % len(headers)]
            payload = pax_payload(*m[2])
            header = bytearray(tarfile.TarInfo("././@PaxHeader").tobuf(tarfile.USTAR_FORMAT))
            header[156:157] = b"g" if m[3] else b"x"
            header[124:136] = b"%011o\0" % len(payload)
            fix_checksum(header, 0)
            block = bytes(header) + payload + bytes(-len(payload) % 512)
            out[at:at] = block
        elif m[0] == "flip":
            out[m[1] % len(out)] ^= m[2] or 1
        else:
            del out[m[1] % (len(out) + 1):]
    return bytes(out)


def check_hostile(source: MemSource, index: ArchiveIndex, end: int) -> None:
    """What is listed is safe to serve, and past-the-end bytes are never returned."""
    last = max((m.offset for m in index.members), default=-1)
    for member in index.members:
        assert safe_member_path(member.path) == member.path and is_relative_path(member.path, allow_empty=False)
        assert member.offset >= 512 and member.size >= 0
        if member.offset + member.size > end:
            assert member.offset == last, "only the last member may be cut off by the end of the archive"
            try:
                read_member(source, index, member, 0, member.size)
            except ArchiveError:
                continue
            raise AssertionError(f"read past the end of the archive returned bytes for {member}")
        got = read_member(source, index, member, 0, member.size)
        assert len(got) == member.size


@fuzz_settings(200)
@given(archive_spec, st.lists(mutation, min_size=1, max_size=4), st.sampled_from(["tar", "tar", "gzip"]),
       st.integers(512, 4096))
def test_mutated_archives_fail_only_with_archive_error(spec: dict[str, Any], mutations: list[tuple[Any, ...]],
                                                       compression: str, window: int) -> None:
    raw = mutate(write_tar(spec), mutations)
    source = MemSource(COMPRESS[compression](raw))
    try:
        with mock.patch.object(archive_index, "HOP_WINDOW", window):
            index = build_index(source, None, "shard.tar", Limits(max_member_bytes=1 << 40))
    except ArchiveError as err:
        event("ArchiveError: " + re.sub(r"\d+", "N", str(err))[:50])
        if err.partial is None:
            return
        index = err.partial
    event(f"{'some' if index.members else 'no'} members listed")
    check_hostile(source, index, len(raw))
