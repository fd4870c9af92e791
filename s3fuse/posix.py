"""POSIX metadata of one object (type, mode, owner, times, device, user xattrs) and its headers.

Stored in S3 user metadata exactly as s3fs-fuse stores it (compat.md, "POSIX metadata"),
so a bucket moves between s3fs, rclone and s3fuse with nothing converted: decimal
`mode` with the type bits, decimal `uid`/`gid`, times as `SEC` or `SEC.NNNNNNNNN`, user
xattrs as s3fs's percent-encoded JSON of base64 values. Headers of s3sync, GCS and
rclone (float mtime; with `--metadata`, an octal mode and RFC 3339 times) are read too. Header names here are boto3's `Metadata` keys: the
part after `x-amz-meta-`, lower case.

`Posix` is the value every layer passes around (entries, the journal, the overlay);
None fields mean "not stored": the mount's defaults (`--file-mode`, `--uid`, ...,
LastModified) show instead. This module imports nothing of ours.
"""
from __future__ import annotations

import base64
import binascii
import calendar
import dataclasses
import json
import re
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Mapping

#: S3 limits user metadata to 2 KiB per object (names and values of every x-amz-meta-*).
METADATA_LIMIT = 2048
#: The prefix S3 puts before each user metadata name (counted in the limit).
HEADER_PREFIX = "x-amz-meta-"
#: Content types other tools give directory markers.
DIRECTORY_TYPES = ("application/x-directory", "httpd/unix-directory")
#: Characters s3fs leaves unescaped in the xattr header (its urlEncodePath).
_XATTR_SAFE = ".-_~/"
_FILE_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
               stat.S_IFCHR, stat.S_IFBLK)


@dataclass(frozen=True, slots=True)
class Posix:
    """What S3 user metadata says about one object; None: not stored (defaults show)."""

    mode: int | None = None       # st_mode, type bits included when known
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    atime_ns: int | None = None
    rdev: int | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()   # user xattrs, sorted by name

    def replace(self, **changes: object) -> Posix:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def file_type(self) -> int | None:
        """S_IFREG, S_IFLNK, ... when the mode carries type bits."""
        kind = stat.S_IFMT(self.mode or 0)
        return kind if kind in _FILE_TYPES else None

    @property
    def is_symlink(self) -> bool:
        return self.file_type == stat.S_IFLNK

    def xattr(self, name: str) -> bytes | None:
        return dict(self.xattrs).get(name)

    def with_xattr(self, name: str, value: bytes | None) -> Posix:
        """A copy with `name` set to `value` (None: removed)."""
        found = dict(self.xattrs)
        if value is None:
            found.pop(name, None)
        else:
            found[name] = value
        return self.replace(xattrs=tuple(sorted(found.items())))

    def overlaid(self, newer: Posix) -> Posix:
        """`newer`'s stored fields over this one's (xattrs: newer's whole set if it has any)."""
        fields = {f.name: getattr(newer, f.name) for f in dataclasses.fields(Posix)
                  if f.name != "xattrs" and getattr(newer, f.name) is not None}
        if newer.xattrs:
            fields["xattrs"] = newer.xattrs
        return self.replace(**fields)


#: Metadata looked up and found empty (an object no tool gave POSIX headers).
NO_HEADERS = Posix()


# ---------------------------------------------------------------- times


#: `SEC` or `SEC.FRACTION`; 12 digits of seconds are already beyond int64 nanoseconds.
_TIME = re.compile(r"(-?[0-9]{1,12})(?:\.([0-9]{1,9}))?")
#: RFC 3339, as rclone's `--metadata` writes atime and btime (2006-01-02T15:04:05.999999999Z).
_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")


