"""The real mount against moto's HTTP server, checked only with os calls and shell tools."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3fuse.mounts import daemon_pid

pytestmark = pytest.mark.mount


def put(s3, bucket: str, objects: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def put_hostile(s3, bucket: str, keys: list[str], body: bytes = b"x") -> None:  # type: ignore[no-untyped-def]
    """Store what the server accepts (SeaweedFS refuses some of these keys itself)."""
    from botocore.exceptions import ClientError
    for key in keys:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError:
            pass


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_tree_layout_and_reads(s3, bucket, mount_factory):
    big = os.urandom(20 << 20)
    put(s3, bucket, {
        "a.txt": b"alpha",
        "dir/b.txt": b"bravo",
        "dir/sub/c.bin": big,
        "marker-only/": b"",
        "clash": b"hidden file",
        "clash/inner.txt": b"dir wins",
        "spaced name.txt": b"spaces",
        "unicodé/文件.txt": "ünïcode".encode(),
    })
    put_hostile(s3, bucket, ["weird//double", "dots/../escape", "dots/./here", "long/" + "n" * 256])
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"hiding s3")
    root = m.path(bucket)
    assert sorted(os.listdir(m.mountpoint)) == [bucket]
    assert {"a.txt", "clash", "dir", "marker-only", "spaced name.txt", "unicodé"} <= set(os.listdir(root))
    assert set(os.listdir(root)) <= {"a.txt", "clash", "dir", "dots", "long", "marker-only",
                                     "spaced name.txt", "unicodé", "weird"}
    assert (root / "a.txt").read_bytes() == b"alpha"
    assert (root / "dir" / "b.txt").read_bytes() == b"bravo"
    assert os.path.isdir(root / "clash") and (root / "clash" / "inner.txt").read_bytes() == b"dir wins"
    assert os.listdir(root / "marker-only") == []
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]
              if o["Key"].startswith(("weird", "dots", "long"))]   # as the server kept them
    assert stored
    for key in stored:   # '', '.', '..' or > 255-byte segments are hidden, never traversed
        posix = all(seg not in ("", ".", "..") and len(seg.encode()) <= 255 for seg in key.split("/"))
        if posix:
            assert (root / key).is_file(), key
        else:  # a name over 255 bytes is ENAMETOOLONG, as on any POSIX file system
            with pytest.raises(OSError) as info:
                os.stat(root / key)
            assert info.value.errno in (errno.ENOENT, errno.ENAMETOOLONG), key
    assert (root / "unicodé" / "文件.txt").read_text() == "ünïcode"
    digest = sh("sha256sum", str(root / "dir" / "sub" / "c.bin")).split()[0]
    assert digest == hashlib.sha256(big).hexdigest()
    st = os.stat(root / "dir" / "sub" / "c.bin")
    assert st.st_size == len(big)
    head = s3.head_object(Bucket=bucket, Key="dir/sub/c.bin")
    assert st.st_mtime == pytest.approx(head["LastModified"].timestamp(), abs=1)
    with open(root / "dir" / "sub" / "c.bin", "rb") as fh:   # random reads
        for offset in (15 << 20, 3, (8 << 20) - 5, len(big) - 10):
            fh.seek(offset)
            assert fh.read(100) == big[offset:offset + 100]
    assert not os.path.exists(root / "nope")
    assert "s3fuse" in Path("/proc/mounts").read_text()


def test_cache_dir_is_private(s3, bucket, mount_factory):
    put(s3, bucket, {"f.bin": os.urandom(100_000)})
    m = mount_factory("--source", f"s3://{bucket}")
    assert m.path(bucket, "f.bin").read_bytes()
    m.assert_idle()  # the block is written to the cache in the background
    assert stat.S_IMODE(os.stat(m.cache_dir).st_mode) == 0o700
    paths = list(m.cache_dir.rglob("*"))
    assert any(p.suffix == ".val" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))


def test_xattrs(s3, bucket, mount_factory):
    put(s3, bucket, {"x/data.csv": b"a,b\n1,2\n"})
    m = mount_factory("--source", f"s3://{bucket}")
    out = sh("getfattr", "-d", str(m.path(bucket, "x", "data.csv")))
    etag = s3.head_object(Bucket=bucket, Key="x/data.csv")["ETag"].strip('"')
    assert f'user.s3.uri="s3://{bucket}/x/data.csv"' in out
    assert f'user.s3.etag="{etag}"' in out


def test_writes_fail_with_erofs_when_read_only(s3, bucket, mount_factory):
    put(s3, bucket, {"f.txt": b"data"})
    m = mount_factory("--source", f"s3://{bucket}", "--read-only")
    root = m.path(bucket)
    for action in (lambda: (root / "new.txt").write_bytes(b"x"),
                   lambda: open(root / "f.txt", "ab"),
                   lambda: os.mkdir(root / "d"),
                   lambda: os.unlink(root / "f.txt"),
                   lambda: os.rename(root / "f.txt", root / "g.txt"),
                   lambda: os.truncate(root / "f.txt", 0),
                   lambda: os.chmod(root / "f.txt", 0o600),  # was EPERM
                   lambda: os.chown(root / "f.txt", 1, 1)):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.EROFS
    assert (root / "f.txt").read_bytes() == b"data"


def test_named_prefix_source_and_ttl(s3, bucket, mount_factory):
    put(s3, bucket, {"2024/jan.csv": b"v1", "other/x": b"no"})
    m = mount_factory("--source", f"raw=s3://{bucket}/2024", "--metadata-ttl", "1")
    assert os.listdir(m.mountpoint) == ["raw"]
    assert m.path("raw", "jan.csv").read_bytes() == b"v1"
    put(s3, bucket, {"2024/jan.csv": b"version two", "2024/feb.csv": b"new"})
    time.sleep(1.5)
    assert sorted(os.listdir(m.path("raw"))) == ["feb.csv", "jan.csv"]
    assert m.path("raw", "jan.csv").read_bytes() == b"version two"


def test_open_handle_sees_estale_not_mixed_versions(s3, bucket, mount_factory):
    old, new = os.urandom(20 << 20), os.urandom(20 << 20)
    put(s3, bucket, {"big.bin": old})
    m = mount_factory("--source", f"s3://{bucket}")
    with open(m.path(bucket, "big.bin"), "rb", buffering=0) as fh:
        assert fh.read(4096) == old[:4096]
        put(s3, bucket, {"big.bin": new})
        fh.seek(16 << 20)
        try:
            chunk = fh.read(4096)
        except OSError as exc:
            assert exc.errno == errno.ESTALE
        else:
            assert chunk == old[16 << 20:(16 << 20) + 4096]   # read-ahead got the old version
    m.expect_log(r"changed in S3")


def test_the_open_after_a_stale_read_reads_the_new_version(s3, bucket, mount_factory):
    """Another client overwrote (or removed) a file this mount had looked up: the read of
    the next open failed with ESTALE, and so did every open after it until the metadata
    TTL passed (`cat` failed for 30 s with --metadata-ttl 30: a helper's finding). The
    failed read drops the stored entry and the kernel's attributes: the next open reads
    the new version. A removed object's read said ENOENT, no errno for a read: ESTALE."""
    put(s3, bucket, {"x.txt": b"old content", "gone.bin": os.urandom(20 << 20)})
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "30")
    m.expect_log(r"changed in S3|removed from S3")
    path = m.path(bucket, "x.txt")
    assert os.stat(path).st_size == len(b"old content")
    put(s3, bucket, {"x.txt": b"the new version, longer"})
    try:
        first = path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.ESTALE, exc
    else:
        assert first == b"the new version, longer"  # a stat had looked again meanwhile
    assert path.read_bytes() == b"the new version, longer"
    assert os.stat(path).st_size == len(b"the new version, longer")
    gone = m.path(bucket, "gone.bin")
    with open(gone, "rb", buffering=0) as fh:
        s3.delete_object(Bucket=bucket, Key="gone.bin")
        fh.seek(16 << 20)  # a block nothing read ahead yet
        with pytest.raises(OSError) as failed:
            fh.read(100)
        assert failed.value.errno == errno.ESTALE
    with pytest.raises(FileNotFoundError):
        gone.read_bytes()


