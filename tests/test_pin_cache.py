"""Pinning through the mount, eviction under a small cache, and the cache commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path

from tests.test_disk_full import fill


pytestmark = pytest.mark.mount
MiB = 1 << 20


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def s3fuse(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3fuse", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_pin_makes_a_tree_available_offline_and_unpin_releases_it(s3, bucket, mount_factory, proxy):
    files = {f"keep/{d}/f{i}.bin": os.urandom(300_000 + i) for d in ("a", "b") for i in range(5)}
    files["keep/big.bin"] = os.urandom(20 * MiB)
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="other/x.bin", Body=b"x")
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    m.expect_log(r"S3 unreachable|offline|EHOSTUNREACH")
    keep = m.path(bucket, "keep")
    res = s3fuse("pin", str(keep), env=m.env)
    assert res.returncode == 0, res.stderr
    assert f"{len(files)} files" in res.stderr
    assert os.getxattr(keep / "a" / "f0.bin", "user.s3fuse.pinned") == b"1"
    assert os.getxattr(keep / "big.bin", "user.s3fuse.cached") == b"1"
    assert os.getxattr(m.path(bucket, "other", "x.bin"), "user.s3fuse.pinned") == b"0"
    assert m.status()["pins"] == [{"path": f"{bucket}/keep", "state": "complete"}]
    proxy.cut()
    for key, body in files.items():   # never read before, all there offline
        assert m.path(bucket, key).read_bytes() == body
    proxy.restore()
    res = s3fuse("unpin", str(keep), env=m.env)
    assert res.returncode == 0, res.stderr
    assert os.getxattr(keep / "a" / "f0.bin", "user.s3fuse.pinned") == b"0"
    assert os.getxattr(keep / "a" / "f0.bin", "user.s3fuse.cached") == b"1"  # still cached
    assert s3fuse("pin", "/tmp", env=m.env).returncode == 2


def test_cache_cap_holds_and_pinned_data_survives_eviction(s3, bucket, mount_factory, proxy):
    for i in range(8):
        s3.put_object(Bucket=bucket, Key=f"stream/{i}.bin", Body=os.urandom(16 * MiB))
    pinned = os.urandom(24 * MiB)
    s3.put_object(Bucket=bucket, Key="pinned/p.bin", Body=pinned)
    m = mount_factory("--source", f"s3://{bucket}", "--cache-size", "64M", endpoint=proxy.endpoint)
    m.expect_log(r"S3 unreachable|offline|EHOSTUNREACH")
    assert s3fuse("pin", str(m.path(bucket, "pinned")), env=m.env).returncode == 0
    for i in range(8):   # 128 MiB through a 64 MiB cache
        m.path(bucket, "stream", f"{i}.bin").read_bytes()
    cache = m.status()["cache"]
    assert cache["used"] <= 64 * MiB + 8 * MiB and cache["pinned"] >= 24 * MiB
    proxy.cut()
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)
    assert m.path(bucket, "pinned", "p.bin").read_bytes() == pinned


def test_cache_stats_prune_clear(s3, bucket, mount_factory):
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"f{i}.bin", Body=os.urandom(3 * MiB))
    m = mount_factory("--source", f"s3://{bucket}")
    for i in range(4):
        m.path(bucket, f"f{i}.bin").read_bytes()
    cache = str(m.cache_dir)
    res = s3fuse("cache", "clear", "--cache-dir", cache, env=m.env)
    assert res.returncode == 2 and "in use by pid" in res.stderr     # refused while mounted
    m.stop()
    stats = json.loads(s3fuse("cache", "stats", "--cache-dir", cache, "--json", env=m.env).stdout)
    assert stats["used"] >= 12 * MiB and stats["blocks"] == 4 and stats["misses"] >= 4
    assert stats["hit_rate"] is not None
    pruned = json.loads(s3fuse("cache", "prune", "--cache-dir", cache, "--max-size", "7M", "--json",
                               env=m.env).stdout)
    assert pruned["removed_blocks"] >= 2 and pruned["used"] <= 7 * MiB
    pruned = json.loads(s3fuse("cache", "prune", "--cache-dir", cache, "--older-than", "0s", "--json",
                               env=m.env).stdout)
    assert pruned["blocks"] == 0
    cleared = s3fuse("cache", "clear", "--cache-dir", cache, env=m.env)
    assert cleared.returncode == 0, cleared.stderr
    assert s3fuse("cache", "prune", "--cache-dir", cache, env=m.env).returncode == 2


def test_disk_full_cache_keeps_reads_working(s3, bucket, mount_factory, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(small)]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        bodies = {f"f{i}.bin": os.urandom(9 * MiB) for i in range(5)}
        for key, body in bodies.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        m = mount_factory("--source", f"s3://{bucket}", cache_dir=small / "cache")
        m.expect_log(r"cannot write to the block cache|No space left|disk is full|counters not saved")
        os.listdir(m.path(bucket))
        fill(small)                          # by someone else: the cache evicts its own blocks
        for key, body in bodies.items():     # for new ones, and has none to evict here
            assert m.path(bucket, key).read_bytes() == body
        m.assert_idle()         # every block the reads fetched was offered to the cache
        assert m.status()["cache"]["disk_full"]
        assert "DISK FULL" in s3fuse("status", str(m.mountpoint), env=m.env).stdout
        (small / "ballast").unlink()         # room again: no longer reported, before any read
        assert not m.status()["cache"]["disk_full"]
        assert "DISK FULL" not in s3fuse("status", str(m.mountpoint), env=m.env).stdout
        m.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_failed_pin_is_reported_and_resumed_by_the_next_daemon(s3, bucket, mount_factory, proxy):
    files = {f"data/f{i}.bin": os.urandom(200_000) for i in range(4)}
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    first = mount_factory("--source", f"s3://{bucket}", "--cache-size", "64M", endpoint=proxy.endpoint,
                          name="first")
    first.expect_log(r"S3 unreachable|offline|EHOSTUNREACH|pin of|failed")
    os.listdir(first.path(bucket, "data"))      # listing cached, bytes not
    proxy.cut()
    res = s3fuse("pin", str(first.path(bucket, "data")), env=first.env)
    assert res.returncode == 1
    assert "4 failed" in res.stderr and "could not pin" in res.stderr and "EHOSTUNREACH" in res.stderr
    assert first.status()["pins"] == [{"path": f"{bucket}/data", "state": "incomplete"}]
    first.stop()
    proxy.restore()
    second = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="second",
                           cache_dir=first.cache_dir)
    second.assert_idle()           # the resumed pin ran
    assert second.status()["pins"] == [{"path": f"{bucket}/data", "state": "complete"}]
    proxy.cut()
    for key, body in files.items():
        assert second.path(bucket, key).read_bytes() == body
    second.expect_log(r"S3 unreachable|offline|EHOSTUNREACH")


def test_pinned_data_over_the_limit_is_kept_and_reported(s3, bucket, mount_factory):
    body = os.urandom(72 * MiB)
    s3.put_object(Bucket=bucket, Key="huge/h.bin", Body=body)
    m = mount_factory("--source", f"s3://{bucket}", "--cache-size", "64M")
    assert s3fuse("pin", str(m.path(bucket, "huge")), env=m.env).returncode == 0
    status = m.status()["cache"]
    assert status["pinned"] >= 72 * MiB and status["pinned_over_limit"] is True
    assert "exceeds the cache limit" in s3fuse("status", str(m.mountpoint), env=m.env).stdout
    m.stop()
    res = s3fuse("cache", "stats", "--cache-dir", str(m.cache_dir), env=m.env)
    assert "exceeds the cache size limit" in res.stderr
    shown = dict(line.split(None, 1) for line in res.stdout.splitlines())  # for people:
    assert "/huge (" in shown["pins"] and shown["pinned_over_limit"] == "yes"  # no reprs
    assert shown["hit_rate"].endswith("%") or shown["hit_rate"] == "none read yet"
    assert not any(repr_ in res.stdout for repr_ in ("None", "[]", "{'", "True", "False"))
    stats = json.loads(s3fuse("cache", "stats", "--cache-dir", str(m.cache_dir), "--json", env=m.env).stdout)
    assert stats["pinned"] >= 72 * MiB


def test_a_pin_of_a_path_that_does_not_exist_is_not_recorded(s3, bucket, mount_factory):
    """`s3fuse pin` of a typo failed with ENOENT, yet the pin stayed recorded
    (`status`: 1 pin, resumed by every later daemon) until unpinned."""
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"pin of .*no-such-file")
    res = s3fuse("pin", str(m.path(bucket, "no-such-file")), env=m.env)
    assert res.returncode == 1 and "ENOENT" in res.stderr
    assert m.status()["pins"] == []


def test_pins_dropped_by_a_cache_clear_are_not_reported(tmp_path: Path) -> None:
    """`s3fuse cache clear --force` of a live mount's cache removes the pins from
    meta.sqlite: the daemon kept saying pinned (`user.s3fuse.pinned` = 1, `status`) of
    files whose blocks were gone (found by two helpers)."""
    from s3fuse.cache.meta import MetaStore
    from s3fuse.pinning import Pinner
    from s3fuse.util.supervisor import Supervisor
    daemons = MetaStore(tmp_path / "meta.sqlite")
    daemons.set_pin("bkt/data", "complete")
    daemons.flush()
    pinner = Pinner(None, daemons, Supervisor())  # type: ignore[arg-type]
    assert pinner.covers("bkt/data/f.bin") and pinner.pins() == [
        {"path": "bkt/data", "state": "complete"}]
    clearing = MetaStore(tmp_path / "meta.sqlite")  # the CLI's own connection
    clearing.remove_pin("bkt/data")
    clearing.flush()
    assert not pinner.covers("bkt/data/f.bin") and pinner.pins() == []
