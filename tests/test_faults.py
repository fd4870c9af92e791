"""The fault matrix: S3 misbehaving behind the fault proxy, seen through the real mount.

Every scenario ends in one of two ways, and the tests say which: the bytes read (or
uploaded) are exactly right, or the call fails with a clear errno in bounded time and
works again once the fault is over. Never short bytes, never a hang, never a dead daemon.
"""
from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest

from s3fuse.errors import AccessDenied, RemoteError
from s3fuse.store.presigned import PresignedReader
from tests.support.faultproxy import FaultProxy
from tests.support.report import record
from tests.test_write_mount import body, sync

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

#: An object GET (presigned: /bucket/key?X-Amz-...), not a listing (/bucket?list-type=2).
OBJECT = r"^/[^/?]+/[^?]+"
LISTING = r"list-type=2"
#: Short timeouts, so a hang or a trickle is noticed in seconds, not minutes.
FAST = ("--request-timeout", "1")


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """Fault injection sits in front of moto (SeaweedFS checks signatures of the proxy's host)."""
    return moto_backend


@pytest.fixture
def faults(moto_backend, request):  # type: ignore[no-untyped-def]
    """The proxy; what it injected and forwarded is recorded per test for the report."""
    proxy = FaultProxy(moto_backend.endpoint)
    began = time.monotonic()
    yield proxy
    proxy.close()
    record(f"faults/{request.node.name}", {
        "injected": dict(proxy.injected), "forwarded": proxy.forwarded,
        "seconds": round(time.monotonic() - began, 1), **proxy.figures})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path, chunk: int = 1 << 20) -> bytes:
    """Read as `cat` does: sequential chunks (so the daemon sees a sequential reader)."""
    parts = []
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(chunk):
            parts.append(data)
    return b"".join(parts)


def errno_of(fn: Callable[[], Any]) -> int | None:
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def upload(s3, bucket: str, objects: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)


# ------------------------------------------------------------ the GET path alone


def reader_for(s3, faults: FaultProxy, bucket: str, read_timeout: float = 1.0) -> PresignedReader:  # type: ignore[no-untyped-def]
    def presign(b: str, k: str) -> str:
        url = urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": k}))
        return f"{faults.endpoint}{url.path}?{url.query}"  # moto does not check the host
    return PresignedReader(presign, connect_timeout=1, read_timeout=read_timeout, ca_certs=None)


def test_get_path_survives_each_fault_or_fails_clearly(s3, bucket, faults):
    """The presigned GET path against each rule, without a mount: fast and exact."""
    data = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="k", Body=data)
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"')
    get = reader_for(s3, faults, bucket)
    for add in (lambda: faults.slowdown(times=3), lambda: faults.error(500, times=3),
                lambda: faults.reset(times=3), lambda: faults.truncate(keep=0.3, times=3)):
        rule = add()
        assert get.get(bucket, "k", etag, 1000, 200_000) == data[1000:200_000]
        assert rule.hits == 3
        faults.clear()
    faults.error(403)
    with pytest.raises(AccessDenied):
        get.get(bucket, "k", etag)
    assert faults.injected["status:403"] == 1          # no retry of a refusal
    faults.clear()
    faults.trickle(rate=1000)
    began = time.monotonic()
    with pytest.raises(RemoteError, match="no answer in time"):
        get.get(bucket, "k", etag)
    assert time.monotonic() - began < 10               # 3 stalled attempts of ~1 s
    faults.clear()
    faults.hang()
    with pytest.raises(RemoteError, match="no answer in time"):
        get.get(bucket, "k", etag)
    faults.clear()
    assert get.get(bucket, "k", etag) == data


# ------------------------------------------------------------ through the mount


