"""Concurrency through the real mount: many readers, versions changing under readers,
parallel writers, and listings while read-ahead keeps S3 busy."""
from __future__ import annotations

import errno
import hashlib
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.report import record
from tests.test_faults import read_file, sha
from tests.test_write_mount import body, sync

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def test_many_readers_of_one_large_object_get_identical_correct_bytes(s3, bucket, mount_factory):
    data = os.urandom((48 << 20) + 12345)
    s3.put_object(Bucket=bucket, Key="shared.bin", Body=data)
    m = mount_factory("--source", f"s3://{bucket}")
    path = m.path(bucket, "shared.bin")
    start = threading.Barrier(8)

    def reader(n: int) -> str:
        start.wait()
        if n % 2:                       # half read it backwards in 3 MiB steps: random reads
            size, parts = len(data), []
            with open(path, "rb", buffering=0) as fh:
                for off in reversed(range(0, size, 3 << 20)):
                    parts.append(os.pread(fh.fileno(), 3 << 20, off))
            return sha(b"".join(reversed(parts)))
        return sha(read_file(path, 1 << 17))

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(reader, range(8)))
    assert digests == [sha(data)] * 8
    record("concurrency/many_readers", {"readers": 8, "bytes_verified": 8 * len(data)})


def test_readers_never_see_a_blend_of_versions(s3, bucket, mount_factory):
    """The object is replaced in S3 again and again while threads read it whole through
    the mount: each read is one version, or fails with ESTALE (or EIO): never a mix."""
    versions = [bytes([i]) * (12 << 20) + os.urandom(1 << 20) for i in range(12)]
    versions = [v[: len(v) - (i % 3) * (1 << 20)] for i, v in enumerate(versions)]  # sizes differ
    known = {sha(v): i for i, v in enumerate(versions)}
    s3.put_object(Bucket=bucket, Key="moving.bin", Body=versions[0])
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "0.3")
    m.expect_log(r"read .*moving.bin failed: (ESTALE|EIO)|open .*moving.bin failed: ESTALE")
    path = m.path(bucket, "moving.bin")
    stop = threading.Event()
    outcomes: dict[str, int] = {"ok": 0, "ESTALE": 0, "EIO": 0}
    seen: set[int] = set()
    blends: list[str] = []
    lock = threading.Lock()

    def reader() -> None:
        while not stop.is_set():
            try:
                got = read_file(path, 1 << 18)
            except OSError as exc:
                assert exc.errno in (errno.ESTALE, errno.EIO), exc
                with lock:
                    outcomes[errno.errorcode[exc.errno]] += 1
                continue
            with lock:
                if sha(got) in known:
                    outcomes["ok"] += 1
                    seen.add(known[sha(got)])
                else:
                    blends.append(f"{len(got)} bytes, starts {got[:1]!r} ends {got[-1 << 20:][:1]!r}")

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for v in versions[1:]:
        time.sleep(0.5)
        s3.put_object(Bucket=bucket, Key="moving.bin", Body=v)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert not blends, (blends[:5], outcomes)
    assert outcomes["ok"] >= 8 and len(seen) >= 3, (outcomes, seen)
    record("concurrency/versions", {**outcomes, "versions_put": len(versions),
                                    "versions_read_whole": len(seen), "blends": 0})
    time.sleep(0.5)
    assert read_file(path) == versions[-1]


