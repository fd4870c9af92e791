"""Interop with the real s3fs-fuse both ways: a tree one tool writes, the other shows the same.

A tree with 0755/0600 files, a foreign owner (root chowns to 1234:5678), nanosecond
mtimes, symlinks, a FIFO and a user xattr is written through s3fs and read through
s3fuse, and the reverse; both must show what a local copy of the same tree shows, and
the headers in S3 must be s3fs's format (compat.md, "POSIX metadata"), checked with
boto3. Two tests check the s3fs side alone (what it writes, what it reads), so a failure
of the other two is s3fuse's.

On SeaweedFS a `dir/` marker keeps no user metadata whoever writes it
(`keeps_marker_metadata`), so directories are compared by existence only; and s3fs 1.90
cannot chmod or utime a directory it just created (ENOENT), so the s3fs-written tree sets
no directory metadata (compat.md).
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

from s3fuse import posix
from tests.support.mount import Mount
from tests.support.posix_tree import BASE_NS, OWNER, assert_same, build_tree, describe, keeps_marker_metadata
from tests.support.s3fs import s3fs_mount
from tests.test_write_mount import sync

pytestmark = [pytest.mark.mount, pytest.mark.seaweedfs, pytest.mark.timeout(120)]


@pytest.fixture
def backend(seaweedfs_backend):  # type: ignore[no-untyped-def]
    """s3fs against a real S3 server, as benchmarks/ runs it."""
    return seaweedfs_backend


def write_tree(root: Path, *, dir_metadata: bool) -> None:
    """The shared tree plus what only these tests cover: a FIFO and a user xattr."""
    build_tree(root, dir_metadata=dir_metadata)
    os.mkfifo(root / "fifo", 0o640)
    os.utime(root / "fifo", ns=(BASE_NS, BASE_NS))
    os.setxattr(root / "secret.txt", "user.origin", b"interop")


def expected(tmp_path: Path, *, dir_metadata: bool) -> dict[str, Any]:
    """The same tree written to a local directory, described."""
    write_tree(tmp_path / "expected", dir_metadata=dir_metadata)
    return describe(tmp_path / "expected")


def check_same(root: Path, want: dict[str, Any], *, dir_metadata: bool) -> None:
    assert_same(want, describe(root), dir_metadata=dir_metadata)
    assert os.getxattr(root / "secret.txt", "user.origin") == b"interop"
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)


def check_headers(s3: Any, bucket: str, prefix: str) -> None:
    """The objects carry s3fs's header set, in its exact spelling (decimal mode with type bits,
    `SEC.NNNNNNNNN` times, decimal owner, the xattr JSON)."""
    def meta(key: str) -> dict[str, str]:
        return s3.head_object(Bucket=bucket, Key=prefix + key)["Metadata"]

    run = meta("bin/run.sh")
    assert run["mode"] == str(stat.S_IFREG | 0o755) and run["uid"] == "0" and run["gid"] == "0"
    assert {"mtime", "ctime", "atime"} <= set(run)
    assert meta("secret.txt")["mode"] == str(stat.S_IFREG | 0o600)
    owned = meta("data/owned.txt")
    assert (owned["uid"], owned["gid"]) == tuple(str(n) for n in OWNER)
    assert re.fullmatch(r"[0-9]+\.[0-9]{9}", owned["mtime"]), owned  # SEC.NNNNNNNNN
    link = meta("link")
    assert link["mode"] == str(stat.S_IFLNK | 0o777)
    assert s3.get_object(Bucket=bucket, Key=prefix + "link")["Body"].read() == b"data/file.bin"
    fifo = meta("fifo")
    assert fifo["mode"] == str(stat.S_IFIFO | 0o640)
    secret = posix.from_headers(meta("secret.txt"))
    assert secret.xattr("user.origin") == b"interop"
    assert posix.from_headers(meta("data/file.bin")).mtime_ns is not None


def test_s3fs_writes_the_documented_headers(s3: Any, bucket: str, tmp_path: Path,
                                           backend: Any) -> None:
    """Self-check of the s3fs side: what s3fs 1.90 writes is what compat.md says."""
    with s3fs_mount(bucket, backend.endpoint, backend.access_key, backend.secret_key,
                    tmp_path / "s3fs") as mnt:
        write_tree(mnt / "tree", dir_metadata=False)
    check_headers(s3, bucket, "tree/")
    for rel, want in expected(tmp_path, dir_metadata=False).items():  # every file's metadata
        if want.kind != "dir":
            stored = posix.from_headers(s3.head_object(Bucket=bucket, Key=f"tree/{rel}")["Metadata"])
            assert (stat.S_IMODE(stored.mode or 0), stored.uid, stored.gid, stored.mtime_ns) == \
                (want.mode, want.uid, want.gid, want.mtime_ns), rel


def test_s3fs_reads_headers_written_in_its_format(s3: Any, bucket: str, tmp_path: Path,
                                                  backend: Any) -> None:
    """Self-check of the s3fs side: headers in its format (posix.to_headers) show in s3fs."""
    meta = posix.Posix(mode=stat.S_IFREG | 0o750, uid=OWNER[0], gid=OWNER[1],
                       mtime_ns=BASE_NS + 123_456_789, ctime_ns=BASE_NS, atime_ns=BASE_NS)
    s3.put_object(Bucket=bucket, Key="f", Body=b"abc", Metadata=posix.to_headers(meta))
    link = posix.Posix(mode=stat.S_IFLNK | 0o777, uid=0, gid=0, mtime_ns=BASE_NS,
                       ctime_ns=BASE_NS, atime_ns=BASE_NS)
    s3.put_object(Bucket=bucket, Key="l", Body=b"f", Metadata=posix.to_headers(link))
    with s3fs_mount(bucket, backend.endpoint, backend.access_key, backend.secret_key,
                    tmp_path / "s3fs") as mnt:
        st = os.lstat(mnt / "f")
        assert (st.st_mode, st.st_uid, st.st_gid) == (meta.mode, *OWNER)
        assert st.st_mtime_ns == meta.mtime_ns
        assert os.readlink(mnt / "l") == "f" and (mnt / "l").read_bytes() == b"abc"


def test_tree_written_by_s3fs_shows_the_same_in_s3fuse(
        s3: Any, bucket: str, tmp_path: Path, backend: Any,
        mount_factory: Callable[..., Mount]) -> None:
    with s3fs_mount(bucket, backend.endpoint, backend.access_key, backend.secret_key,
                    tmp_path / "s3fs") as mnt:
        write_tree(mnt / "tree", dir_metadata=False)
    dirs = keeps_marker_metadata(s3, bucket)
    m = mount_factory("--source", f"s3://{bucket}")
    check_same(m.path(bucket, "tree"), expected(tmp_path, dir_metadata=False), dir_metadata=dirs)


def test_tree_written_by_s3fuse_shows_the_same_in_s3fs(
        s3: Any, bucket: str, tmp_path: Path, backend: Any,
        mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory("--source", f"s3://{bucket}")
    write_tree(m.path(bucket, "tree"), dir_metadata=True)
    done = sync(m.mountpoint)
    assert done.returncode == 0, done.stdout + done.stderr
    assert m.stop() == 0
    check_headers(s3, bucket, "tree/")
    want = expected(tmp_path, dir_metadata=True)
    with s3fs_mount(bucket, backend.endpoint, backend.access_key, backend.secret_key,
                    tmp_path / "s3fs") as mnt:
        check_same(mnt / "tree", want, dir_metadata=keeps_marker_metadata(s3, bucket))