def test_reads_during_a_5xx_storm_return_correct_bytes(s3, bucket, mount_factory, faults):
    objects = {f"small/{i:02d}.bin": os.urandom(150_000 + i) for i in range(20)}
    objects |= {f"big/{i}.bin": os.urandom((20 << 20) + i) for i in range(3)}
    upload(s3, bucket, objects)
    m = mount_factory("--source", f"s3://{bucket}", *FAST, "--metadata-ttl", "0.5",
                      endpoint=faults.endpoint)
    slow = faults.slowdown(path=r"^/(?!\?)", probability=0.1)   # S3's throttling answer
    broken = faults.error(500, path=r"^/(?!\?)", probability=0.1)  # (not the probe: /?...)
    root = m.path(bucket)
    for round in range(2):                 # the second after the TTL: listings again
        assert sorted(os.listdir(root / "small")) == sorted(k.split("/")[1] for k in objects
                                                             if k.startswith("small/"))
        for key, data in objects.items():
            assert sha(read_file(root / key)) == sha(data), key
        time.sleep(0.6)
    fds = {key: os.open(root / key, os.O_RDONLY) for key in objects}
    time.sleep(0.6)
    try:                                   # fstat after the TTL: a HEAD each, in the storm
        for key, fd in fds.items():
            assert os.fstat(fd).st_size == len(objects[key]), key
    finally:
        for fd in fds.values():
            os.close(fd)
    assert slow.hits + broken.hits >= 3, faults.injected      # the storm really happened
    requests = faults.count("GET") + faults.count("HEAD")
    assert faults.count("HEAD") > 0 and (slow.hits + broken.hits) / requests > 0.1, \
        (faults.injected, requests)
    faults.figures = {"objects": len(objects), "requests": requests,
                      "bytes_verified": 2 * sum(map(len, objects.values()))}


def test_a_truncated_body_is_retried_never_served_short(s3, bucket, mount_factory, faults):
    big, small = os.urandom((24 << 20) + 5), os.urandom(70_000)
    upload(s3, bucket, {"big.bin": big, "small.bin": small})
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    root = m.path(bucket)
    os.listdir(root)
    cut = faults.truncate(keep=0.5, method="GET", path=OBJECT, times=4)
    assert read_file(root / "small.bin") == small
    assert sha(read_file(root / "big.bin")) == sha(big)
    assert cut.hits == 4


def test_403_on_one_object_is_eacces_and_nothing_else_fails(s3, bucket, mount_factory, faults):
    upload(s3, bucket, {"secret.txt": b"no", "open.txt": b"yes"})
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"read .*secret.txt failed: EACCES")
    root = m.path(bucket)
    os.listdir(root)
    faults.error(403, method="GET", path=r"/secret\.txt")
    assert errno_of(lambda: (root / "secret.txt").read_bytes()) == errno.EACCES
    assert (root / "open.txt").read_bytes() == b"yes"


def test_s3_down_during_listing_is_eio_then_recovers(s3, bucket, mount_factory, faults):
    # one fresh directory per phase, below parents listed beforehand (listing ahead only
    # goes one level down, so none of r/d, h/d, w/d is listed before its phase)
    upload(s3, bucket, {f"{phase}/d/f.txt": b"x" for phase in "rhw"})
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"(opendir|lookup|getattr|readdir) .* failed: EIO")
    root = m.path(bucket)
    assert sorted(os.listdir(root)) == ["h", "r", "w"]
    faults.reset(method="GET", path=LISTING)                       # connections reset
    began = time.monotonic()
    assert errno_of(lambda: os.listdir(root / "r" / "d")) == errno.EIO
    faults.figures["reset_seconds_to_eio"] = round(time.monotonic() - began, 1)
    assert time.monotonic() - began < 30
    faults.clear()
    assert os.listdir(root / "r" / "d") == ["f.txt"]
    faults.hang(method="GET", path=LISTING)                        # black hole
    began = time.monotonic()
    assert errno_of(lambda: os.listdir(root / "h" / "d")) == errno.EIO
    faults.figures["hang_seconds_to_eio"] = round(time.monotonic() - began, 1)
    assert time.monotonic() - began < 30                           # bounded, not forever
    hung = faults.injected["hang"]
    thread, out = in_thread(lambda: os.listdir(root / "w" / "d"))   # ... and recovery
    deadline = time.monotonic() + 30  # generous: on a loaded machine the request is slow to go out
    while faults.injected["hang"] == hung:                          # its listing is held
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    faults.clear()                                                  # before its retries run out
    thread.join(30)
    assert out == {"value": ["f.txt"]}
    assert os.listdir(root / "h" / "d") == ["f.txt"]