def test_parallel_writers_to_different_files_all_land_byte_exact(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    os.mkdir(root / "out")
    sizes = [0, 1, 4096, 100_000, 1 << 20, (9 << 20) + 7]
    expected: dict[str, bytes] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i, size in enumerate(sizes):
            data = os.urandom(size)
            name = f"w{n}-{i}.bin"
            with open(root / "out" / name, "wb") as fh:
                for off in range(0, size, 300_000):             # several writes per file
                    fh.write(data[off:off + 300_000])
            with lock:
                expected[f"out/{name}"] = data

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    assert sync(m.mountpoint, timeout=90).returncode == 0
    for key, data in expected.items():
        assert hashlib.sha256(body(s3, bucket, key)).digest() == hashlib.sha256(data).digest(), key
    assert sorted(os.listdir(root / "out")) == sorted(k.split("/")[1] for k in expected)
    record("concurrency/parallel_writers", {"writers": 8, "files": len(expected),
                                            "bytes_verified": sum(map(len, expected.values()))})


def test_listing_stays_responsive_during_heavy_read_ahead(s3, bucket, mount_factory):
    large = {f"large/{i}.bin": os.urandom(48 << 20) for i in range(6)}
    for key, data in large.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    for d in range(30):
        s3.put_object(Bucket=bucket, Key=f"dirs/d{d:02d}/file.txt", Body=b"x")
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    os.listdir(root / "large")
    digests: dict[str, str] = {}

    def read(key: str) -> None:
        digests[key] = sha(read_file(root / key))

    threads = [threading.Thread(target=read, args=(k,), daemon=True) for k in large]
    for t in threads:
        t.start()
    latencies = []
    time.sleep(0.05)  # the reads' first blocks are on their way
    for d in range(30):                                         # each needs a ListObjectsV2
        if all(not t.is_alive() for t in threads):
            break
        began = time.monotonic()
        assert os.listdir(root / "dirs" / f"d{d:02d}") == ["file.txt"]
        latencies.append(time.monotonic() - began)
        time.sleep(0.05)
    for t in threads:
        t.join(90)
    assert digests == {k: sha(v) for k, v in large.items()}
    assert len(latencies) >= 3, "the reads ended before the listings could be timed"
    assert max(latencies) < 3.0 and statistics.median(latencies) < 0.5, latencies
    record("concurrency/listing_during_read_ahead", {
        "listings": len(latencies), "median_ms": round(statistics.median(latencies) * 1000),
        "max_ms": round(max(latencies) * 1000)})


def test_an_append_lands_at_the_end_while_the_kernel_holds_an_older_size(s3, bucket,
                                                                        mount_factory):
    """While a reader of version 1 is open, the object grew in S3: the reader keeps
    version 1 (never cut short or shown a blend), and since the sixteenth session the
    path shows version 2 on an inode of its own, as if renamed over (it showed version 1's
    size for as long as the reader stayed open). An O_APPEND write opened then must land
    after version 2's last byte, where the daemon's end is; `stat` sees the result, and the
    reader, on the replaced file, reads nothing more."""
    v1 = b"one\n" * 5
    v2 = v1 + b"remote\n"
    s3.put_object(Bucket=bucket, Key="grows.log", Body=v1)
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "0.3")
    path = m.path(bucket, "grows.log")
    with open(path, "rb", buffering=0) as reader:
        assert reader.read() == v1
        s3.put_object(Bucket=bucket, Key="grows.log", Body=v2)
        time.sleep(0.5)
        assert os.stat(path).st_size == len(v2)
        with open(path, "ab", buffering=0) as appender:
            appender.write(b"local\n")
        assert reader.read() == b""
        assert os.stat(path).st_size == len(v2) + 6
    assert path.read_bytes() == v2 + b"local\n"
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "grows.log") == v2 + b"local\n"


def test_a_reader_opened_while_an_append_opens_reads_every_line(s3, bucket, mount_factory):
    """A reader opened in the same instant as an appender (`tail -f` started beside a
    running logger) reads every appended byte. Its open used to pick the pending version
    while the appender's open was still copying it, after the appender had marked the
    reader handles to follow: it read that old version while the kernel's size grew, and
    the kernel filled the rest of the page with zeros (32 of 150 tries)."""
    m = mount_factory("--source", f"s3://{bucket}")
    root = m.path(bucket)
    failures = []
    for attempt in range(60):
        path = root / f"race{attempt % 5}.log"
        path.write_bytes(b"start\n")
        want, got = b"start\n", []
        opened, done = threading.Event(), threading.Event()

        def read_along() -> None:
            with open(path, "rb", buffering=0) as reader:
                opened.set()
                while not done.is_set():
                    chunk = reader.read(65536)
                    if chunk:
                        got.append(chunk)
                    else:
                        time.sleep(0.002)
                time.sleep(0.05)
                while chunk := reader.read(65536):
                    got.append(chunk)

        reading = threading.Thread(target=read_along)
        reading.start()
        for i in range(3):
            line = b"line %d %s\n" % (i, b"y" * (1000 * i + 100))
            with open(path, "ab", buffering=0) as appender:
                appender.write(line)
            want += line
        done.set()
        reading.join(30)
        if b"".join(got) != want:
            failures.append(attempt)
    assert not failures, f"{len(failures)} of 60 readers missed or garbled bytes"
    assert sync(m.mountpoint).returncode == 0
