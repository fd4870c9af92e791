"""POSIX metadata written by other tools (s3fs's headers, through boto3) shows exactly
through the real mount, and a cold `find` HEADs no file."""
from __future__ import annotations

import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.posix_tree import keeps_marker_metadata

pytestmark = pytest.mark.mount

MTIME = "1700000000.123456789"
MTIME_NS = 1_700_000_000_123_456_789


def s3fs_headers(mode: int, uid: int = 1234, gid: int = 2345) -> dict[str, str]:
    return {"mode": str(mode), "uid": str(uid), "gid": str(gid), "mtime": MTIME,
            "ctime": "1700000001", "atime": "1700000002.5"}


def test_s3fs_headers_show_through_lstat_and_find_heads_no_file(s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="run.sh", Body=b"#!/bin/sh\necho hi\n",
                  Metadata=s3fs_headers(0o100755))
    s3.put_object(Bucket=bucket, Key="link", Body=b"run.sh", Metadata=s3fs_headers(41471))
    s3.put_object(Bucket=bucket, Key="private/", Body=b"", Metadata=s3fs_headers(0o40700, 0, 0))
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"no headers")
    keys = [f"tree/d{i}/f{j}" for i in range(3) for j in range(40)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x",
                                              Metadata=s3fs_headers(0o100600)), keys))
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)

    found = subprocess.run(["find", str(root)], check=True, capture_output=True,
                           text=True).stdout.split()
    assert len(found) == 1 + 4 + 1 + 3 + len(keys)
    # find: listings, and a HEAD of the one directory marker (a directory's metadata
    # lives there: find stats directories); no file is HEADed
    assert m.status()["requests"].get("HeadObject", 0) == 1

    run = os.lstat(root / "run.sh")
    assert (run.st_mode, run.st_uid, run.st_gid, run.st_size) == (0o100755, 1234, 2345, 18)
    assert (run.st_mtime_ns, run.st_ctime_ns, run.st_atime_ns) == (
        MTIME_NS, 1_700_000_001 * 10**9, 1_700_000_002_500_000_000)
    link = os.lstat(root / "link")
    assert stat.S_ISLNK(link.st_mode) and stat.S_IMODE(link.st_mode) == 0o777
    assert (link.st_size, link.st_uid, link.st_mtime_ns) == (6, 1234, MTIME_NS)
    private = os.lstat(root / "private")  # SeaweedFS keeps no marker metadata (docs/posix.md)
    assert (private.st_mode, private.st_uid, private.st_gid) == (
        (0o40700, 0, 0) if keeps_marker_metadata(s3, bucket) else (0o40755, os.getuid(), os.getgid()))
    plain = os.lstat(root / "plain.txt")
    assert plain.st_mode == 0o100644 and plain.st_uid == os.getuid()
    assert os.lstat(root / "tree" / "d1" / "f7").st_mode == 0o100600
    assert subprocess.run(["sh", str(root / "run.sh")], check=True, capture_output=True,
                          text=True).stdout == "hi\n"


def test_no_posix_metadata_sends_no_head(s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="run.sh", Body=b"x", Metadata=s3fs_headers(0o100755))
    m = mount_factory("--source", f"s3://{bucket}", "--no-posix-metadata")
    subprocess.run(["ls", "-l", str(m.path(bucket))], check=True, capture_output=True)
    assert os.lstat(m.path(bucket, "run.sh")).st_mode == 0o100644  # the default
    assert m.status()["requests"].get("HeadObject", 0) == 0