def test_s3_down_during_read_ahead_is_eio_or_correct_then_recovers(s3, bucket, mount_factory,
                                                                  faults):
    data = os.urandom(64 << 20)
    upload(s3, bucket, {"large.bin": data})
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"read .*large.bin failed: EIO")
    path = m.path(bucket, "large.bin")
    got = bytearray()
    with open(path, "rb", buffering=0) as fh:
        got += fh.read(4 << 20)                                    # read-ahead starts
        down = faults.reset(method="GET", path=OBJECT)
        try:
            while chunk := fh.read(1 << 20):
                got += chunk
        except OSError as exc:
            assert exc.errno == errno.EIO
        assert bytes(got) == data[:len(got)]                       # what came was right
    assert down.hits > 0 and len(got) < len(data)
    faults.clear()
    assert sha(read_file(path)) == sha(data)
    # a hang while reading ahead: the read waits, and finishes once S3 answers again
    faults.hang(method="GET", path=OBJECT)
    m2 = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint, name="m2")
    thread, out = in_thread(lambda: read_file(m2.path(bucket, "large.bin")))
    time.sleep(1.0)
    faults.clear()
    thread.join(60)
    assert "value" in out and sha(out["value"]) == sha(data), out.get("error")


def test_s3_down_during_multipart_upload_recovers_exactly(s3, bucket, mount_factory, faults):
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"unreachable|offline|retrying|UploadPart|failed")
    root = m.path(bucket)
    os.listdir(root)
    payload = os.urandom((24 << 20) + 3)
    down = faults.reset(method="PUT", path=r"partNumber=")       # every part upload reset
    (root / "big.bin").write_bytes(payload)                         # returns: write-back
    assert (root / "big.bin").read_bytes() == payload              # readable meanwhile
    deadline = time.monotonic() + 30
    while down.hits < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert down.hits >= 2
    assert sync(m.mountpoint, timeout=2).returncode != 0            # not in S3 yet
    hung = faults.hang(method="PUT", part=2)                       # then: part 2 hangs
    faults.rules.remove(down)
    deadline = time.monotonic() + 30
    while hung.hits < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hung.hits >= 1
    faults.clear()                                                  # S3 is back
    assert sync(m.mountpoint, timeout=90).returncode == 0
    assert body(s3, bucket, "big.bin") == payload
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # none left over


def test_a_slow_trickle_ends_in_eio_in_bounded_time(s3, bucket, mount_factory, faults):
    data = os.urandom(2 << 20)
    upload(s3, bucket, {"slow.bin": data})
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"read .*slow.bin failed: EIO")
    root = m.path(bucket)
    os.listdir(root)
    trickle = faults.trickle(rate=1024, method="GET", path=OBJECT)
    began = time.monotonic()
    assert errno_of(lambda: read_file(root / "slow.bin")) == errno.EIO
    faults.figures = {"seconds_to_eio": round(time.monotonic() - began, 1)}
    assert time.monotonic() - began < 30
    assert trickle.hits >= 2
    faults.clear()
    assert read_file(root / "slow.bin") == data


def test_writes_during_an_upload_storm_land_exactly_once(s3, bucket, mount_factory, faults):
    """20% of PUTs and POSTs fail, half of them after S3 acted (the answer is lost): every
    file lands once, byte-exact: no conflict copies, no multipart upload left over."""
    s3.put_object(Bucket=bucket, Key="out/old.txt", Body=b"old")
    m = mount_factory("--source", f"s3://{bucket}", *FAST, endpoint=faults.endpoint)
    m.expect_log(r"unreachable|offline|retrying|already holds")
    root = m.path(bucket)
    os.listdir(root / "out")
    rules = [faults.slowdown(method=method, probability=0.1, after=after)
             for method in ("PUT", "POST") for after in (False, True)]
    expected = {"out/old.txt": b"old, then new"}
    (root / "out" / "old.txt").write_bytes(expected["out/old.txt"])   # If-Match overwrite

    def writer(n: int) -> None:
        for i, size in enumerate([10, 300_000, (12 << 20) + n]):
            data = os.urandom(size)
            (root / "out" / f"w{n}-{i}.bin").write_bytes(data)
            expected[f"out/w{n}-{i}.bin"] = data

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sync(m.mountpoint, timeout=90).returncode == 0
    assert sum(r.hits for r in rules) >= 3, faults.injected
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(expected)      # exactly once each
    for key, data in expected.items():
        assert body(s3, bucket, key) == data, key
    # A create whose answer was lost leaves an upload nobody knows the id of: aborted when
    # S3's Initiated times place it within the retried create (SeaweedFS, AWS), else left
    # to the lifecycle rule (moto stamps every upload 2010-11-10), as another client's
    # upload of the key must never be aborted (s3.py _abort_lost_creates).
    lost_posts = next(r for r in rules if r.method == "POST" and r.after).hits
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) <= lost_posts
    faults.figures = {"files": len(expected), "bytes_verified": sum(map(len, expected.values()))}
