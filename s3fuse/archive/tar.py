"""Streaming tar header scanner: finds where each member's bytes lie.

It parses headers only and jumps over member data, so one parser serves both
a sequential feed of decompressed bytes (gzip/xz/bz2) and "header hopping"
over a plain tar, where the caller reads only the windows holding headers
(`position` tells where the next needed byte is).

Names are hostile input: one over MAX_PATH_BYTES is skipped unread (counted, never
kept), only the first SKIPPED_KEPT skipped entries are remembered for the report,
and header bytes are counted against the archive's caps like member data.
"""
from __future__ import annotations

from contextlib import suppress
from typing import NamedTuple

from s3fuse.archive.limits import ArchiveError, Limits
from ..names import MAX_PATH_BYTES, safe_member_path

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# A PAX record set or GNU long name bigger than this is hostile, not a name.
MAX_EXTENDED_BYTES = 1 << 20

REGULAR = (b"0", b"\0", b"7")
DIRECTORY = b"5"
EXTENSIONS = (b"x", b"g", b"L", b"K")
SKIP_REASONS = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"S": "GNU sparse file",
}
# As in tarfile: these types never carry data blocks, whatever their size says.
NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
_HIGH_BYTES = bytes(range(0x80, 0x100))
#: Skipped entries remembered (with their names) for the report; the rest are counted.
SKIPPED_KEPT = 100
#: Header bytes allowed before max_header_ratio is judged (64k plain headers).
HEADER_GRACE = 32 << 20