def test_a_version_replaced_elsewhere_shows_while_an_old_handle_stays_open(s3, bucket,
                                                                          mount_factory):
    """A process keeps the old version open (a notebook's memmap, `exec 3< log`) while
    another client replaces the object: `stat`, `wc -c <` and fstat of a new descriptor
    showed the old size for as long as that handle stayed open, past the TTL, while reads
    of the new descriptor gave the new bytes; a new memmap failed (helpers' findings).
    The path now gets an inode of its own, as a file renamed over does."""
    import mmap
    old, new = b"old line\n" * 10, b"new line, longer\n" * 20
    put(s3, bucket, {"app.log": old})
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "1")
    path = m.path(bucket, "app.log")
    with open(path, "rb") as held:
        assert held.read() == old
        put(s3, bucket, {"app.log": new})
        time.sleep(1.5)  # the TTL passed
        assert os.stat(path).st_size == len(new)
        with open(path, "rb") as fresh:
            assert os.fstat(fresh.fileno()).st_size == len(new) and fresh.read() == new
            with mmap.mmap(fresh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                assert mapped[:] == new
        assert os.fstat(held.fileno()).st_size == len(old)  # the old handle: its version
        assert os.fstat(held.fileno()).st_ino != os.stat(path).st_ino
        held.seek(0)
        assert held.read() == old  # its pages
    assert path.read_bytes() == new and os.stat(path).st_size == len(new)


def test_find_costs_one_listing_per_directory(s3, bucket, mount_factory):
    from concurrent.futures import ThreadPoolExecutor
    keys = [f"d{i}/s{j}/f{k}.txt" for i in range(5) for j in range(4) for k in range(50)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    m = mount_factory("--source", f"s3://{bucket}")
    at_start = m.status()["requests"].get("ListObjectsV2", 0)  # the credentials' check
    found = sh("find", str(m.path(bucket)), "-type", "f").split()
    assert len(found) == len(keys)
    assert m.status()["requests"].get("HeadObject", 0) == 0  # find reads no metadata
    sh("ls", "-lR", str(m.path(bucket)))
    requests = m.status()["requests"]
    directories = 1 + 5 + 5 * 4
    assert at_start <= 1 and requests.get("ListObjectsV2") - at_start == directories
    assert requests.get("HeadObject", 0) == len(keys)  # ls -l: each file's metadata, once
    sh("ls", "-lR", str(m.path(bucket)))
    assert m.status()["requests"] == requests


def test_auto_mode_lists_every_bucket(s3, bucket, mount_factory):
    put(s3, bucket, {"k": b"v"})
    m = mount_factory()
    assert bucket in os.listdir(m.mountpoint)
    assert m.path(bucket, "k").read_bytes() == b"v"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_unmounts_cleanly(s3, bucket, mount_factory, signum):
    """SIGHUP too (the terminal of a foreground mount closed): its default action killed
    the daemon and left a dead mount ("Transport endpoint is not connected")."""
    m = mount_factory("--source", f"s3://{bucket}")
    (m.path(bucket) / "written").write_bytes(b"kept")
    m.proc.send_signal(signum)
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint)
    os.listdir(m.mountpoint)  # no "Transport endpoint is not connected"
    assert s3.get_object(Bucket=bucket, Key="written")["Body"].read() == b"kept"  # drained


def test_background_mount_status_and_umount(s3, bucket, mount_factory, tmp_path):
    m = mount_factory("--source", f"s3://{bucket}", start=False)
    m.mountpoint.mkdir(parents=True)
    cmd = [sys.executable, "-m", "s3fuse"]
    here = m.mountpoint.parent  # relative paths, from a directory the daemon must not keep busy
    res = subprocess.run(cmd + ["mount", os.path.relpath(m.mountpoint, here), "--source",
                                f"s3://{bucket}", "--cache-dir", os.path.relpath(m.cache_dir, here)],
                         env=m.env, capture_output=True, text=True, timeout=60, cwd=here)
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(m.mountpoint)   # live as soon as the command returns
        assert os.readlink(f"/proc/{daemon_pid(m.mountpoint)}/cwd") == "/"
        os.listdir(m.mountpoint / bucket)       # one ListObjectsV2 for the request counts
        status = subprocess.run(cmd + ["status", str(m.mountpoint)], env=m.env, capture_output=True,
                                text=True, check=True).stdout
        assert "online" in status and bucket in status
        assert "  requests:  " in status and "/s on average (ListObjectsV2" in status
        assert "  reads:     no block read yet" in status
        everything = subprocess.run(cmd + ["status", "--json"], env=m.env, capture_output=True,
                                    text=True, check=True).stdout
        assert str(m.mountpoint) in everything
        res = subprocess.run(cmd + ["umount", str(m.mountpoint)], env=m.env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(m.mountpoint)
    finally:
        if os.path.ismount(m.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(m.mountpoint)])
    assert "Traceback" not in (m.cache_dir / "s3fuse.log").read_text()


def test_second_daemon_on_same_cache_dir_refused(s3, bucket, mount_factory):
    first = mount_factory("--source", f"s3://{bucket}", name="one")
    second = mount_factory("--source", f"s3://{bucket}", name="two", start=False,
                           cache_dir=first.cache_dir)
    second.mountpoint.mkdir(parents=True)
    res = subprocess.run(second.command(), env=second.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "in use by pid" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(second.mountpoint)


def test_background_mount_logs_to_the_log_file_given(s3, bucket, mount_factory, tmp_path):
    """--log-file: the daemon's lines go there (not to the cache dir's default log)."""
    m = mount_factory("--source", f"s3://{bucket}", start=False)
    m.mountpoint.mkdir(parents=True)
    log_file = tmp_path / "logs" / "data.log"
    log_file.parent.mkdir()
    cmd = [sys.executable, "-m", "s3fuse"]
    res = subprocess.run(cmd + ["mount", str(m.mountpoint), "--source", f"s3://{bucket}",
                                "--cache-dir", str(m.cache_dir), "--log-file", str(log_file)],
                         env=m.env, capture_output=True, text=True, timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        res = subprocess.run(cmd + ["umount", str(m.mountpoint)], env=m.env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        if os.path.ismount(m.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(m.mountpoint)])
    text = log_file.read_text()
    assert f"mounted {m.mountpoint}" in text and f"unmounted {m.mountpoint}" in text
    assert not (m.cache_dir / "s3fuse.log").exists()
    assert oct(log_file.stat().st_mode & 0o777) == oct(0o600)


def test_a_file_hidden_by_its_directory_shows_once_the_directory_is_gone(s3, bucket,
                                                                         mount_factory):
    """S3 holds `h/e` and `h/e/` (the directory wins). Once `rmdir e` (or `mv e ...`) took
    the directory away, `e` is the file S3 holds, and writing it replaces that object:
    it went to a conflict copy and `e` read back the old bytes."""
    put_hostile(s3, bucket, ["h/e/", "h/m/"], b"")  # markers (one with bytes is not removed)
    put(s3, bucket, {"h/e": b"OLD-HIDDEN", "h/m": b"MOVED-OVER"})
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    if not {"h/e/", "h/e"} <= keys:  # SeaweedFS, a file system, holds one of the two
        pytest.skip("this server cannot hold a key and a prefix of the same name")
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"hiding s3 key")
    root = m.path(bucket, "h")
    assert os.path.isdir(root / "e") and os.path.isdir(root / "m")
    os.rmdir(root / "e")
    assert (root / "e").read_bytes() == b"OLD-HIDDEN"
    (root / "e").write_bytes(b"mine")
    os.rename(root / "m", root / "m2")
    assert (root / "m").read_bytes() == b"MOVED-OVER" and os.path.isdir(root / "m2")
    m.wait_idle()
    assert s3.get_object(Bucket=bucket, Key="h/e")["Body"].read() == b"mine"
    assert (root / "e").read_bytes() == b"mine"
    assert sorted(os.listdir(root)) == ["e", "m", "m2"]
    assert not any("conflict" in o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])


def test_a_directory_of_keys_it_cannot_show_is_not_empty(s3, bucket, mount_factory):
    """`a//b` lists as nothing in `a`, but `a` is not empty: rmdir said 0 and `a` came
    back at the next listing; it is ENOTEMPTY, with a log line saying why."""
    put_hostile(s3, bucket, ["a//b"])
    put(s3, bucket, {"t/": b""})
    if "a//b" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}:
        pytest.skip("this server stores `a//b` as `a/b`")
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"hiding s3|holds keys whose names cannot be shown")
    root = m.path(bucket)
    assert os.listdir(root / "a") == []
    for attempt in (lambda: os.rmdir(root / "a"), lambda: os.rename(root / "t", root / "a")):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.ENOTEMPTY
    assert "cannot be shown" in m.log()
    assert os.path.isdir(root / "a") and os.path.isdir(root / "t")