def format_time(ns: int) -> str:
    """s3fs's `str(timespec)`: `SEC` when the nanoseconds are 0, else `SEC.NNNNNNNNN`."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return str(sec) if nsec == 0 else f"{sec}.{nsec:09d}"


def parse_time(text: str) -> int | None:
    """Seconds with an optional fraction of up to 9 digits (s3fs, rclone) -> ns. The
    fraction adds to the seconds even when they are negative, as in a timespec (s3fs
    writes -1.5 s as `-2.500000000`, and so does format_time). A header is anyone's
    input: ASCII digits only (str.isdigit takes '²', which int() refuses), 12 digits of
    seconds at most. A time beyond what a timespec in ns, the kernel and SQLite hold
    (int64 ns: years 1677 to 2262) is clamped to that range, as `clamp_time` does for one
    set through the mount: s3fs stores `touch -d 3000-01-01` as is, and reading it as no
    time showed the object's date, which the next `chmod` then stored over it."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        return _rfc3339(text.strip())
    sec, frac = match.groups()
    return clamp_time(int(sec) * 1_000_000_000 + int((frac or "").ljust(9, "0")))


def _rfc3339(text: str) -> int | None:
    """An RFC 3339 time (rclone's `--metadata` atime) -> ns; None when not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = match.groups()
    fields = (int(year), int(month), int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]
            and fields[3] < 24 and fields[4] < 60 and fields[5] <= 60):
        return None
    seconds = calendar.timegm(fields)
    if sign:
        seconds -= (1 if sign == "+" else -1) * (int(off_h) * 3600 + int(off_m) * 60)
    return clamp_time(seconds * 1_000_000_000 + int((frac or "").ljust(9, "0")))


#: The times this mount keeps, in ns (int64, as SQLite and a kernel timespec in ns hold
#: them: years 1677 to 2262).
TIME_MIN, TIME_MAX = -(1 << 63), (1 << 63) - 1


def clamp_time(ns: int) -> int:
    """A time set through the mount, within what is kept: as a local file system clamps
    to its own range (`touch -d 3000-01-01` keeps 2262, not nothing)."""
    return min(max(ns, TIME_MIN), TIME_MAX)


def _mode(text: str | None) -> int | None:
    """A `mode` header: decimal as s3fs writes it, octal as others do. A leading 0 means
    octal (s3fs reads the header with strtol base 0; rclone documents `0100664`);
    rclone's `--metadata` writes `100664`, which read as decimal has no valid file type:
    such a value is read as octal when that gives one."""
    if text is None:
        return None
    text = text.strip()
    if len(text) > 1 and text[0] == "0":
        return _int(text, 8)
    value = _int(text)
    if value is not None and stat.S_IFMT(value) and stat.S_IFMT(value) not in _FILE_TYPES \
            or value is not None and value > 0o177777:
        octal = _int(text, 8)
        if octal is not None and stat.S_IFMT(octal) in _FILE_TYPES:
            return octal
    return value


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip(), base)
    except ValueError:
        return None
    return value if 0 <= value < 1 << 32 else None


# ---------------------------------------------------------------- xattrs


def encode_xattrs(xattrs: tuple[tuple[str, bytes], ...]) -> str:
    """s3fs's `x-amz-meta-xattr`: {"name":"<base64>",...} percent-encoded (urlEncodePath)."""
    body = ",".join(f'"{name}":"{base64.b64encode(value).decode()}"' for name, value in xattrs)
    return urllib.parse.quote("{" + body + "}", safe=_XATTR_SAFE)


