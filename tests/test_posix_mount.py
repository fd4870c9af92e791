"""POSIX metadata through the real mount: chmod, chown, utimens, symlinks, fifos, device
nodes and user xattrs with everyday os calls, stored as s3fs stores them (x-amz-meta-*)
and shown again after a remount with an empty cache; the errnos POSIX asks for; the
kernel enforcing owners and modes for other users (default_permissions, allow_other)."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from typing import Any, Callable

import pytest

from tests.support.mount import Mount
from tests.support.posix_tree import keeps_marker_metadata
from tests.test_security import as_nobody, needs_other_user, start, stop

pytestmark = pytest.mark.mount


def metadata(s3: Any, bucket: str, key: str) -> dict[str, str]:
    return s3.head_object(Bucket=bucket, Key=key)["Metadata"]


def remounted(m: Mount, mount_factory: Callable[..., Mount], name: str) -> Mount:
    """The same bucket mounted again with an empty cache, once `m` sent everything."""
    m.assert_idle()
    m.stop()
    return mount_factory(*m.args, name=name)


def test_chmod_chown_utimens_are_stored_as_s3fs_does_and_survive_a_remount(
        s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="old.txt", Body=b"uploaded before")
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    new = root / "run.sh"
    new.write_bytes(b"#!/bin/sh\necho ran\n")
    os.chmod(new, 0o755)                                       # before its upload: rides along
    os.chown(new, 1234, 5678)
    os.utime(new, ns=(1_500_000_000_000_000_000, 1_600_000_000_123_456_789))
    os.chmod(root / "old.txt", 0o600)                          # uploaded: a copy onto itself
    os.utime(root / "old.txt", (1_000_000_000, 1_000_000_000))
    os.mkdir(root / "d", 0o700)
    os.utime(root / "d", (1_200_000_000, 1_200_000_000))
    shown = os.stat(new)
    assert (stat.S_IMODE(shown.st_mode), shown.st_uid, shown.st_gid) == (0o755, 1234, 5678)
    assert shown.st_mtime_ns == 1_600_000_000_123_456_789
    m.assert_idle()
    stored = metadata(s3, bucket, "run.sh")
    assert stored["mode"] == str(stat.S_IFREG | 0o755)
    assert (stored["uid"], stored["gid"]) == ("1234", "5678")
    assert stored["mtime"] == "1600000000.123456789" and stored["atime"] == "1500000000"
    assert metadata(s3, bucket, "old.txt")["mode"] == str(stat.S_IFREG | 0o600)
    assert s3.get_object(Bucket=bucket, Key="old.txt")["Body"].read() == b"uploaded before"
    # SeaweedFS keeps no metadata on `dir/` markers (docs/posix.md): there the marker exists
    # and the directory shows the defaults after a remount with an empty cache.
    markers_kept = keeps_marker_metadata(s3, bucket)
    assert metadata(s3, bucket, "d/").get("mode") == (
        str(stat.S_IFDIR | 0o700) if markers_kept else None)

    again = remounted(m, mount_factory, "again").path(bucket)
    shown = os.stat(again / "run.sh")
    assert (stat.S_IMODE(shown.st_mode), shown.st_uid, shown.st_gid) == (0o755, 1234, 5678)
    assert shown.st_mtime_ns == 1_600_000_000_123_456_789
    old = os.stat(again / "old.txt")
    assert stat.S_IMODE(old.st_mode) == 0o600 and old.st_mtime == 1_000_000_000
    d = os.stat(again / "d")
    if markers_kept:
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_mtime == 1_200_000_000
    else:
        assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o755  # --dir-mode


def test_a_time_beyond_2262_is_kept_as_the_latest_one_kept(s3, bucket, mount_factory):
    """`touch -d 3000-01-01`: ns beyond int64 (what SQLite and the stored listing hold)
    are clamped, as a local file system clamps to its range, not silently dropped."""
    m = mount_factory("--source", f"s3://{bucket}")
    far = m.path(bucket) / "far.txt"
    far.write_bytes(b"x")
    year_3000 = 32_503_680_000 * 1_000_000_000
    os.utime(far, ns=(year_3000, year_3000))
    assert os.stat(far).st_mtime_ns == (1 << 63) - 1
    m.assert_idle()
    assert metadata(s3, bucket, "far.txt")["mtime"] == "9223372036.854775807"
    again = remounted(m, mount_factory, "again").path(bucket)
    assert os.stat(again / "far.txt").st_mtime_ns == (1 << 63) - 1


def test_other_tools_user_metadata_survives_chmod_touch_and_rename(s3, bucket, mount_factory):
    """A `chmod`, `touch` or `mv` replaces the object's metadata: it kept only the POSIX
    fields, and a user's own `project` or rclone's `md5chksum` was lost (s3fs keeps them).
    The POSIX names of other tools (s3sync's `permissions`) go: what is written wins."""
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=bucket, Key=name, Body=b"data", ContentType="text/x-custom",
                      Metadata={"project": "apollo", "md5chksum": "abc==", "mode": "33188",
                                "permissions": "420"})
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    os.listdir(root)
    os.chmod(root / "a.txt", 0o600)          # after an ls -l: the copy needs no HEAD
    os.utime(root / "b.txt", (1_600_000_000, 1_600_000_000))
    os.rename(root / "b.txt", root / "c.txt")
    m.assert_idle()
    for name, mode in (("a.txt", stat.S_IFREG | 0o600), ("c.txt", stat.S_IFREG | 0o644)):
        head = s3.head_object(Bucket=bucket, Key=name)
        meta = head["Metadata"]
        assert (meta["project"], meta["md5chksum"]) == ("apollo", "abc=="), (name, meta)
        assert meta["mode"] == str(mode) and "permissions" not in meta, (name, meta)
        assert head["ContentType"] == "text/x-custom"
    assert metadata(s3, bucket, "c.txt")["mtime"] == "1600000000"