def test_a_key_over_1024_bytes_is_refused_at_once(s3, bucket, mount_factory):
    """S3 keys are at most 1,024 bytes: a file, directory or rename that would need a
    longer one is ENAMETOOLONG when made, not an upload failing for good afterwards."""
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    deep = root.joinpath(*["d" * 200] * 5)  # key prefix of 1,005 bytes
    deep.mkdir(parents=True)
    (deep / ("f" * 19)).write_bytes(b"fits")  # 1,024 bytes
    os.mkdir(deep / ("g" * 17))  # its marker `.../ggg/` is 1,023 bytes
    for make in (lambda: (deep / ("f" * 20)).write_bytes(b"x"),
                 lambda: os.mkdir(deep / ("g" * 19)),
                 lambda: os.symlink("target", deep / ("l" * 20)),
                 lambda: os.rename(deep / ("f" * 19), deep / ("f" * 20))):
        with pytest.raises(OSError) as info:
            make()
        assert info.value.errno == errno.ENAMETOOLONG
    os.mkdir(root / "short")
    (root / "short" / ("s" * 200)).write_bytes(b"x")
    with pytest.raises(OSError) as info:  # a key below it would be 1,205 bytes
        os.rename(root / "short", deep / ("h" * 10))
    assert info.value.errno == errno.ENAMETOOLONG
    m.wait_idle()  # every upload landed: none was left failing
    assert (deep / ("f" * 19)).read_bytes() == b"fits"
    assert (root / "short" / ("s" * 200)).read_bytes() == b"x"
    assert m.status()["uploads"]["files"] == 0


