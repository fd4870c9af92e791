"""The shared archive index's file: an ArchiveIndex as one self-describing blob, and the
checks that make a fetched one safe to use.

Machines of a fleet publish what indexing an archive taught them (its member list and
gzip seek points) so that the others need not decompress it again. What comes back is
hostile input until proven otherwise: this module bounds every size before allocating,
verifies the checksum and that the blob describes this very archive (bucket, key, ETag,
size), and parses the seek points itself before indexed_gzip's C code sees them.

Layout (version 1):

    s3fuse-archive-index\\n
    {"version": 1, "bucket": ..., "key": ..., "etag": ..., "size": ..., "format": ...,
     "uncompressed_size": ..., "members": N, "skipped_count": ..., "members_bytes": ...,
     "seek_bytes": ..., "sha256": ...}\\n            (one line of JSON, at most 64 KiB)
    members_bytes of zlib(JSON {"members": [[path, offset, size, mtime], ...],
                                "skipped": [[name, reason], ...]})
    seek_bytes of seek points (ArchiveIndex.gzip_index: zlib(indexed_gzip export))

`sha256` is over the two payload sections. Blocking and pure (no I/O): callers run it in
worker threads.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

from s3fuse.archive.index import GZIP_WINDOW, ZRAN_HEAD, ArchiveIndex, gzip_spacing, gzip_spacings
from s3fuse.archive.limits import Limits
from s3fuse.archive.tar import BLOCK, SKIPPED_KEPT, Member
from ..names import safe_member_path

MAGIC = b"s3fuse-archive-index\n"
VERSION = 1
FORMATS = ("tar", "gzip", "xz", "bz2")
MAX_HEADER = 64 << 10
MiB = 1 << 20
#: A published index is refused unread past this many bytes: a fixed allowance (member
#: lists of small archives) plus half the archive (seek-point windows hardly compress).
BASE_ALLOWANCE = 32 * MiB
#: A members section may inflate this many times (JSON of paths compresses well) ...
MEMBERS_RATIO = 64
#: ... and never past this, whatever the archive.
MAX_MEMBERS_JSON = 512 * MiB
#: zran's export after its head (index.ZRAN_HEAD): per point cmp offset, uncmp offset,
#: bit offset, data flag.
_ZRAN_POINT = struct.Struct("<QQBB")
#: Points without a window (at gzip stream boundaries) allowed per archive byte: one per
#: 512 (an archive of smaller concatenated streams is indexed locally instead).
STREAM_BYTES_PER_POINT = 512


class Rejected(ValueError):
    """A published index that must not be used; `stale` when it is sound but describes
    another version of the archive (another ETag or size)."""

    def __init__(self, reason: str, stale: bool = False) -> None:
        super().__init__(reason)
        self.stale = stale


def allowance(archive_size: int) -> int:
    """The most bytes a published index of an archive of `archive_size` bytes may have."""
    return BASE_ALLOWANCE + archive_size // 2


def encode(index: ArchiveIndex, bucket: str, key: str, etag: str, size: int) -> bytes:
    """The blob to publish for `index` of version `etag` (`size` bytes) of s3://bucket/key."""
    members = zlib.compress(json.dumps(
        {"members": [list(m) for m in index.members],
         "skipped": [list(s) for s in index.skipped[:SKIPPED_KEPT]]},
        separators=(",", ":"), ensure_ascii=False).encode(), 6)
    seek = index.gzip_index or b""
    header = {"version": VERSION, "bucket": bucket, "key": key, "etag": etag, "size": size,
              "format": index.format, "uncompressed_size": index.uncompressed_size,
              "members": len(index.members), "skipped_count": index.skipped_count,
              "members_bytes": len(members), "seek_bytes": len(seek),
              "sha256": hashlib.sha256(members + seek).hexdigest()}
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + members + seek


def decode(blob: bytes, bucket: str, key: str, etag: str, size: int,
           limits: Limits = Limits()) -> ArchiveIndex:
    """The ArchiveIndex in `blob`, once every check passed; else Rejected saying why."""
    if len(blob) > allowance(size):
        raise Rejected(f"{len(blob)} bytes, over the {allowance(size)} allowed for this archive")
    header, body = _header(blob)
    if header.get("version") != VERSION:
        raise Rejected(f"format version {header.get('version')!r}, not {VERSION}")
    if (header.get("bucket"), header.get("key")) != (bucket, key):
        raise Rejected("it describes another object")
    if not _count(header.get("size")):  # 5021370.0 == 5021370 would pass the next check
        raise Rejected("malformed header")
    if (header.get("etag"), header.get("size")) != (etag, size):
        raise Rejected(f"it describes ETag {str(header.get('etag'))[:40]!r} of "
                       f"{header.get('size')!r} bytes, not {etag!r} of {size}", stale=True)
    fmt, usize = header.get("format"), header.get("uncompressed_size")
    members_bytes, seek_bytes = header.get("members_bytes"), header.get("seek_bytes")
    if fmt not in FORMATS or not _count(usize) or not _count(members_bytes) \
            or not _count(seek_bytes) or not _count(header.get("skipped_count")) \
            or not _count(header.get("members")):
        raise Rejected("malformed header")
    if members_bytes + seek_bytes != len(body):
        raise Rejected(f"payload of {len(body)} bytes, the header says {members_bytes + seek_bytes}")
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise Rejected("checksum mismatch")
    if fmt == "tar" and usize != size or fmt != "tar" and usize > limits.max_total_bytes:
        raise Rejected(f"uncompressed size {usize} is impossible for a {fmt} of {size} bytes")
    if header["skipped_count"] > usize // 512:  # each member has a 512-byte header at least
        raise Rejected(f"{header['skipped_count']} members skipped: more than a tar of {usize} "
                       "bytes holds")
    members, skipped = _members(body[:members_bytes], usize, header["members"], limits)
    seek = body[members_bytes:]
    spacing = gzip_spacing(size)
    if fmt == "gzip":
        spacing = check_seek_points(seek, size, usize)
    elif seek:
        raise Rejected(f"seek points for a {fmt} archive")
    return ArchiveIndex(fmt, members, skipped, seek if fmt == "gzip" else None, usize,
                        header["skipped_count"], spacing)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header(blob: bytes) -> tuple[dict[str, Any], bytes]:
    if not blob.startswith(MAGIC):
        raise Rejected("not an s3fuse archive index")
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise Rejected("no header line")
    try:
        header = json.loads(blob[len(MAGIC):end])
    except (ValueError, RecursionError):
        raise Rejected("header is not JSON") from None
    if not isinstance(header, dict):
        raise Rejected("header is not a JSON object")
    return header, blob[end + 1:]


