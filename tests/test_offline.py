"""S3 unreachable: cached data, listings and members keep being served; uncached reads fail
fast with EHOSTUNREACH; the daemon starts offline from a warm cache; the link recovers."""
from __future__ import annotations

import errno
import os
import time

import pytest

from tests.support import s3exchange_fixtures as fx

pytestmark = pytest.mark.mount


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """Offline tests need the proxy in front of moto only."""
    return moto_backend


def populate(s3, bucket: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    objects = {"cached/a.txt": b"alpha", "cached/big.bin": os.urandom(20 << 20),
               "uncached/b.txt": b"bravo", "other/deep/c.txt": b"charlie"}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


def expect_errno(code: int, fn, *args) -> float:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value
    return time.monotonic() - began


def test_cached_data_served_offline_and_link_recovers(s3, bucket, mount_factory, proxy):
    objects = populate(s3, bucket)
    targz = fx.targz_shards(proxy.endpoint, bucket, "ml", access_key="testing", secret_key="testing")
    m = mount_factory("--source", f"s3://{bucket}", "--manifest", f"t={targz.uri}",
                      endpoint=proxy.endpoint)
    m.expect_log(r"S3 unreachable|offline|EHOSTUNREACH")
    root = m.path(bucket)
    assert sorted(os.listdir(root)) == ["cached", "ml", "other", "uncached"]
    assert (root / "cached" / "a.txt").read_bytes() == b"alpha"
    assert (root / "cached" / "big.bin").read_bytes() == objects["cached/big.bin"]
    member = next(p for p, s in targz.sources.items() if s.member)
    assert (m.path("t") / member).read_bytes() == targz.files[member]
    os.listdir(root / "uncached")  # listing cached, file bytes not

    proxy.cut()
    assert (root / "cached" / "a.txt").read_bytes() == b"alpha"
    assert (root / "cached" / "big.bin").read_bytes() == objects["cached/big.bin"]
    assert (m.path("t") / member).read_bytes() == targz.files[member]
    assert sorted(os.listdir(root / "uncached")) == ["b.txt"]
    assert expect_errno(errno.EHOSTUNREACH, (root / "uncached" / "b.txt").read_bytes) < 5
    assert expect_errno(errno.EHOSTUNREACH, os.listdir, root / "other" / "deep") < 5
    status = m.status()
    assert status["link"]["state"] == "offline" and status["link"]["recent_errors"]

    proxy.restore()
    deadline = time.monotonic() + 15
    while m.status()["link"]["state"] != "online":
        assert time.monotonic() < deadline, "the link did not come back"
        time.sleep(0.2)
    assert (root / "uncached" / "b.txt").read_bytes() == b"bravo"
    assert os.listdir(root / "other" / "deep") == ["c.txt"]


def test_starts_offline_from_a_warm_cache(s3, bucket, mount_factory, proxy):
    objects = populate(s3, bucket)
    first = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="first",
                          start=True)
    assert (first.path(bucket, "cached", "big.bin")).read_bytes() == objects["cached/big.bin"]
    first.assert_idle()  # the background cache writes are done
    first.stop()
    proxy.cut()
    second = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "0",
                           endpoint=proxy.endpoint, name="second", cache_dir=first.cache_dir)
    second.expect_log(r"S3 unreachable|offline|EHOSTUNREACH")
    assert (second.path(bucket, "cached", "big.bin")).read_bytes() == objects["cached/big.bin"]
    assert sorted(os.listdir(second.path(bucket))) == ["cached", "uncached"] or \
        sorted(os.listdir(second.path(bucket))) == ["cached", "other", "uncached"]
    assert expect_errno(errno.EHOSTUNREACH, second.path(bucket, "uncached", "b.txt").read_bytes) < 5


def test_corrupt_cache_blocks_are_refetched_never_served(s3, bucket, mount_factory, proxy):
    data = os.urandom(3 << 20)
    s3.put_object(Bucket=bucket, Key="f.bin", Body=data)
    first = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="first")
    assert first.path(bucket, "f.bin").read_bytes() == data
    first.assert_idle()  # the block is in the cache
    first.stop()
    def block_file():  # type: ignore[no-untyped-def]
        files = list((first.cache_dir / "blocks").rglob("*.val"))
        assert len(files) == 1
        return files[0]
    good = block_file().read_bytes()
    for damage in (good[: len(good) // 2], b"\0" * len(good), good[:100] + bytes(reversed(good[100:]))):
        block_file().write_bytes(damage)   # a refetched block lands in a new file
        m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="again",
                          cache_dir=first.cache_dir)
        m.expect_log(r"corrupt|unreadable")
        assert m.path(bucket, "f.bin").read_bytes() == data   # detected and refetched
        m.stop()
    block = block_file()
    block.write_bytes(b"\0" * block.stat().st_size)
    proxy.cut()
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="offline",
                      cache_dir=first.cache_dir)
    m.expect_log(r"corrupt|unreadable|S3 unreachable|offline|EHOSTUNREACH")
    with pytest.raises(OSError):   # offline: an error, never the zeroed bytes
        m.path(bucket, "f.bin").read_bytes()