def test_a_rewritten_file_keeps_its_headers_and_other_tools_metadata(s3, bucket, mount_factory):
    """A file written again through the mount (an editor's save, `cp` over it): its new
    version kept only the POSIX fields and a type guessed from its name, so a website's
    `text/html; charset=utf-8`, its Cache-Control and a user's `project` were lost (s3fs
    keeps them). rclone's `md5chksum` described the old bytes: it goes."""
    s3.put_object(Bucket=bucket, Key="index.html", Body=b"<p>old</p>",
                  ContentType="text/html; charset=utf-8", CacheControl="max-age=60",
                  Metadata={"project": "apollo", "md5chksum": "abc=="})
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    with open(root / "index.html", "r+b") as f:
        f.write(b"<p>new</p>")
    m.assert_idle()
    head = s3.head_object(Bucket=bucket, Key="index.html")
    assert s3.get_object(Bucket=bucket, Key="index.html")["Body"].read() == b"<p>new</p>"
    assert (head["ContentType"], head.get("CacheControl")) == ("text/html; charset=utf-8",
                                                               "max-age=60")
    assert head["Metadata"]["project"] == "apollo" and "md5chksum" not in head["Metadata"]
    assert "mtime" in head["Metadata"]  # and the POSIX fields of the new version
    (root / "new.html").write_bytes(b"<p>")
    os.mkdir(root / "d")
    m.assert_idle()
    assert s3.head_object(Bucket=bucket, Key="new.html")["ContentType"] == "text/html"
    assert s3.head_object(Bucket=bucket, Key="d/")["ContentType"] == "application/x-directory"


def test_a_metadata_change_of_an_empty_object_keeps_what_else_it_holds(s3, bucket, mount_factory):
    """A `chmod` of an empty file, or of a directory whose marker holds bytes: an empty
    object's change was a PUT of an empty body, which dropped its other headers and other
    tools' metadata, and a marker's bytes (AWS and moto keep a body on `dir/`)."""
    s3.put_object(Bucket=bucket, Key="empty.txt", Body=b"", ContentType="text/x-custom",
                  CacheControl="no-store", Metadata={"project": "apollo", "mode": "33188"})
    s3.put_object(Bucket=bucket, Key="d/", Body=b"MARKER-BYTES", Metadata={"project": "d"})
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"f")
    marker_bytes = s3.get_object(Bucket=bucket, Key="d/")["Body"].read()  # SeaweedFS: none
    markers_keep_metadata = keeps_marker_metadata(s3, bucket)
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    os.listdir(root)
    os.chmod(root / "empty.txt", 0o600)
    os.chmod(root / "d", 0o700)
    m.assert_idle()
    head = s3.head_object(Bucket=bucket, Key="empty.txt")
    assert head["Metadata"]["project"] == "apollo" and head["Metadata"]["mode"] == str(stat.S_IFREG | 0o600)
    assert (head["ContentType"], head.get("CacheControl")) == ("text/x-custom", "no-store")
    assert s3.get_object(Bucket=bucket, Key="d/")["Body"].read() == marker_bytes
    if markers_keep_metadata:
        marker = s3.head_object(Bucket=bucket, Key="d/")["Metadata"]
        assert marker["project"] == "d" and marker["mode"] == str(stat.S_IFDIR | 0o700)
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o700