def test_no_posix_metadata_changes_keep_what_s3_stores(s3, bucket, mount_factory):
    """--no-posix-metadata never HEADs for a stat, but a change looks first (one request
    for the file changed): a rewrite, chmod or touch of s3fs's 0755 file of uid 1234
    stored the mount's defaults (0644, the mounting user) in place of its mode and owner."""
    for key in ("rewritten.sh", "chmodded.sh", "touched.sh"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata=s3fs_headers(0o100755))
    m = mount_factory("--source", f"s3://{bucket}", "--no-posix-metadata")
    root = m.path(bucket)
    subprocess.run(["ls", "-l", str(root)], check=True, capture_output=True)
    assert os.lstat(root / "chmodded.sh").st_mode == 0o100644  # stats still show the default
    (root / "rewritten.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "chmodded.sh", 0o700)
    os.utime(root / "touched.sh", (978307200, 978307200))
    m.assert_idle()
    heads = {key: s3.head_object(Bucket=bucket, Key=key)["Metadata"]
             for key in ("rewritten.sh", "chmodded.sh", "touched.sh")}
    for key, head in heads.items():
        assert (head["uid"], head["gid"]) == ("1234", "2345"), (key, head)
    assert heads["rewritten.sh"]["mode"] == str(0o100755)
    assert heads["rewritten.sh"]["mtime"] != MTIME               # new bytes: a new mtime
    assert (heads["chmodded.sh"]["mode"], heads["chmodded.sh"]["mtime"]) == (str(0o100700), MTIME)
    assert (heads["touched.sh"]["mode"], heads["touched.sh"]["mtime"]) == (str(0o100755), "978307200")
    assert os.lstat(root / "chmodded.sh").st_uid == 1234  # what a change looked up shows


def test_no_posix_metadata_directory_changes_keep_the_marker_metadata(s3, bucket, mount_factory):
    """The same for a directory: its marker is looked up before a chmod or touch (a plain
    `touch` of a 0700 directory stored it as 0755, the default, with the mount's owner)."""
    if not keeps_marker_metadata(s3, bucket):
        pytest.skip("the server keeps no metadata on dir/ markers (SeaweedFS)")
    for name in ("chmodded", "touched"):
        s3.put_object(Bucket=bucket, Key=f"{name}/", Body=b"", Metadata=s3fs_headers(0o40700))
    m = mount_factory("--source", f"s3://{bucket}", "--no-posix-metadata")
    root = m.path(bucket)
    os.chmod(root / "chmodded", 0o750)
    os.utime(root / "touched")
    m.assert_idle()
    chmodded = s3.head_object(Bucket=bucket, Key="chmodded/")["Metadata"]
    touched = s3.head_object(Bucket=bucket, Key="touched/")["Metadata"]
    assert (chmodded["mode"], chmodded["uid"], chmodded["mtime"]) == (str(0o40750), "1234", MTIME)
    assert (touched["mode"], touched["uid"], touched["gid"]) == (str(0o40700), "1234", "2345")


def test_a_listing_gives_the_kernel_names_until_the_first_stat(s3, bucket, mount_factory):
    """Entries whose metadata a stat HEADs are listed as names only (fs/dirent.py): the
    dirent's inode is FUSE_UNKNOWN_INO (as s3fs lists every name) until a stat gives the
    entry one; then a listing shows that inode, and `ls -i` agrees with `stat`."""
    for key in ("a.txt", "b.txt", "sub/c.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    listed = {e.name: (e.inode(), e.is_dir()) for e in os.scandir(root)}
    assert listed == {"a.txt": (0xFFFFFFFF, False), "b.txt": (0xFFFFFFFF, False),
                      "sub": (0xFFFFFFFF, True)}
    ino = os.stat(root / "a.txt").st_ino
    assert ino not in (0, 0xFFFFFFFF)
    assert {e.name: e.inode() for e in os.scandir(root)}["a.txt"] == ino
    shown = subprocess.run(["ls", "-i", str(root)], check=True, capture_output=True,
                           text=True).stdout.split()
    by_name = dict(zip(shown[1::2], map(int, shown[::2])))
    assert by_name == {name: os.stat(root / name).st_ino for name in ("a.txt", "b.txt", "sub")}
    found = subprocess.run(["find", str(root), "-inum", str(by_name["b.txt"])], check=True,
                           capture_output=True, text=True).stdout.split()
    assert found == [str(root / "b.txt")]
    assert sorted(p.name for p in root.rglob("*")) == ["a.txt", "b.txt", "c.txt", "sub"]


def test_cat_of_a_cold_directory_of_small_files_stays_within_the_connection_pool(
        s3, bucket, mount_factory):
    """`cat dir/*` of hundreds of cold small files: every lookup fetches its file whole
    (posixheads.BATCH at once) while the block reader and the cross-file read-ahead fetch
    too. They all fit in the connection pool: none is opened and closed beyond it, which
    urllib3 logs as a WARNING ("Connection pool is full") that the mount fixture rejects."""
    names = [f"f{i:04d}" for i in range(400)]
    with ThreadPoolExecutor(8) as pool:  # boto3's pool holds 10
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=f"small/{n}",
                                              Body=n.encode() * 1000), names))
    m = mount_factory("--source", f"s3://{bucket}")
    out = subprocess.run(f"cat {m.path(bucket, 'small')}/*", shell=True, check=True,
                         capture_output=True).stdout
    assert out == b"".join(n.encode() * 1000 for n in names)