def test_mounting_again_on_a_dead_mount_says_it_is_stale(s3, bucket, mount_factory):
    """The daemon was SIGKILLed: the kernel may still answer the root's cached attributes,
    so the mountpoint looked mounted ("already a mount point", with no way out given)."""
    m = mount_factory("--source", f"s3://{bucket}")
    os.listdir(m.path(bucket))
    m.proc.kill()
    m.proc.wait(timeout=10)
    try:
        res = subprocess.run(m.command(), env=m.env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2
        assert res.stderr.strip().splitlines() == [
            f"s3fuse: error: mountpoint {m.mountpoint} is a stale mount (Transport endpoint "
            f"is not connected): its daemon is gone; run: s3fuse umount {m.mountpoint}"]
        res = subprocess.run([sys.executable, "-m", "s3fuse", "umount", str(m.mountpoint)],
                             env=m.env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(m.mountpoint)
    finally:
        subprocess.run(["fusermount3", "-uz", str(m.mountpoint)], capture_output=True)


@pytest.mark.parametrize("inside", ["cache", "log"])
def test_a_cache_dir_or_log_file_inside_the_mountpoint_is_refused(s3, bucket, mount_factory,
                                                                   inside):
    """The daemon would open its own files through its own mount: the mount came up, then
    every access hung until it was killed -9."""
    m = mount_factory("--source", f"s3://{bucket}", start=False)
    m.mountpoint.mkdir(parents=True)
    own = m.mountpoint / "sub"
    cmd = [sys.executable, "-m", "s3fuse", "mount", str(m.mountpoint), "--source",
           f"s3://{bucket}", "--allow-non-empty",
           *(["--cache-dir", str(own)] if inside == "cache"
             else ["--cache-dir", str(m.cache_dir), "--log-file", str(own / "s3fuse.log")])]
    res = subprocess.run(cmd, env=m.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and not os.path.ismount(m.mountpoint)
    what = "cache dir" if inside == "cache" else "log file"
    assert res.stderr.strip().splitlines() == [
        f"s3fuse: error: {what} {own if inside == 'cache' else own / 's3fuse.log'} is inside the "
        f"mountpoint {m.mountpoint.resolve()}: the mount would hide it; choose a {what} "
        "outside it"]


def test_a_background_mount_of_a_missing_bucket_says_so(bucket, backend, tmp_path, fuse_available):
    """`s3fuse mount` (in the background, as users run it) of a bucket that does not exist
    mounts, as offline-first must, but says so on the terminal: the warning was only in
    the daemon's log file, and the start looked clean."""
    missing, mnt = f"{bucket}-typo", tmp_path / "mnt"
    mnt.mkdir()
    s3fuse = [sys.executable, "-m", "s3fuse"]
    res = subprocess.run([*s3fuse, "mount", str(mnt), "--source", f"s3://{missing}",
                          "--cache-dir", str(tmp_path / "cache")],
                         env=backend.env(), capture_output=True, text=True,
                         timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(mnt)
        [line] = res.stderr.strip().splitlines()
        assert line.startswith("s3fuse: warning: ") and "the bucket does not exist (a typo?)" in line
        assert missing in line
    finally:
        subprocess.run([*s3fuse, "umount", str(mnt)], capture_output=True, timeout=120)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


def test_a_source_whose_bucket_does_not_exist_takes_no_new_file(s3, bucket, mount_factory):
    """A typo in --source: `ls` was ENOENT but a create went ahead, and its upload then
    failed for good (NoSuchBucket). Now the start warns, and nothing is made in it until
    the bucket exists."""
    missing = f"{bucket}-typo"
    m = mount_factory("--source", f"s3://{missing}")
    m.expect_log(r"the bucket does not exist \(a typo\?\)")
    root = m.path(missing)
    for attempt in (lambda: os.listdir(root), lambda: (root / "new.txt").write_bytes(b"x"),
                    lambda: (root / "d").mkdir()):
        with pytest.raises(FileNotFoundError):
            attempt()
    assert "the bucket does not exist (a typo?)" in m.log()
    s3.create_bucket(Bucket=missing)  # made meanwhile: the next listing finds it
    (root / "new.txt").write_bytes(b"x")
    subprocess.run([sys.executable, "-m", "s3fuse", "sync", str(m.mountpoint)], env=m.env,
                   check=True, timeout=60)
    assert s3.get_object(Bucket=missing, Key="new.txt")["Body"].read() == b"x"
