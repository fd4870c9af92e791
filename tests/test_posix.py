"""posix.py's header codec against s3fs-fuse's own format: its test vectors
(src/test_string_util.cpp), its urlEncodePath, the fallbacks it reads (s3sync, GCS, rclone),
the 2 KiB limit, and round trips of every field (hypothesis)."""
from __future__ import annotations

import base64
import json
import stat
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3fuse import posix
from s3fuse.posix import NO_HEADERS, Posix

S = 1_000_000_000


def s3fs_url_encode_path(text: str) -> str:
    """s3fs's rawUrlEncode with encode_path_except_chars, byte by byte (string_util.cpp)."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~/"
    return "".join(chr(c) if c in safe else f"%{c:02X}" for c in text.encode())


def s3fs_raw_build_xattrs(xattrs: dict[str, bytes]) -> str:
    """s3fs's raw_build_xattrs: a std::map, so names in byte order."""
    pairs = sorted(xattrs.items(), key=lambda item: item[0].encode())
    body = ",".join(f'"{name}":"{base64.b64encode(value).decode()}"' for name, value in pairs)
    return "{" + body + "}" if pairs else ""


# ---------------------------------------------------------------- xattrs


@pytest.mark.parametrize(("xattrs", "raw"), [  # test_parse_xattrs in s3fs's test_string_util.cpp
    ({"foo": b"bar"}, '{"foo":"YmFy"}'),
    ({"foo": b"bar", "1234": b"5678"}, '{"1234":"NTY3OA==","foo":"YmFy"}'),
    ({"foo:bar": b"baz"}, '{"foo:bar":"YmF6"}'),
])
def test_s3fs_xattr_vectors(xattrs: dict[str, bytes], raw: str) -> None:
    items = tuple(sorted(xattrs.items()))
    encoded = posix.encode_xattrs(items)
    assert urllib.parse.unquote(encoded) == raw
    assert encoded == s3fs_url_encode_path(raw)
    assert posix.decode_xattrs(encoded) == items
    assert posix.decode_xattrs(raw) == items  # decoding plain JSON is a no-op


def test_xattr_header_is_percent_encoded_as_s3fs_does() -> None:
    encoded = posix.encode_xattrs((("user.a/b~c-d_e", "é %{}".encode()),))
    assert encoded == '%7B%22user.a/b~c-d_e%22%3A%22w6kgJXt9%22%7D'  # uppercase hex, / kept
    lower_hex = encoded.replace("%7B", "%7b").replace("%3A", "%3a")  # s3fs's urlDecode takes both
    assert posix.decode_xattrs(lower_hex) == (("user.a/b~c-d_e", "é %{}".encode()),)


@given(st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=',":'), min_size=1),
    st.binary(), max_size=5))
def test_xattrs_as_s3fs_writes_and_reads_them(xattrs: dict[str, bytes]) -> None:
    items = tuple(sorted(xattrs.items()))
    encoded = posix.encode_xattrs(items)
    if items:  # s3fs's build_xattrs: its raw form, percent-encoded
        assert encoded == s3fs_url_encode_path(s3fs_raw_build_xattrs(xattrs))
    assert posix.decode_xattrs(encoded) == items
    assert all(posix.storable_xattr_name(name) for name in xattrs)


@pytest.mark.parametrize(("header", "expected"), [
    ("", ()), ("{}", ()), ("%7B%7D", ()), ("not json", ()), ("}{", ()),
    ('{foo:YmFy}', (("foo", b"bar"),)),            # s3fs takes names without quotes as they are
    (' { "foo" : "YmFy" } ', (("foo", b"bar"),)),  # and text around the quotes is dropped
    ('{"a":"YmFy","b":"%%%","c":"YmF6"}', (("a", b"bar"), ("c", b"baz"))),  # bad base64: skipped
    ('{"a":"YmFy","b"c":"YmF6"}', (("a", b"bar"),)),  # a quote inside a name: skipped (s3fs)
    ('{"a":"YmFy","":"YmF6","nocolon"}', (("a", b"bar"),)),
    ('{"a":"YmFy","a":"YmF6"}', (("a", b"baz"),)),  # the last one wins, as in s3fs's map
])
def test_xattr_parsing_of_foreign_headers(header: str, expected: tuple[tuple[str, bytes], ...]
                                          ) -> None:
    assert posix.decode_xattrs(header) == expected