def decode_xattrs(header: str) -> tuple[tuple[str, bytes], ...]:
    """s3fs's parse_xattrs: pairs split at ',' and at each pair's last ':'; bad pairs skipped."""
    text = urllib.parse.unquote(header)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return ()
    found: dict[str, bytes] = {}
    for pair in text[start + 1:end].split(","):
        quoted_name, colon, quoted_value = pair.rpartition(":")
        name, value = _dequoted(quoted_name), _dequoted(quoted_value)
        if not colon or not name or value is None:
            continue
        try:
            found[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
    return tuple(sorted(found.items()))


def _dequoted(text: str) -> str | None:
    """s3fs's takeout_str_dquart: what is between the first and the last '"' (None: one
    quote only, or a quote between them); text without quotes as it is."""
    first = text.find('"')
    if first < 0:
        return text
    inner, quote, _ = text[first + 1:].rpartition('"')
    return None if not quote or '"' in inner else inner


def storable_xattr_name(name: str) -> bool:
    """Can s3fs's format hold this name? Its parser splits the pairs at ',', a pair at its
    first ':' (parse_xattr_keyval), and needs the quotes: `user.a:b` was stored and read
    back here (the last ':'), but s3fs lost it."""
    return bool(name) and not any(c in name for c in ',":')


# ---------------------------------------------------------------- headers


def from_headers(metadata: Mapping[str, str], *, is_dir: bool = False) -> Posix:
    """The POSIX metadata in an object's user metadata (boto3 `Metadata`: names without
    `x-amz-meta-`), with the fallbacks of s3sync and GCS. No type bits in the mode: the
    type comes from the key (a directory marker or a regular file). Runs once per HEAD
    answer (a cold `ls -l` of 1,000 objects: 1,000 times), so it stays plain loops."""
    if not metadata:  # most objects of most buckets: nothing to decode
        return NO_HEADERS
    meta = metadata if all(map(str.islower, metadata)) else \
        {k.lower(): v for k, v in metadata.items()}
    mode, s3sync = _mode(meta.get("mode")), False
    if mode is None:
        mode = _int(meta.get("permissions"))
        s3sync = mode is not None
    if mode is None:
        mode = _int(meta.get("goog-reserved-posix-mode"), 8)
    if mode is not None and stat.S_IFMT(mode) not in _FILE_TYPES:
        mode = (stat.S_IFDIR if is_dir else stat.S_IFREG) | stat.S_IMODE(mode)
        if not mode & 0o777 and not s3sync:  # as s3fs: no permission at all: r(x) for the owner
            mode |= stat.S_IRUSR | (stat.S_IXUSR if is_dir else 0)
    mtime = meta.get("mtime") or meta.get("goog-reserved-file-mtime")
    ctime, atime = meta.get("ctime"), meta.get("atime")
    xattr = meta.get("xattr")
    return Posix(
        mode=mode, uid=_first_int(meta, _UID_NAMES), gid=_first_int(meta, _GID_NAMES),
        mtime_ns=parse_time(mtime) if mtime else None,
        ctime_ns=parse_time(ctime) if ctime is not None else None,
        atime_ns=parse_time(atime) if atime is not None else None,
        rdev=_int(meta.get("rdev")),
        xattrs=decode_xattrs(xattr) if xattr is not None else ())


_UID_NAMES = ("uid", "owner", "goog-reserved-posix-uid")
_GID_NAMES = ("gid", "group", "goog-reserved-posix-gid")
#: Every user metadata name from_headers reads: what s3fuse writes replaces them all.
POSIX_NAMES = frozenset({"mode", "permissions", "goog-reserved-posix-mode", *_UID_NAMES,
                         *_GID_NAMES, "mtime", "goog-reserved-file-mtime", "ctime", "atime",
                         "rdev", "xattr"})


def foreign_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The user metadata that is not POSIX metadata (another tool's: rclone's `md5chksum`,
    a user's `project`): a copy that replaces the POSIX metadata keeps it, as s3fs does."""
    return {name: value for name, value in metadata.items() if name.lower() not in POSIX_NAMES}


def with_foreign(metadata: Mapping[str, str], foreign: Mapping[str, str]) -> dict[str, str]:
    """`metadata` (the POSIX metadata a copy or a new version stores) plus the other user
    metadata of the version it replaces (another tool's, a user's own), as s3fs keeps it;
    the POSIX metadata alone when both would pass S3's 2 KiB of user metadata."""
    merged = {**foreign, **metadata}
    return merged if headers_size(merged) <= METADATA_LIMIT else dict(metadata)


def _first_int(meta: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    """The first of `names` whose value is a valid id (s3fs, then s3sync, then GCS)."""
    for name in names:
        value = _int(meta.get(name))
        if value is not None:
            return value
    return None


def stored_mtime(posix: Posix, otherwise: int) -> int:
    """`posix`'s mtime when it stores one, else `otherwise` (LastModified, now): 0 is a
    stored mtime too (`touch -d @0`, SOURCE_DATE_EPOCH=0 builds), not a missing one."""
    return otherwise if posix.mtime_ns is None else posix.mtime_ns


def to_headers(posix: Posix) -> dict[str, str]:
    """The user metadata s3fs would write for `posix` (only the fields that are stored)."""
    headers: dict[str, str] = {}
    if posix.mode is not None:
        headers["mode"] = str(posix.mode)
    if posix.uid is not None:
        headers["uid"] = str(posix.uid)
    if posix.gid is not None:
        headers["gid"] = str(posix.gid)
    for name, ns in (("mtime", posix.mtime_ns), ("ctime", posix.ctime_ns),
                     ("atime", posix.atime_ns)):
        if ns is not None:
            headers[name] = format_time(ns)
    if posix.rdev:
        headers["rdev"] = str(posix.rdev)
    if posix.xattrs:
        headers["xattr"] = encode_xattrs(posix.xattrs)
    return headers


def headers_size(headers: Mapping[str, str]) -> int:
    """What S3 counts against METADATA_LIMIT: every `x-amz-meta-` name and value in bytes."""
    return sum(len((HEADER_PREFIX + k).encode()) + len(v.encode()) for k, v in headers.items())


def fits(posix: Posix) -> bool:
    """Do `posix`'s headers fit S3's user metadata limit?"""
    return headers_size(to_headers(posix)) <= METADATA_LIMIT


# ---------------------------------------------------------------- local storage


def to_json(posix: Posix | None) -> str | None:
    """Compact form for our SQLite stores (journal, listings): the headers themselves.
    Remembered decoded (see from_json) when decoding surely gives `posix` back."""
    if posix is None:
        return None
    if posix is NO_HEADERS:  # from_headers of an object without metadata: no encoding
        return "{}"
    text = json.dumps(to_headers(posix), separators=(",", ":"), sort_keys=True)
    if _round_trips(posix):  # whatever is_dir the reader gives
        _remember((text, False), posix)
        _remember((text, True), posix)
    return text


def from_json(text: str | None, *, is_dir: bool = False) -> Posix | None:
    """What to_json stored. Decoded ones are remembered: a stored listing is read back
    at every readdir and lookup, and a HEAD's answer right after it is stored (a cold
    `ls -l` reads each of its thousand answers back), so most reads decode nothing."""
    if text is None:
        return None
    posix = _DECODED.get((text, is_dir))
    if posix is None:
        posix = from_headers(json.loads(text), is_dir=is_dir)
        _remember((text, is_dir), posix)
    return posix


#: Stored forms decoded lately: (text, is_dir) -> their Posix (immutable: shared safely,
#: also across threads). Bounded: emptied when full (~DECODED_MAX x 0.4 KiB at most).
_DECODED: dict[tuple[str, bool], Posix] = {}
DECODED_MAX = 4096


def _remember(key: tuple[str, bool], posix: Posix) -> None:
    if len(_DECODED) >= DECODED_MAX:
        _DECODED.clear()
    _DECODED[key] = posix


def _round_trips(posix: Posix) -> bool:
    """Does from_headers(to_headers(posix)) give `posix` itself, whatever is_dir? Yes when
    its mode has its type bits, its ids are in range, its rdev is not 0 (not stored) and
    it has no xattrs (their names and order are not checked here) and its times are
    within TIME_MIN..TIME_MAX."""
    if posix.rdev == 0 or posix.xattrs:
        return False
    if posix.mode is not None and stat.S_IFMT(posix.mode) not in _FILE_TYPES:
        return False
    for value in (posix.mode, posix.uid, posix.gid):  # loops, not all(): once per HEAD
        if value is not None and not 0 <= value < 1 << 32:
            return False
    for ns in (posix.mtime_ns, posix.ctime_ns, posix.atime_ns):
        if ns is not None and not TIME_MIN <= ns <= TIME_MAX:
            return False
    return True