def test_a_tree_copied_by_rclone_with_metadata_shows_its_modes_and_times(s3, bucket, mount_factory):
    """`rclone copy -M` (rclone 1.75 on SeaweedFS) writes an octal mode with type bits and
    RFC 3339 atimes, the headers below: a 0640 file showed as setuid `-r-S-----` (100640
    read as decimal) and its atime as its mtime. A `chmod` then stores s3fs's format."""
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"hi\n", Metadata={
        "atime": "2020-01-02T03:04:05.123456789Z", "btime": "2026-12-07T09:05:00.147430398Z",
        "gid": "0", "mode": "100640", "mtime": "1577934245.123456789", "uid": "0"})
    s3.put_object(Bucket=bucket, Key="d/", Body=b"", Metadata={"mode": "40750"})
    markers_keep_modes = keeps_marker_metadata(s3, bucket)
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    shown = os.stat(root / "f.txt")
    assert (stat.filemode(shown.st_mode), shown.st_uid, shown.st_gid) == ("-rw-r-----", 0, 0)
    assert shown.st_mtime_ns == 1_577_934_245_123_456_789
    assert shown.st_atime_ns == 1_577_934_245_123_456_789
    if markers_keep_modes:
        assert stat.filemode(os.stat(root / "d").st_mode) == "drwxr-x---"
    os.chmod(root / "f.txt", 0o600)
    m.assert_idle()
    assert metadata(s3, bucket, "f.txt")["mode"] == str(stat.S_IFREG | 0o600)


def test_chmod_of_a_directory_of_keys_only_makes_its_marker(s3, bucket, mount_factory):
    """A directory that exists only through its keys (`d/x`, no `d/` marker: what
    `aws s3 cp` and boto3 leave): `chmod` showed `drwx------` and its journalled copy of
    the missing marker was dropped at upload ("the key is gone"). A marker is made."""
    markers_keep_modes = keeps_marker_metadata(s3, bucket)
    for name in ("x", "y"):
        s3.put_object(Bucket=bucket, Key=f"d/{name}", Body=name.encode())
    m = mount_factory("--source", f"s3://{bucket}")
    os.chmod(m.path(bucket, "d"), 0o700)
    m.assert_idle()
    marker = metadata(s3, bucket, "d/")  # made (SeaweedFS keeps no metadata on markers)
    assert not markers_keep_modes or marker["mode"] == str(stat.S_IFDIR | 0o700)