def test_storable_xattr_names_and_xattr_edits() -> None:
    assert posix.storable_xattr_name("user.x/y/z é")
    assert not any(posix.storable_xattr_name(n) for n in ("", "user.a,b", 'user."', "user.c:d"))
    p = Posix().with_xattr("user.b", b"2").with_xattr("user.a", b"1")
    assert p.xattrs == (("user.a", b"1"), ("user.b", b"2")) and p.xattr("user.b") == b"2"
    assert p.with_xattr("user.a", None).xattrs == (("user.b", b"2"),)
    assert p.xattr("user.none") is None


# ---------------------------------------------------------------- mode, owner, device


@pytest.mark.parametrize(("headers", "is_dir", "mode"), [
    ({"mode": "33188"}, False, stat.S_IFREG | 0o644),    # a 0644 file, as s3fs writes it
    ({"mode": "16877"}, True, stat.S_IFDIR | 0o755),     # a 0755 directory
    ({"mode": "41471"}, False, stat.S_IFLNK | 0o777),    # a symlink
    ({"mode": "4516"}, False, stat.S_IFIFO | 0o644),     # a fifo
    ({"mode": "16877"}, False, stat.S_IFDIR | 0o755),    # type bits win over the key
    ({"mode": "493"}, False, stat.S_IFREG | 0o755),      # no type bits: the key's type
    ({"mode": "493"}, True, stat.S_IFDIR | 0o755),
    ({"mode": "3565"}, False, stat.S_IFREG | 0o6755),    # setuid/setgid kept
    ({"mode": "0"}, False, stat.S_IFREG | 0o400),        # s3fs: no permission at all -> r
    ({"mode": "0"}, True, stat.S_IFDIR | 0o500),         # ... r-x for a directory
    ({"permissions": "420"}, False, stat.S_IFREG | 0o644),  # s3sync, decimal
    ({"permissions": "0"}, False, stat.S_IFREG),         # s3sync: as it says
    ({"goog-reserved-posix-mode": "755"}, False, stat.S_IFREG | 0o755),  # GCS, octal
    ({"goog-reserved-posix-mode": "750"}, True, stat.S_IFDIR | 0o750),
    ({"mode": "33188", "permissions": "511", "goog-reserved-posix-mode": "777"}, False,
     stat.S_IFREG | 0o644),                              # mode first
    ({"permissions": "384", "goog-reserved-posix-mode": "777"}, False, stat.S_IFREG | 0o600),
    ({"mode": "rwx", "permissions": "384"}, False, stat.S_IFREG | 0o600),  # garbage: next one
    ({"Mode": "33188"}, False, stat.S_IFREG | 0o644),    # any case
    ({}, False, None), ({"mode": "-1"}, False, None), ({"mode": str(1 << 32)}, False, None),
    # octal: rclone's --metadata (type bits, no leading 0; 100640 in decimal has no valid
    # type), and a leading 0 (s3fs reads the header with strtol base 0)
    ({"mode": "100640"}, False, stat.S_IFREG | 0o640),
    ({"mode": "40755"}, True, stat.S_IFDIR | 0o755),
    ({"mode": "120777"}, False, stat.S_IFLNK | 0o777),
    ({"mode": "0100664"}, False, stat.S_IFREG | 0o664),
    ({"mode": "0644"}, False, stat.S_IFREG | 0o644),
    ({"mode": "0750"}, True, stat.S_IFDIR | 0o750),
    ({"mode": "0800"}, False, None),                     # not octal: garbage
    ({"mode": "644"}, False, stat.S_IFREG | 0o1204),     # decimal, as compat.md says
    ({"mode": "99999999"}, False, stat.S_IFREG | 0o377),  # neither: decimal, type from the key
])
def test_mode(headers: dict[str, str], is_dir: bool, mode: int | None) -> None:
    assert posix.from_headers(headers, is_dir=is_dir).mode == mode


