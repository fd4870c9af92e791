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

pytestmark = pytest.mark.mount


def put(s3, bucket: str, objects: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def put_hostile(s3, bucket: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Store what the server accepts (SeaweedFS refuses some of these keys itself)."""
    from botocore.exceptions import ClientError
    for key in keys:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")
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
    assert m.wait_idle()["idle"]  # the block is written to the cache in the background
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


def test_find_costs_one_listing_per_directory(s3, bucket, mount_factory):
    from concurrent.futures import ThreadPoolExecutor
    keys = [f"d{i}/s{j}/f{k}.txt" for i in range(5) for j in range(4) for k in range(50)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    m = mount_factory("--source", f"s3://{bucket}")
    found = sh("find", str(m.path(bucket)), "-type", "f").split()
    assert len(found) == len(keys)
    assert m.status()["requests"].get("HeadObject", 0) == 0  # find reads no metadata
    sh("ls", "-lR", str(m.path(bucket)))
    requests = m.status()["requests"]
    directories = 1 + 5 + 5 * 4
    assert requests.get("ListObjectsV2") == directories
    assert requests.get("HeadObject", 0) == len(keys)  # ls -l: each file's metadata, once
    sh("ls", "-lR", str(m.path(bucket)))
    assert m.status()["requests"] == requests


def test_auto_mode_lists_every_bucket(s3, bucket, mount_factory):
    put(s3, bucket, {"k": b"v"})
    m = mount_factory()
    assert bucket in os.listdir(m.mountpoint)
    assert m.path(bucket, "k").read_bytes() == b"v"


def test_sigterm_unmounts_cleanly(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint)
    os.listdir(m.mountpoint)  # no "Transport endpoint is not connected"


def test_background_mount_status_and_umount(s3, bucket, mount_factory, tmp_path):
    m = mount_factory("--source", f"s3://{bucket}", start=False)
    m.mountpoint.mkdir(parents=True)
    cmd = [sys.executable, "-m", "s3fuse"]
    res = subprocess.run(cmd + ["mount", str(m.mountpoint), "--source", f"s3://{bucket}",
                                "--cache-dir", str(m.cache_dir)],
                         env=m.env, capture_output=True, text=True, timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(m.mountpoint)   # live as soon as the command returns
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