def test_tar_of_a_tree_just_written_sees_no_directory_change(s3, bucket, mount_factory):
    """A directory's mtime moved by its new entries is shown by readdirplus too: it showed
    the stored one, so `tar -c` right after `cp -r` stat'ed each directory with one time
    and found another after reading it ("file changed as we read it", exit 1)."""
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket) / "tree"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
        for i in range(5):
            (root / d / f"f{i}").write_bytes(b"x")
    m.assert_idle()
    for _ in range(2):
        done = subprocess.run(["tar", "-cf", "/dev/null", "."], cwd=root, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_symlinks_fifos_and_device_nodes(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    (root / "target.txt").write_bytes(b"pointed at")
    os.symlink("target.txt", root / "link")
    os.symlink("../nowhere", root / "dangling")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert os.readlink(root / "link") == "target.txt"
    assert stat.S_ISLNK(os.lstat(root / "link").st_mode)
    assert (root / "link").read_bytes() == b"pointed at"          # the kernel follows it
    with pytest.raises(OSError) as info:
        os.open(root / "link", os.O_RDONLY | os.O_NOFOLLOW)
    assert info.value.errno == errno.ELOOP
    assert stat.S_ISFIFO(os.stat(root / "fifo").st_mode)
    node = os.stat(root / "null")
    assert stat.S_ISCHR(node.st_mode) and node.st_rdev == os.makedev(1, 3)
    with pytest.raises(OSError):                                  # the mount stays nodev
        (root / "null").read_bytes()
    with pytest.raises(FileExistsError):
        os.symlink("x", root / "fifo")
    m.assert_idle()
    assert s3.get_object(Bucket=bucket, Key="link")["Body"].read() == b"target.txt"
    assert metadata(s3, bucket, "link")["mode"] == str(stat.S_IFLNK | 0o777)   # 41471
    assert metadata(s3, bucket, "fifo")["mode"] == str(stat.S_IFIFO | 0o640)
    assert metadata(s3, bucket, "null")["rdev"] == str(os.makedev(1, 3))

    # user.* attributes are a file's or a directory's only (the kernel answers ENODATA for
    # the others): listed on a symlink or FIFO, they failed `rsync -aX` out of the mount
    for special in ("link", "dangling", "fifo", "null"):
        assert os.listxattr(root / special, follow_symlinks=False) == [], special
    assert "user.s3.uri" in os.listxattr(root / "target.txt")
    local = root.parent.parent.parent / "copied"
    done = subprocess.run(["rsync", "-aX", f"{root}/", f"{local}/"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    again = remounted(m, mount_factory, "again").path(bucket)
    assert os.readlink(again / "link") == "target.txt"
    assert os.readlink(again / "dangling") == "../nowhere"
    assert stat.S_ISFIFO(os.lstat(again / "fifo").st_mode)
    os.unlink(again / "link")
    assert not os.path.lexists(again / "link")


def test_an_empty_file_keeps_the_mtime_its_create_showed(s3, bucket, mount_factory):
    """`: > f`, `open(f, "w").close()`: no write, so the time of the create stays the mtime,
    in S3 too (it was stamped again, microseconds later, when the file went to the write-back)."""
    m = mount_factory("--source", f"s3://{bucket}")
    f = m.path(bucket, "empty")
    with open(f, "w"):
        shown = os.stat(f).st_mtime_ns
        time.sleep(0.05)
    assert os.stat(f).st_mtime_ns == shown
    again = remounted(m, mount_factory, "again").path(bucket)
    assert os.stat(again / "empty").st_mtime_ns == shown


def find_names(root: Any, kind: str) -> set[str]:
    out = subprocess.run(["find", str(root), "-mindepth", "1", "-type", kind], check=True,
                         capture_output=True, text=True).stdout
    return {os.path.relpath(line, root) for line in out.split()}


def test_find_type_sees_symlinks_and_fifos_in_a_walk_that_sends_names_only(
        s3, bucket, mount_factory):
    """A walk that stats nothing (`find`) gets its later listings as names only
    (fs/listingshape.py): their d_type must be the known type, or `find -type f` lists
    symlinks and FIFOs (and `-exec sha256sum` hangs opening the FIFO), `-type l` misses
    them and `os.walk` puts a symlink to a directory among the files."""
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket, "t")
    expected: dict[str, set[str]] = {"f": set(), "l": set(), "p": set()}
    for d in range(6):
        sub = root / f"d{d}"
        os.makedirs(sub / "real")
        (sub / "reg").write_bytes(b"data")
        os.symlink("reg", sub / "lnk")
        os.symlink("nowhere", sub / "dangling")
        os.symlink("real", sub / "linkdir")
        os.mkfifo(sub / "fifo")
        expected["f"].add(f"d{d}/reg")
        expected["l"] |= {f"d{d}/lnk", f"d{d}/dangling", f"d{d}/linkdir"}
        expected["p"].add(f"d{d}/fifo")
    for walk in range(3):  # the first walk decides the shape, the next ones send names only
        for kind, names in expected.items():
            assert find_names(root, kind) == names, (walk, kind)
    _, dirs, files = next(os.walk(root / "d5"))  # as on a local disk: a link to a dir is one
    assert sorted(dirs) == ["linkdir", "real"] and sorted(files) == ["dangling", "fifo", "lnk",
                                                                     "reg"]
    m.assert_idle()


def test_user_xattrs_round_trip_and_survive_a_remount(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    f = root / "f.txt"
    f.write_bytes(b"x")
    os.setxattr(f, "user.comment", b"hello, world")
    os.setxattr(f, "user.bin", b"\x00\xff")
    assert os.getxattr(f, "user.comment") == b"hello, world"
    assert {"user.comment", "user.bin", "user.s3.uri"} <= set(os.listxattr(f))
    os.removexattr(f, "user.bin")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.bin")
    assert info.value.errno == errno.ENODATA
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):  # not ours
        with pytest.raises(OSError) as info:
            os.getxattr(f, name)
        assert info.value.errno == errno.ENOTSUP, name
    with pytest.raises(OSError) as info:
        os.setxattr(f, "trusted.x", b"1")
    assert info.value.errno in (errno.ENOTSUP, errno.EPERM)  # the kernel may say EPERM
    for name in ("user.s3.uri", "user.s3fuse.cached"):  # computed: accepted, unchanged
        os.setxattr(f, name, b"1")
        os.removexattr(f, name)
    assert os.getxattr(f, "user.s3.uri").endswith(b"/f.txt")
    m.expect_log(r"user\.big failed: E2BIG .*2 KiB")  # the one line the refusal logs
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.big", b"x" * 3000)
    assert info.value.errno == errno.E2BIG
    os.mkdir(root / "d")
    os.setxattr(root / "d", "user.on-dir", b"1")
    m.assert_idle()
    assert "xattr" in metadata(s3, bucket, "f.txt")
    markers_kept = keeps_marker_metadata(s3, bucket)  # not on SeaweedFS (docs/posix.md)
    again = remounted(m, mount_factory, "again").path(bucket)
    assert os.getxattr(again / "f.txt", "user.comment") == b"hello, world"
    assert "user.bin" not in os.listxattr(again / "f.txt")
    if markers_kept:
        assert os.getxattr(again / "d", "user.on-dir") == b"1"
    else:
        assert "user.on-dir" not in os.listxattr(again / "d")


def test_the_right_errno_for_long_names_files_as_directories_and_hard_links(bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    (root / "f").write_bytes(b"x")
    long = "n" * 256
    for action in (lambda: os.stat(root / long), lambda: (root / long).write_bytes(b"x"),
                   lambda: os.mkdir(root / long), lambda: os.symlink("f", root / long),
                   lambda: os.rename(root / "f", root / long)):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.ENAMETOOLONG
    (root / ("n" * 255)).write_bytes(b"ok")
    with pytest.raises(NotADirectoryError):
        (root / "f" / "below").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        os.stat(root / "f" / "below")
    with pytest.raises(FileExistsError):
        os.open(root / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    for action in (lambda: os.link(root / "f", root / "hard"),
                   lambda: os.link(root / "f", m.mountpoint / "hard")):
        with pytest.raises(PermissionError):
            action()
    m.assert_idle()


def test_directory_times_move_when_entries_change(bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    d = m.path(bucket, "d")
    os.mkdir(d)
    os.utime(d, (1_000_000_000, 1_000_000_000))
    (d / "f").write_bytes(b"x")
    assert os.stat(d).st_mtime > 1_000_000_000
    os.utime(d, (1_000_000_000, 1_000_000_000))
    os.unlink(d / "f")
    assert os.stat(d).st_mtime > 1_000_000_000
    m.assert_idle()


def test_the_kernel_checks_owners_and_modes_for_other_users(s3, bucket, backend, public_base,
                                                            fuse_available):
    needs_other_user()
    m = start(public_base / "posix", backend.env(), "--source", f"s3://{bucket}",
              "--allow-other")
    try:
        root = m.path(bucket)
        mine = root / "roots.txt"
        mine.write_bytes(b"x")
        os.mkdir(root / "open", 0o777)
        os.chmod(root / "open", 0o777)
        for cmd in (("chmod", "777", str(mine)), ("chown", "65534", str(mine)),
                    ("touch", "-d", "2001-01-01", str(mine))):
            res = as_nobody(*cmd)  # touch opens the file for writing first: EACCES then
            assert res.returncode != 0 and ("not permitted" in res.stderr
                                            or "Permission denied" in res.stderr), cmd
        res = as_nobody("/usr/bin/python3", "-c", f"import os; os.utime({str(mine)!r}, (1, 1))")
        assert res.returncode != 0 and "PermissionError" in res.stderr  # utimensat: EPERM
        theirs = root / "open" / "theirs.txt"
        assert as_nobody("touch", str(theirs)).returncode == 0
        assert as_nobody("chmod", "600", str(theirs)).returncode == 0   # the owner may
        shown = os.stat(theirs)
        assert shown.st_uid == 65534 and stat.S_IMODE(shown.st_mode) == 0o600
        res = as_nobody("chown", "0", str(theirs))                     # not to another user
        assert res.returncode != 0 and "not permitted" in res.stderr
        os.chown(theirs, 0, 0)                                          # root may
        assert os.stat(theirs).st_uid == 0
        m.assert_idle()
    finally:
        stop(m)


def test_force_owner_shows_the_mount_owner_and_stores_what_s3_had(s3, bucket, backend,
                                                                   public_base, fuse_available):
    """--force-owner: a bucket written by another machine's s3fs user (uid 1234: private
    files, a 0755 directory) is the mount owner's to read and fill; a chmod keeps the
    stored owner, a chown stores the new one, and the mount goes on showing --uid/--gid."""
    needs_other_user()
    theirs = {"uid": "1234", "gid": "1234"}
    s3.put_object(Bucket=bucket, Key="d/", Body=b"",
                  Metadata={**theirs, "mode": str(stat.S_IFDIR | 0o755)})
    s3.put_object(Bucket=bucket, Key="d/private.txt", Body=b"secret",
                  Metadata={**theirs, "mode": str(stat.S_IFREG | 0o600)})
    m = start(public_base / "force", backend.env(), "--source", f"s3://{bucket}", "--allow-other",
              "-o", "force_owner,uid=65534,gid=65534")
    try:
        d = m.path(bucket, "d")
        for path in (d, d / "private.txt"):
            shown = os.stat(path)
            assert (shown.st_uid, shown.st_gid) == (65534, 65534), path
        assert stat.S_IMODE(os.stat(d / "private.txt").st_mode) == 0o600  # modes as stored
        res = as_nobody("cat", str(d / "private.txt"))
        assert (res.returncode, res.stdout) == (0, "secret"), res.stderr
        assert as_nobody("touch", str(d / "mine.txt")).returncode == 0  # the directory is "theirs"
        assert as_nobody("chmod", "640", str(d / "private.txt")).returncode == 0
        os.chown(d / "mine.txt", 4321, 4321)  # root: stored, not shown
        assert os.stat(d / "mine.txt").st_uid == 65534
        m.assert_idle()
        head = s3.head_object(Bucket=bucket, Key="d/private.txt")["Metadata"]
        assert (head["mode"], head["uid"], head["gid"]) == (str(stat.S_IFREG | 0o640), "1234", "1234")
        head = s3.head_object(Bucket=bucket, Key="d/mine.txt")["Metadata"]
        assert (head["uid"], head["gid"]) == ("4321", "4321")
        copies = m.status()["requests"].get("CopyObject", 0)
        subprocess.run(["chown", "-R", "65534:65534", str(d)], check=True)  # the owner shown
        m.assert_idle()
        assert m.status()["requests"].get("CopyObject", 0) == copies  # nothing to store
        assert s3.head_object(Bucket=bucket, Key="d/private.txt")["Metadata"]["uid"] == "1234"
    finally:
        stop(m)


def test_rename_keeps_the_metadata_and_moves_ctime(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    (root / "a.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "a.sh", 0o700)
    os.utime(root / "a.sh", ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    m.assert_idle()                                    # uploaded: S3 copies it
    before = os.stat(root / "a.sh")
    os.rename(root / "a.sh", root / "b.sh")
    after = os.stat(root / "b.sh")
    assert stat.S_IMODE(after.st_mode) == 0o700 and after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ctime_ns > before.st_ctime_ns
    stored = metadata(s3, bucket, "b.sh")
    assert stored["mode"] == str(stat.S_IFREG | 0o700) and stored["mtime"] == "1100000000"
    again = remounted(m, mount_factory, "again").path(bucket)
    shown = os.stat(again / "b.sh")
    assert stat.S_IMODE(shown.st_mode) == 0o700 and shown.st_mtime_ns == before.st_mtime_ns
    assert not (again / "a.sh").exists()


def test_a_file_unlinked_while_open_has_no_links(bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    path = m.path(bucket, "open.txt")
    path.write_bytes(b"still readable")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_nlink == 1
        os.unlink(path)
        assert os.fstat(fd).st_nlink == 0 and os.read(fd, 100) == b"still readable"
    finally:
        os.close(fd)
    m.assert_idle()


def _kernel_forgets(m: Mount, below: int) -> None:
    """Make the kernel drop its unused dentries and inodes (as memory pressure does) and
    wait until the daemon has had their FORGETs: it then holds fewer than `below`."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    for _ in range(100):
        if m.status()["inodes"]["held"] < below:
            return
        time.sleep(0.05)
    raise AssertionError(f"the kernel kept {m.status()['inodes']['held']} inodes")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the kernel's caches needs root")
def test_inode_numbers_stay_after_the_kernel_forgets_them_and_across_remounts(
        bucket, mount_factory):
    """POSIX: a file keeps its number while it exists. The kernel forgets inodes under
    memory pressure and looks them up again; pjdfstest rename/10.t once saw a renamed
    file's number change that way on a loaded machine."""
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    (root / "d").mkdir()
    for name in ("a", "b", "c"):
        (root / "d" / name).write_bytes(name.encode())
    os.mkfifo(root / "d" / "fifo")
    os.symlink("a", root / "d" / "link")
    os.rename(root / "d" / "c", root / "d" / "moved")
    names = ["d", "d/a", "d/b", "d/moved", "d/fifo", "d/link"]
    before = {n: os.lstat(root / n).st_ino for n in names}
    assert len(set(before.values())) == len(names)
    held = m.status()["inodes"]["held"]
    _kernel_forgets(m, held - 3)
    assert {n: os.lstat(root / n).st_ino for n in names} == before
    os.rename(root / "d" / "moved", root / "d" / "c")  # back, as rename/10.t does
    _kernel_forgets(m, held - 3)
    assert os.lstat(root / "d" / "c").st_ino == before["d/moved"]
    # a new file where a forgotten one was renamed from stays another file
    (root / "d" / "moved").write_bytes(b"new")
    assert os.lstat(root / "d" / "moved").st_ino not in before.values()
    again = remounted(m, mount_factory, "again")
    root = again.path(bucket)
    assert {n: os.lstat(root / n).st_ino for n in ("d", "d/a", "d/b", "d/fifo", "d/link")} == {
        n: before[n] for n in ("d", "d/a", "d/b", "d/fifo", "d/link")}


def test_copying_tools_set_the_times_of_a_buckets_top(s3, bucket, mount_factory, tmp_path):
    """`rsync -a src/ mnt/bucket/`, `tar -x -C mnt/bucket` and `cp -a src/. mnt/bucket/`
    set the top's times (and mode, owner): the top of a bucket has no object to keep
    them, and refusing them failed all three. Kept for the mount's life."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "f.txt").write_bytes(b"file")
    os.utime(src, ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
    m = mount_factory("--source", f"s3://{bucket}")
    top = m.path(bucket)
    for command in (["rsync", "-a", f"{src}/", f"{top}/"],
                    ["tar", "-xf", str(archive), "-C", str(top)],
                    ["cp", "-a", f"{src}/.", f"{top}/"]):
        res = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (command, res.stderr)
        assert os.stat(top).st_mtime_ns == 1_500_000_000 * 10**9, command
    assert (top / "f.txt").read_bytes() == b"file" and (top / "sub").is_dir()
    os.chmod(top, 0o700)
    assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
    m.assert_idle()
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == [
        "f.txt", "sub/"]  # nothing else stored for the top


def test_an_open_for_writing_keeps_the_mtime_of_an_object_without_headers(s3, bucket,
                                                                          mount_factory):
    """Objects `aws s3 cp` wrote show LastModified: an open for writing showed "now" until
    its close, and `touch -a` (an open, then futimens of the times shown) stored that as
    the new mtime, so make and rsync saw the file changed."""
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"data")
    s3.put_object(Bucket=bucket, Key="other.txt", Body=b"data")
    m = mount_factory("--source", f"s3://{bucket}")
    path, other = m.path(bucket, "plain.txt"), m.path(bucket, "other.txt")
    before, other_before = os.stat(path).st_mtime_ns, os.stat(other).st_mtime_ns
    time.sleep(1.1)
    res = subprocess.run(["touch", "-a", "-d", "2001-02-03 04:05:06", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    st = os.stat(path)
    assert st.st_mtime_ns == before and st.st_atime == time.mktime((2001, 2, 3, 4, 5, 6, 0, 0, -1))
    with open(other, "r+b") as f:  # opened for writing, only read
        assert f.read() == b"data"
        assert os.stat(other).st_mtime_ns == other_before
    m.assert_idle()
    assert int(float(metadata(s3, bucket, "plain.txt")["mtime"]) * 10**9) // 10**9 == before // 10**9


def test_a_rename_keeps_the_mtime_of_an_object_without_headers(s3, bucket, mount_factory):
    """The server-side copy of `mv` gets a new LastModified: a file without headers showed
    that as its mtime once looked up again (a remount), as if changed."""
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"data")
    m = mount_factory("--source", f"s3://{bucket}")
    before = os.stat(m.path(bucket, "plain.txt")).st_mtime_ns
    time.sleep(1.1)
    os.rename(m.path(bucket, "plain.txt"), m.path(bucket, "moved.txt"))
    assert os.stat(m.path(bucket, "moved.txt")).st_mtime_ns == before
    again = remounted(m, mount_factory, "again")
    assert os.stat(again.path(bucket, "moved.txt")).st_mtime_ns == before
    assert "mode" not in metadata(s3, bucket, "moved.txt")  # still the defaults' to show


def test_a_file_saved_by_a_rename_keeps_its_number_across_a_remount(s3, bucket, mount_factory):
    """An editor's save (a new file renamed over the old one) and rsync's temporary files
    give a path another number than its own: kept for the next mount with the cache dir
    (git's index compares it; `git diff-index` reported the file modified)."""
    m = mount_factory("--source", f"s3://{bucket}")
    top = m.path(bucket)
    (top / "a.txt").write_bytes(b"v1")
    (top / ".a.txt.swp").write_bytes(b"v2")
    os.rename(top / ".a.txt.swp", top / "a.txt")
    saved = os.stat(top / "a.txt").st_ino
    m.assert_idle()
    m.stop()
    again = mount_factory("--source", f"s3://{bucket}", name="again", cache_dir=m.cache_dir)
    assert os.stat(again.path(bucket, "a.txt")).st_ino == saved
    assert again.path(bucket, "a.txt").read_bytes() == b"v2"


def test_a_chmod_of_a_prefix_top_without_marker_makes_one(s3, bucket, mount_factory, tmp_path):
    """Keys only under the prefix (`aws s3 cp` leaves no `dir/`): the change was copied
    onto a marker that is not there, dropped on moto and refused for ever on SeaweedFS,
    where the uploads of files written under it then waited behind it."""
    s3.put_object(Bucket=bucket, Key="proj/readme", Body=b"keys only")
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.txt").write_bytes(b"new")
    src.chmod(0o750)
    m = mount_factory("--source", f"proj=s3://{bucket}/proj")
    res = subprocess.run(["rsync", "-a", f"{src}/", f"{m.path('proj')}/"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(m.path("proj")).st_mode) == 0o750
    sync = subprocess.run([*m.command()[:3], "sync", str(m.mountpoint)], env=m.env,
                          capture_output=True, text=True, timeout=60)
    assert sync.returncode == 0, sync.stderr + m.log()
    assert s3.get_object(Bucket=bucket, Key="proj/new.txt")["Body"].read() == b"new"
    if keeps_marker_metadata(s3, bucket):
        assert int(metadata(s3, bucket, "proj/")["mode"]) & 0o7777 == 0o750