def test_mode_is_written_with_type_bits_in_decimal() -> None:
    assert posix.to_headers(Posix(mode=stat.S_IFREG | 0o644)) == {"mode": "33188"}
    assert posix.to_headers(Posix(mode=stat.S_IFDIR | 0o755)) == {"mode": "16877"}
    assert posix.to_headers(Posix(mode=stat.S_IFLNK | 0o777)) == {"mode": "41471"}
    link = posix.from_headers({"mode": "41471"})
    assert link.is_symlink and link.file_type == stat.S_IFLNK
    assert Posix(mode=0o644).file_type is None and NO_HEADERS.file_type is None


@pytest.mark.parametrize(("headers", "uid", "gid"), [
    ({"uid": "1000", "gid": "100"}, 1000, 100),
    ({"owner": "501", "group": "20"}, 501, 20),                       # s3sync
    ({"goog-reserved-posix-uid": "7", "goog-reserved-posix-gid": "8"}, 7, 8),  # GCS
    ({"uid": "1", "owner": "2", "goog-reserved-posix-uid": "3",
      "gid": "4", "group": "5", "goog-reserved-posix-gid": "6"}, 1, 4),  # s3fs's order
    ({"owner": "2", "goog-reserved-posix-uid": "3", "group": "5",
      "goog-reserved-posix-gid": "6"}, 2, 5),
    ({"uid": "x", "owner": "2", "gid": "-1", "group": "5"}, 2, 5),  # garbage: the next one
    ({"uid": "4294967295", "gid": "0"}, 4294967295, 0),
    ({}, None, None),
])
def test_owner(headers: dict[str, str], uid: int | None, gid: int | None) -> None:
    found = posix.from_headers(headers)
    assert (found.uid, found.gid) == (uid, gid)


def test_rdev() -> None:
    assert posix.from_headers({"rdev": "2049"}).rdev == 2049
    assert posix.from_headers({"rdev": "junk"}).rdev is None
    assert posix.to_headers(Posix(mode=stat.S_IFCHR | 0o600, rdev=2049)) == {
        "mode": str(stat.S_IFCHR | 0o600), "rdev": "2049"}
    assert "rdev" not in posix.to_headers(Posix(rdev=0))  # s3fs writes none


# ---------------------------------------------------------------- times


@pytest.mark.parametrize(("text", "ns"), [
    ("1700000000", 1700000000 * S),
    ("1700000000.123456789", 1700000000 * S + 123456789),   # s3fs
    ("1700000000.000000001", 1700000000 * S + 1),
    ("1700000000.5", 1700000000 * S + 500_000_000),         # rclone: a decimal fraction
    ("1700000000.123", 1700000000 * S + 123_000_000),
    (" 1700000000 ", 1700000000 * S),
    ("0", 0),
    ("-2.500000000", -1_500_000_000),                        # a timespec: -2 s + 0.5 s
    ("-86400", -86400 * S),
    ("", None), ("abc", None), ("1.2.3", None), ("1.", None), (".5", None), ("1e9", None),
    ("1.1234567890", None), ("+5", None), ("1 000", None), ("1.-5", None),
    # anyone who may write to a bucket chooses these: no int() error, nothing beyond int64 ns
    ("9" * 5000, None), ("9" * 30, None), ("-" + "9" * 30, None), ("\u00b2", None),
    ("1\u00b3", None), ("1.\u0665", None), ("9223372036.854775807", (1 << 63) - 1),
    ("-9223372037.145224192", -(1 << 63)),
    # beyond int64 ns: clamped, as a time set through the mount is (s3fs stores year 3000)
    ("9223372036.854775808", (1 << 63) - 1), ("32503680000", (1 << 63) - 1),
    ("-999999999999", -(1 << 63)),
    # RFC 3339: rclone's --metadata atime and btime
    ("2020-01-02T03:04:05.123456789Z", 1577934245 * S + 123456789),
    ("2020-01-02T03:04:05Z", 1577934245 * S),
    ("2020-01-02 03:04:05.5+01:00", 1577930645 * S + 500_000_000),
    ("2020-01-02T03:04:05-00:30", 1577936045 * S),
    ("1969-12-31T23:59:59Z", -S),
    ("2020-02-30T00:00:00Z", None), ("2020-13-01T00:00:00Z", None),
    ("2020-01-02T03:04:05", None), ("2020-01-02", None), ("2020-01-02T24:00:00Z", None),
    ("\uff12020-01-02T03:04:05Z", None), ("9999-12-31T23:59:59Z", (1 << 63) - 1),
])
def test_parse_time(text: str, ns: int | None) -> None:
    assert posix.parse_time(text) == ns


