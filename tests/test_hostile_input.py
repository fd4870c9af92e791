"""Hostile keys, sizes and headers (issues 7, 13): NUL, control characters and invalid
UTF-8 in keys, 1024-byte keys, 100,000 entries in one directory, POSIX headers holding
times nothing can hold. Manifests and archives have their
own hostile tests (test_manifest_index.py, test_mount_manifest.py, test_archive_hostile.py)."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from s3fuse.cache.meta import MetaStore
from s3fuse.config import parse_source
from s3fuse.store.presigned import parse_list_v2
from s3fuse.errors import RemoteError
from s3fuse.store.s3 import MAX_OBJECT_SIZE, ListPage, ObjectInfo, _listed, info_of
from s3fuse.names import is_posix_name
from s3fuse.util.oncelog import OnceLogger
from s3fuse.tree.bucket import BucketTree, entries_from_pages
from tests.support.motokeys import moto_put_many


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


# ------------------------------------------------------------------ names


def test_name_filter_refuses_what_cannot_be_a_posix_name():
    for bad in ("", ".", "..", "a/b", "/", "a\0b", "\0", "x" * 256, "é" * 128,
                "bad\udcff", "\udcc3\udca9"):   # surrogates: bytes that were not UTF-8
        assert not is_posix_name(bad), repr(bad)
    for good in ("a", "...", ".hidden", "ctl\x01\x7f", "tab\tname", "new\nline", "x" * 255,
                 "é" * 127, "\ufffd", "日本語", "🙂" * 63, " ", "-rf"):
        assert is_posix_name(good), repr(good)


def test_listing_with_invalid_utf8_and_nul_keys():
    """A server may return keys that are not UTF-8 or hold NUL (url-encoded): hidden, not
    shown as a name that maps back to another key."""
    body = (b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated>'
            b"<EncodingType>url</EncodingType>"
            b"<Contents><Key>d/bad%FF%FEutf8</Key><Size>1</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/nul%00key</Key><Size>1</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/ctl%01key</Key><Size>1</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/caf%C3%A9</Key><Size>1</Size><ETag>e</ETag></Contents>"
            b"<CommonPrefixes><Prefix>d/sub%FF/</Prefix></CommonPrefixes>"
            b"</ListBucketResult>")
    resp = parse_list_v2(body)
    page = ListPage([p["Prefix"] for p in resp["CommonPrefixes"]],
                    [ObjectInfo(o["Key"], 1, 0, "e") for o in resp["Contents"]])
    entries = entries_from_pages([page], "d/", OnceLogger(logging.getLogger("t")), 0.0)
    assert [e.name for e in entries] == ["café", "ctl\x01key"]


@pytest.mark.mount
def test_hostile_keys_through_the_mount(s3, bucket, mount_factory):
    long_ok = "/".join(["é" * 100 + "a" * 3] * 4) + "/" + "z" * 208   # 1024 bytes, segments <= 255
    assert len(long_ok.encode()) == 1024
    long_segment = "s" * 1024                                           # 1024 bytes, one segment
    keys = {"nul\x00key": b"n", "ctl\x01key": b"c", "tab\tkey": b"t", long_ok: b"long",
            long_segment: b"hidden", "normal.txt": b"fine"}
    for key, body in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    import urllib.request   # invalid UTF-8 on the wire: moto stores U+FFFD, as a server would
    req = urllib.request.Request(f"{s3.meta.endpoint_url}/{bucket}/bad%FF%FEutf8", data=b"u",
                                 method="PUT")
    urllib.request.urlopen(req).close()
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"hiding s3")
    root = m.path(bucket)
    names = set(os.listdir(root))
    assert names == {"ctl\x01key", "tab\tkey", long_ok.split("/")[0], "normal.txt",
                     "bad\ufffd\ufffdutf8"}
    assert (root / "ctl\x01key").read_bytes() == b"c"
    assert (root / "tab\tkey").read_bytes() == b"t"
    assert (root / long_ok).read_bytes() == b"long"
    stored = s3.get_object(Bucket=bucket, Key="bad\ufffd\ufffdutf8")["Body"].read()
    assert (root / "bad\ufffd\ufffdutf8").read_bytes() == stored
    with pytest.raises(OSError):
        os.stat(root / long_segment)          # ENAMETOOLONG from the kernel, never a crash
    with pytest.raises(OSError) as info:      # a name that is not UTF-8 cannot become a key
        os.open(os.path.join(os.fsencode(root), b"new\xffname"), os.O_CREAT | os.O_WRONLY, 0o644)
    assert info.value.errno == errno.EINVAL
    raw = os.fsencode(root)
    bad = os.path.join(raw, b"\xff\xfe")
    for call, args, expected in ((os.stat, (bad,), errno.ENOENT), (os.unlink, (bad,), errno.ENOENT),
                                 (os.rmdir, (bad,), errno.ENOENT), (os.mkdir, (bad,), errno.EINVAL),
                                 (os.rename, (os.path.join(raw, b"normal.txt"), bad), errno.EINVAL),
                                 (os.getxattr, (bad, "user.s3.uri"), errno.ENOENT)):
        with pytest.raises(OSError) as info:
            call(*args)
        assert info.value.errno == expected, (call, info.value)
    assert (root / "normal.txt").read_bytes() == b"fine"
    assert m.proc.poll() is None
    assert "hiding s3 key" in m.log()


# ------------------------------------------------------------------ one huge directory


class ListingStore:
    """A store that lists `count` keys in one directory, 1,000 a page, made on the fly."""

    def __init__(self, count: int):
        self.count = count
        self.pages = 0

    def list_pages(self, bucket: str, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        if prefix != "big/":
            yield ListPage(["big/"] if prefix == "" else [], [])
            return
        for start in range(0, self.count, 1000):
            self.pages += 1
            yield ListPage([], [ObjectInfo(f"big/f{i:07d}", i, 1_000_000_000, "e")
                                for i in range(start, min(start + 1000, self.count))])


def test_posix_headers_with_impossible_times_show_the_defaults(s3, bucket, mount_factory):
    """Times beyond int64 ns in s3fs's headers (a 30-digit `mtime` is 32 bytes of metadata
    anyone who may write to the bucket can set) made the batch of HEAD answers of `ls -l`
    raise on the event loop (SQLite cannot store them) and took the daemon down."""
    s3.put_object(Bucket=bucket, Key="d/ok.txt", Body=b"fine")
    s3.put_object(Bucket=bucket, Key="d/far.txt", Body=b"x",
                  Metadata={"mtime": "9" * 30, "atime": "-" + "9" * 30, "ctime": "9" * 20})
    s3.put_object(Bucket=bucket, Key="d/sub/", Body=b"", Metadata={"mtime": "9" * 30})
    m = mount_factory("--source", f"s3://{bucket}")
    d = m.path(bucket) / "d"
    res = subprocess.run(["ls", "-l", str(d)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    far = os.stat(d / "far.txt")
    assert abs(far.st_mtime - time.time()) < 3600    # no stored time: LastModified shows
    assert os.path.isdir(d / "sub") and (d / "ok.txt").read_bytes() == b"fine"
    assert os.path.ismount(m.mountpoint)


async def list_huge_dir(tmp_path: Path, count: int) -> tuple[float, int]:
    """Lists a `count`-entry directory through BucketTree as readdir does; returns
    (seconds, peak traced bytes)."""
    store = ListingStore(count)
    meta = MetaStore(tmp_path / "meta.sqlite")
    tree = BucketTree(parse_source("s3://bkt"), store, meta, None, ttl=60,  # type: ignore[arg-type]
                      list_limiter=trio.CapacityLimiter(8), posix_metadata=False)  # listing only
    tracemalloc.start()
    began = time.monotonic()
    try:
        stream = await tree.opendir("big")
        seen, offset = 0, 0
        while True:
            page = await stream.page(offset, 500)    # the kernel's readdir buffer: a few hundred
            if not page:
                break
            seen += len(page)
            offset = page[-1][0]
        assert seen == count and store.pages == -(-count // 1000)
        assert await tree.lookup("big", f"f{count - 1:07d}") is not None
        assert await tree.lookup("big", "missing") is None
        elapsed = time.monotonic() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        meta.close()
    return elapsed, peak


async def test_a_100k_entry_directory_lists_fast_in_bounded_memory(tmp_path: Path):
    elapsed, peak = await list_huge_dir(tmp_path, 100_000)
    assert elapsed < 30, elapsed
    assert peak < 150 << 20, peak >> 20    # ~0.6 KiB an entry while listed, then on disk


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_a_million_entry_directory(tmp_path: Path):
    elapsed, peak = await list_huge_dir(tmp_path, 1_000_000)
    assert elapsed < 300 and peak < 1500 << 20


@pytest.mark.mount
@pytest.mark.parametrize("count", [10_000, pytest.param(
    100_000, marks=[pytest.mark.soak, pytest.mark.timeout(900)])])
def test_a_huge_directory_through_the_mount(s3, bucket, mount_factory, count: int):
    moto_put_many(bucket, (f"big/f{i:07d}" for i in range(count)))
    s3.put_object(Bucket=bucket, Key="big/zz-last", Body=b"last")
    m = mount_factory("--source", f"s3://{bucket}")
    began = time.monotonic()
    names = os.listdir(m.path(bucket, "big"))
    listed = time.monotonic() - began
    assert len(names) == count + 1 and len(set(names)) == count + 1
    assert m.path(bucket, "big", "zz-last").read_bytes() == b"last"
    assert os.stat(m.path(bucket, "big", f"f{count - 1:07d}")).st_size == 1
    requests = m.status()["requests"]
    assert requests.get("HeadObject", 0) <= 2          # sizes from the listing, not a HEAD each
    assert listed < 120, listed
    status: dict[str, Any] = m.status()
    assert status["link"]["state"] == "online"


def test_sizes_no_file_can_have_are_refused_where_they_arrive(caplog: pytest.LogCaptureFixture):
    """A listing's Size or a HEAD's Content-Length beyond int64 (or no number) would make
    SQLite, offsets and st_size fail far from the cause: the object is hidden from its
    listing (one warning), and a HEAD answer is an error (its entry keeps the defaults)."""
    body = (b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated>'
            b"<Contents><Key>d/huge</Key><Size>18446744073709551616</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/nan</Key><Size>12e3</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/minus</Key><Size>-1</Size><ETag>e</ETag></Contents>"
            b"<Contents><Key>d/fine</Key><Size>9223372036854775807</Size><ETag>e</ETag></Contents>"
            b"</ListBucketResult>")
    resp = parse_list_v2(body)
    with caplog.at_level(logging.WARNING, "s3fuse"):
        listed = [_listed("b", o) for o in resp["Contents"]]
    assert [i.key if i else None for i in listed] == [None, None, None, "d/fine"]
    assert listed[3] is not None and listed[3].size == MAX_OBJECT_SIZE
    assert len(caplog.records) == 3 and "beyond what a file can have" in caplog.records[0].message
    assert "not a number" in caplog.records[1].message
    with pytest.raises(RemoteError, match="object k: size 18446744073709551616"):
        info_of("k", {"content-length": str(1 << 64)})
    assert info_of("k", {"content-length": "5", "etag": "\"e\""}).size == 5