def _members(section: bytes, usize: int, count: int,
             limits: Limits) -> tuple[list[Member], list[tuple[str, str]]]:
    """The member list, each member where a tar member can be: after its header, inside the
    tar, in order and apart; every path one the local scanner would have kept."""
    if count > limits.max_members:
        raise Rejected(f"{count} members, over the cap of {limits.max_members}")
    inflate = zlib.decompressobj()
    cap = min(MAX_MEMBERS_JSON, MEMBERS_RATIO * len(section) + MiB)
    try:
        text = inflate.decompress(section, cap)
    except zlib.error:
        raise Rejected("members section is not zlib data") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise Rejected("members section inflates past its allowance, or is truncated")
    try:
        doc = json.loads(text)
        raw_members, raw_skipped = doc["members"], doc["skipped"]
        if len(raw_members) != count or len(raw_skipped) > SKIPPED_KEPT:
            raise Rejected("member count differs from the header's")
        members = [Member(*_member(item, limits)) for item in raw_members]
        skipped = [(_text(a), _text(b)) for a, b in raw_skipped]
    except (ValueError, RecursionError, KeyError, TypeError):
        raise Rejected("members section is malformed") from None
    end = 0
    for member in members:
        if member.offset < end + BLOCK or member.offset % BLOCK or member.offset + member.size > usize:
            raise Rejected(f"member {member.path[:80]!r} lies where no member can be")
        end = member.offset + -(-member.size // BLOCK) * BLOCK
    return members, skipped


def _member(item: Any, limits: Limits) -> tuple[str, int, int, int]:
    path, offset, size, mtime = item
    if not isinstance(path, str) or safe_member_path(path) != path:
        raise ValueError("unsafe member path")
    if not (_count(offset) and _count(size) and isinstance(mtime, int) and not isinstance(mtime, bool)):
        raise ValueError("member numbers")
    if size > limits.max_member_bytes or not -(1 << 63) <= mtime < 1 << 63:
        raise ValueError("member over a cap")
    return path, offset, size, mtime


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError("text")
    return value


def _point_count_fits(count: int, usize: int, cap: int) -> bool:
    """At least one point for a stream with bytes, none allowed for an empty one (a gzip of
    zero bytes: zran exports no point), which every fetcher refused before and then
    published again."""
    return (0 < count or usize == 0) and count <= cap


def check_seek_points(seek: bytes, size: int, usize: int) -> int:
    """Parse the zlib'd indexed_gzip export in full before zran may read it: its sizes
    must be this archive's, its spacing one of gzip_spacings, its points in order inside
    both streams, every window present and the whole exactly as long as they say (zran
    itself allocates what a hostile count asks and reads windows blindly). Returns the
    spacing."""
    spacings = gzip_spacings(size)
    windows = usize // min(spacings) + 2  # one per spacing, the first and the last
    points_cap = windows + size // STREAM_BYTES_PER_POINT + 1
    cap = ZRAN_HEAD.size + points_cap * _ZRAN_POINT.size + windows * GZIP_WINDOW
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(seek, cap + 1)
    except zlib.error:
        raise Rejected("seek points are not zlib data") from None
    if len(raw) > cap or inflate.unconsumed_tail or not inflate.eof:
        raise Rejected("seek points inflate past their allowance, or are truncated")
    if len(raw) < ZRAN_HEAD.size:
        raise Rejected("seek points truncated")
    magic, version, _, csize, uncompressed, spacing, window, count = ZRAN_HEAD.unpack_from(raw)
    if magic != b"GZIDX" or version != 1:
        raise Rejected("seek points are not an indexed_gzip v1 export")
    if csize != size or uncompressed not in (0, usize) or window != GZIP_WINDOW \
            or spacing not in spacings or not _point_count_fits(count, usize, points_cap):
        raise Rejected("seek points describe another stream")
    at = ZRAN_HEAD.size
    if len(raw) < at + count * _ZRAN_POINT.size:
        raise Rejected("seek points truncated")
    last_c = last_u = -1
    with_data = 0
    for cmp_offset, uncmp_offset, bits, flag in _ZRAN_POINT.iter_unpack(raw[at:at + count * _ZRAN_POINT.size]):
        ordered = last_u < 0 or (cmp_offset >= last_c and uncmp_offset > last_u)
        if not ordered or cmp_offset > size or uncmp_offset > usize or bits > 7 or flag > 1:
            raise Rejected("seek points out of order or outside the archive")
        last_c, last_u = cmp_offset, uncmp_offset
        with_data += flag
    if with_data > windows or len(raw) != at + count * _ZRAN_POINT.size + with_data * GZIP_WINDOW:
        raise Rejected("seek point windows do not add up")
    return spacing