@pytest.mark.parametrize(("ns", "text"), [
    (1700000000 * S, "1700000000"),                   # s3fs: SEC when no nanoseconds
    (1700000000 * S + 5, "1700000000.000000005"),     # else SEC.NNNNNNNNN
    (1700000000 * S + 500_000_000, "1700000000.500000000"),
    (0, "0"),
    (-1_500_000_000, "-2.500000000"),
])
def test_format_time(ns: int, text: str) -> None:
    assert posix.format_time(ns) == text
    assert posix.parse_time(text) == ns


def test_times_in_headers() -> None:
    headers = {"mtime": "1700000000.5", "ctime": "1700000001", "atime": "1600000000.000000002"}
    found = posix.from_headers(headers)
    assert (found.mtime_ns, found.ctime_ns, found.atime_ns) == (
        1700000000 * S + 500_000_000, 1700000001 * S, 1600000000 * S + 2)
    assert posix.to_headers(found) == {"mtime": "1700000000.500000000", "ctime": "1700000001",
                                       "atime": "1600000000.000000002"}
    gcs = posix.from_headers({"goog-reserved-file-mtime": "1600000000"})
    assert gcs.mtime_ns == 1600000000 * S
    assert posix.from_headers({"mtime": "7", "goog-reserved-file-mtime": "8"}).mtime_ns == 7 * S
    garbage = posix.from_headers({"mtime": "yesterday", "ctime": "1.x", "atime": ""})
    assert (garbage.mtime_ns, garbage.ctime_ns, garbage.atime_ns) == (None, None, None)
    assert posix.from_headers({"X-Amz-Meta-Mtime": "1"}).mtime_ns is None  # names sans prefix
    assert posix.from_headers({"Mtime": "1"}).mtime_ns == S  # rclone's capitalised name


# ---------------------------------------------------------------- limit, local form


def test_headers_size_counts_prefixed_names_and_utf8_bytes() -> None:
    assert posix.headers_size({"mode": "33188"}) == len("x-amz-meta-mode") + 5
    assert posix.headers_size({"a": "é"}) == len("x-amz-meta-a") + 2
    assert posix.headers_size({}) == 0


def test_fits_at_the_2_kib_boundary() -> None:
    base = Posix(mode=stat.S_IFREG | 0o644, uid=1000, gid=1000, mtime_ns=1700000000 * S + 1,
                 ctime_ns=1700000000 * S, atime_ns=1700000000 * S, xattrs=(("user.", b"v" * 1000),))
    short = posix.METADATA_LIMIT - posix.headers_size(posix.to_headers(base))
    assert short > 0
    # a name character costs one byte once percent-encoded (alnum)
    exact = base.replace(xattrs=(("user." + "n" * short, b"v" * 1000),))
    assert posix.headers_size(posix.to_headers(exact)) == posix.METADATA_LIMIT == 2048
    assert posix.fits(exact)
    over = exact.replace(xattrs=(("user." + "n" * (short + 1), b"v" * 1000),))
    assert posix.headers_size(posix.to_headers(over)) == 2049 and not posix.fits(over)
    assert posix.fits(NO_HEADERS) and posix.to_headers(NO_HEADERS) == {}