class Member(NamedTuple):
    """A regular file; `offset` is where its data starts in the uncompressed tar."""

    path: str
    offset: int
    size: int
    mtime: int


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _number(field: bytes) -> int:
    """Decode a numeric header field, octal text or GNU base-256; ValueError if neither."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if text.strip(b"01234567"):
        raise ValueError(f"not an octal number: {field!r}")
    return int(text, 8) if text else 0


def valid_checksum(block: bytes) -> bool:
    """True when `block` is a tar header with a matching checksum (unsigned or signed sum)."""
    try:
        stored = _number(block[148:156])
    except ValueError:
        return False
    field = block[148:156]
    unsigned = sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    high = (BLOCK - len(block.translate(None, _HIGH_BYTES))) - (8 - len(field.translate(None, _HIGH_BYTES)))
    return stored == unsigned - 256 * high


def heads_member(block: bytes, path: str, size: int) -> bool:
    """Can `block` be the header right before regular member `path` of `size` bytes? Its
    checksum, type and size field must say so (the size field may be 0 when a PAX record
    carries a size too large for it), and so must its name when `path` is short ASCII
    (other names may come from an extension header before it). Checks a member list that
    came from elsewhere against the archive itself."""
    if len(block) != BLOCK or not valid_checksum(block) or block[156:157] not in REGULAR:
        return False
    try:
        stated = _number(block[124:136])
    except ValueError:
        return False
    if stated != size and not (stated == 0 and size >= 8 ** 11):
        return False
    if not path.isascii() or len(path) > 100:
        return True
    name = _header_name(block).decode("ascii", "replace")
    if name.removeprefix("./").removesuffix("/") == path:
        return True
    # A full name field may be a cut: `./` + a name of 99 or 100 characters (`tar -C dir .`)
    # does not fit, and an extension header before it holds the whole name.
    return b"\0" not in block[0:100] and f"./{path}".startswith(name)


def _sparse_extension_blocks(buf: bytearray, pos: int, offset: int) -> int | None:
    """Count the blocks an old GNU sparse header ('S') chains after itself.

    Each block flags whether another follows (header byte 482, then byte 504
    of each extension block). None: not all of them are buffered yet.
    """
    count, flag = 0, pos + 482
    while flag < len(buf) and buf[flag]:
        count += 1
        if count * BLOCK > MAX_EXTENDED_BYTES:
            raise ArchiveError(f"oversized sparse header at offset {offset}")
        flag = pos + count * BLOCK + 504
    return count if flag < len(buf) else None


def _header_name(header: bytes) -> bytes:
    name = header[0:100].split(b"\0", 1)[0]
    # Only POSIX ustar has a prefix field; GNU keeps times in those bytes.
    if header[257:263] == b"ustar\x00":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name


def _skip_reason(kind: bytes, pax: dict[str, bytes]) -> str | None:
    """Why an entry is not served as a file, or None for a plain regular file."""
    if kind not in REGULAR:
        return SKIP_REASONS.get(kind, f"unsupported entry type {kind!r}")
    if any(key.startswith("GNU.sparse.") for key in pax):
        return "GNU sparse file"
    return None


def _parse_pax(payload: bytes, offset: int) -> dict[str, bytes]:
    """Parse PAX records ("<len> <key>=<value>\\n"); values stay bytes.

    A keyword that is not UTF-8 (GNU tar --xattrs writes an xattr's name raw, such as
    SCHILY.xattr.user.caf\\xe9) is none this reads: that record is skipped, as tar and
    tarfile list the archive. It used to make the whole archive corrupt.
    """
    records: dict[str, bytes] = {}
    pos = 0
    try:
        while pos < len(payload) and payload[pos] != 0:
            space = payload.index(b" ", pos)
            length = int(payload[pos:space])
            record = payload[pos : pos + length]
            if length <= space - pos or pos + length > len(payload) or not record.endswith(b"\n"):
                raise ValueError("bad record length")
            key, sep, value = record[space - pos + 1 : -1].partition(b"=")
            if not sep:
                raise ValueError("record without '='")
            pos += length
            with suppress(UnicodeDecodeError):  # not UTF-8: a keyword nothing here reads
                records[key.decode("utf-8")] = value
    except ValueError:
        raise ArchiveError(f"corrupt pax header at offset {offset}") from None
    return records


class TarScanner:
    """Parses tar headers from bytes fed in stream order, skipping member data.

    `feed(data)` continues where the last feed ended; `feed(data, at=position)`
    may jump forward over bytes the scanner does not need. `members` holds the
    regular files (the last of duplicate paths wins), `skipped` the (name,
    reason) of the first SKIPPED_KEPT entries that will not be served and
    `skipped_count` how many there were. Caps are enforced as headers are
    parsed. On ArchiveError, `members` still holds what was read before.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.skipped: list[tuple[str, str]] = []
        self.skipped_count = 0
        self._headers = 0  # header and extension bytes so far
        self._data = 0  # member data bytes so far, padded to blocks
        self._names = 0  # bytes of the member paths kept
        self.done = False
        self._members: dict[str, Member] = {}
        self._buf = bytearray()
        self._buf_start = 0  # stream offset of _buf[0]
        self._next = 0  # stream offset of the next header
        self._entries = 0
        self._total = 0
        self._long_name: bytes | None = None
        self._pax: dict[str, bytes] = {}
        self._global: dict[str, bytes] = {}

    @property
    def members(self) -> list[Member]:
        return list(self._members.values())

    @property
    def position(self) -> int:
        """Stream offset of the first byte the scanner still needs."""
        return max(self._next, self._buf_start + len(self._buf))

    def feed(self, data: bytes, at: int | None = None) -> None:
        """Take the stream bytes starting at `at` (default: where the last feed ended)."""
        end = self._buf_start + len(self._buf)
        if at is not None and at != end:
            if self._buf or not end <= at <= self._next:
                raise ValueError(f"feed at {at} would skip needed bytes (fed up to {end})")
            self._buf_start = at
        if self.done:
            return
        view = memoryview(data)
        if not self._buf:  # member data before the next header is never copied
            skip = min(len(view), self._next - self._buf_start)
            view = view[skip:]
            self._buf_start += skip
        self._buf += view
        self._parse()

    def finish(self, end: int | None = None) -> None:
        """End of the stream, `end` bytes long (default: where the bytes fed end; a caller
        that hopped over member data must say). A partial header or a dangling extended
        header means truncation: ArchiveError.

        A stream that ends inside a member's data drops that member (skipped, so it is
        reported) and keeps the others, as `tar -t` lists them before its "Unexpected
        EOF". Listed, it was a file whose size no read could deliver, and an index
        holding it is one every fetcher of a shared index refuses.
        """
        if not self.done and (self._buf or self._pax or self._long_name is not None):
            raise ArchiveError(f"truncated tar header at offset {self._next}")
        self._drop_cut(self._buf_start + len(self._buf) if end is None else end)
        self.done = True

    def _drop_cut(self, end: int) -> None:
        """Drop the member whose data runs past `end`: only the last one kept can."""
        if not self._members:
            return
        last = next(reversed(self._members.values()))
        if last.offset + last.size > end:
            del self._members[last.path]
            self._skip(last.path, f"archive ends inside its data ({max(0, end - last.offset)} "
                                  f"of {last.size} bytes)")

    def _parse(self) -> None:
        buf = self._buf
        while not self.done:
            pos = self._next - self._buf_start
            if pos + BLOCK > len(buf):
                break
            header = bytes(buf[pos : pos + BLOCK])
            if header == ZERO_BLOCK:  # end of archive (tarfile stops at the first, too)
                self.done = True
                break
            if not valid_checksum(header):
                raise ArchiveError(f"corrupt tar header at offset {self._next}")
            kind = header[156:157]
            size = self._size(self._field(header[124:136]))
            if kind in EXTENSIONS:
                if size > MAX_EXTENDED_BYTES:
                    raise ArchiveError(f"oversized extended header ({size} bytes) at offset {self._next}")
                end = pos + BLOCK + _padded(size)
                if end > len(buf):
                    break
                self._count_entry()
                self._count_bytes(header=end - pos)
                self._extension(kind, bytes(buf[pos + BLOCK : pos + BLOCK + size]))
                self._next += end - pos
            else:
                extra = _sparse_extension_blocks(buf, pos, self._next) if kind == b"S" else 0
                if extra is None:
                    break
                self._count_bytes(header=BLOCK * (1 + extra))
                self._next += BLOCK * (1 + extra) + _padded(self._entry(header, kind, size))
        drop = min(len(buf), self._next - self._buf_start)
        del buf[:drop]
        self._buf_start += drop

    def _field(self, field: bytes) -> int:
        try:
            return _number(field)
        except ValueError:
            raise ArchiveError(f"corrupt tar header at offset {self._next}") from None

    def _size(self, size: int) -> int:
        if size < 0:
            raise ArchiveError(f"negative size in tar header at offset {self._next}")
        return size

    def _extension(self, kind: bytes, payload: bytes) -> None:
        if kind == b"L":
            self._long_name = payload.split(b"\0", 1)[0]
        elif kind == b"x":
            self._pax = _parse_pax(payload, self._next)
        elif kind == b"g":
            self._global.update(_parse_pax(payload, self._next))
            if sum(map(len, self._global.values())) > MAX_EXTENDED_BYTES:
                raise ArchiveError(f"global pax headers over {MAX_EXTENDED_BYTES} bytes at offset {self._next}")
        # b"K", a GNU long link target, only matters for links, which are skipped.

    def _count_entry(self) -> None:
        self._entries += 1
        if self._entries > self.limits.max_members:
            raise ArchiveError(f"more than {self.limits.max_members} entries (max_members)")

    def _count_bytes(self, header: int = 0, data: int = 0) -> None:
        """Header and data bytes against max_total_bytes; headers against max_header_ratio."""
        self._headers += header
        self._data += _padded(data)
        self._total += header + data
        if self._total > self.limits.max_total_bytes:
            raise ArchiveError(f"member data over {self.limits.max_total_bytes} bytes (max_total_bytes)")
        if self._headers > HEADER_GRACE and self._headers > self.limits.max_header_ratio * self._data:
            raise ArchiveError(
                f"{self._headers} header bytes for {self._data} bytes of member data, over "
                f"{self.limits.max_header_ratio:g}x (max_header_ratio): refused as a header flood")

    def _skip(self, name: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append((name, reason))

    def _entry(self, header: bytes, kind: bytes, size: int) -> int:
        """Account for one entry and record or skip it; return its data length."""
        self._count_entry()
        pax = {key: value for key, value in {**self._global, **self._pax}.items() if value}
        name = pax.get("path") or self._long_name or _header_name(header)
        self._pax, self._long_name = {}, None
        try:
            if "size" in pax:
                size = self._size(int(pax["size"]))
            mtime = int(float(pax["mtime"])) if "mtime" in pax else self._field(header[136:148])
        except (ValueError, OverflowError):
            raise ArchiveError(f"corrupt pax header before offset {self._next}") from None
        data = 0 if kind in NO_DATA else size
        self._count_bytes(data=data)
        if kind == DIRECTORY or (kind in REGULAR and name.endswith(b"/")):
            self._directory(name)
            return data
        self._add(name, kind, size, mtime, pax)
        return data

    def _directory(self, raw_name: bytes) -> None:
        """A directory entry is no member, but it replaces an earlier file of its path."""
        if len(raw_name) > MAX_PATH_BYTES + 2:
            return
        try:
            path = safe_member_path(raw_name.decode("utf-8"))
        except UnicodeDecodeError:
            return
        if path is not None:
            self._replaced(path, "directory")

    def _replaced(self, path: str, by: str) -> None:
        """The last entry of a name wins, as tar -x and tarfile.getmember take it: an
        earlier regular file of `path` is not shown once a symlink, a directory or any
        other entry that is not served takes its name (before, it still was)."""
        if self._members.pop(path, None) is not None:
            self._skip(path, f"replaced by a later {by}")

    def _add(self, raw_name: bytes, kind: bytes, size: int, mtime: int, pax: dict[str, bytes]) -> None:
        if len(raw_name) > MAX_PATH_BYTES + 2:  # "./" + the longest path: never decoded nor kept
            self._skip(f"<a name of {len(raw_name)} bytes>", f"path over {MAX_PATH_BYTES} bytes")
            return
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            self._skip(raw_name.decode("utf-8", "replace"), "name is not UTF-8")
            return
        reason = _skip_reason(kind, pax)
        path = safe_member_path(name)
        if path is None:
            self._skip(name, reason or "unsafe path")
            return
        if reason:
            self._skip(name, reason)
            self._replaced(path, reason)
            return
        if size > self.limits.max_member_bytes:
            raise ArchiveError(f"member {path!r} is {size} bytes, over max_member_bytes")
        if self._members.pop(path, None) is not None:
            self._skip(path, "duplicate")
        else:
            self._names += len(path)
            if self._names > self.limits.max_name_bytes:
                raise ArchiveError(f"member paths over {self.limits.max_name_bytes} bytes (max_name_bytes)")
        self._members[path] = Member(path, self._next + BLOCK, size, mtime)