def test_json_form() -> None:
    p = Posix(mode=stat.S_IFLNK | 0o777, uid=0, gid=0, mtime_ns=S, xattrs=(("user.k", b"\0"),))
    text = posix.to_json(p)
    assert text is not None and text.startswith('{"gid":"0","mode":"41471"') and " " not in text
    assert posix.from_json(text) == p
    assert posix.to_json(None) is None and posix.from_json(None) is None
    assert posix.to_json(NO_HEADERS) == "{}" and posix.from_json("{}") == NO_HEADERS
    typeless = posix.to_json(Posix(mode=0o755))
    assert posix.from_json(typeless, is_dir=True) == Posix(mode=stat.S_IFDIR | 0o755)
    assert posix.from_json(typeless) == Posix(mode=stat.S_IFREG | 0o755)  # not the dir's


@given(st.tuples(
    st.none() | st.integers(0, 0o177777), st.none() | st.integers(-1, 1 << 33),
    st.none() | st.integers(0, (1 << 32) - 1), st.none() | st.integers(-(1 << 60), 1 << 60),
    st.none() | st.integers(0, 3)), st.booleans(), st.booleans())
def test_remembered_decodes_are_what_decoding_gives(fields: tuple, is_dir: bool,
                                                    read_first: bool) -> None:
    """from_json answers from what to_json (or an earlier read) remembered: always what a
    fresh decode of the text gives, for either is_dir (cold `ls -l` reads every HEAD
    answer back right after storing it)."""
    mode, uid, gid, ns, rdev = fields
    p = Posix(mode=mode, uid=uid, gid=gid, mtime_ns=ns, ctime_ns=ns, rdev=rdev)
    posix._DECODED.clear()
    text = posix.to_json(p)
    assert text is not None
    if read_first:
        posix.from_json(text, is_dir=not is_dir)
    expected = posix.from_headers(json.loads(text), is_dir=is_dir)
    assert posix.from_json(text, is_dir=is_dir) == expected
    assert posix.from_json(text, is_dir=is_dir) is posix.from_json(text, is_dir=is_dir)


def test_overlaid() -> None:
    old = Posix(mode=stat.S_IFREG | 0o644, uid=1, mtime_ns=S, xattrs=(("user.a", b"1"),))
    assert old.overlaid(Posix(uid=2)) == old.replace(uid=2)
    assert old.overlaid(Posix(xattrs=(("user.b", b"2"),))).xattrs == (("user.b", b"2"),)
    assert old.overlaid(NO_HEADERS) == old


# ---------------------------------------------------------------- round trip

_optional_u32 = st.none() | st.integers(0, (1 << 32) - 1)
_optional_ns = st.none() | st.integers(-(1 << 63), (1 << 63) - 1)  # a timespec in int64 ns
_posix = st.builds(
    Posix,
    mode=st.none() | st.builds(lambda kind, perm: kind | perm,
                               st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK,
                                                stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                                                stat.S_IFBLK]),
                               st.integers(0, 0o7777)),
    uid=_optional_u32, gid=_optional_u32,
    mtime_ns=_optional_ns, ctime_ns=_optional_ns, atime_ns=_optional_ns,
    rdev=st.none() | st.integers(1, (1 << 32) - 1),
    xattrs=st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=',":'),
                min_size=1, max_size=20),
        st.binary(max_size=40), max_size=4).map(lambda d: tuple(sorted(d.items()))))


@given(_posix, st.booleans())
def test_round_trip(p: Posix, is_dir: bool) -> None:
    """Posix -> headers -> Posix, and through the JSON form, whatever the key's type."""
    headers = posix.to_headers(p)
    assert all(k == k.lower() and v.isascii() for k, v in headers.items())
    assert posix.from_headers(headers, is_dir=is_dir) == p
    assert posix.from_json(posix.to_json(p), is_dir=is_dir) == p
    assert posix.fits(p) == (posix.headers_size(headers) <= 2048)
