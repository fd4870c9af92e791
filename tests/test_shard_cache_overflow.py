"""An xz shard whose tar is larger than the cache: members are served from passes that
never go back, so reading them costs one download of the archive, not one per read.

Before, every member read that missed the cache decompressed the whole archive again
(a full GET of it each time) and then failed with EIO, its first blocks evicted by its
last. Bounds are on bytes fetched from S3 (the fault proxy sees every GET), not on time.
"""
from __future__ import annotations

import errno
import functools
import json
import lzma
import os
import random
import re
from pathlib import Path

import pytest

from s3fuse.archive.limits import Limits
from s3fuse.cache.blocks import BlockCache
from s3fuse.model import ObjectRef
from s3fuse.tree.streams import RESTART_INTERVAL, StreamPasses, StreamTooBig
from tests.support.archives import random_tar

MEMBERS = 24
MEMBER = 4 << 20          # 96 MiB of tar, incompressible: the archive is as large
CACHE = "64M"             # the smallest cache allowed: the stream is 1.5 times it


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """The fault proxy (which counts the bytes fetched) sits in front of moto."""
    return moto_backend


@functools.lru_cache(maxsize=1)
def shard() -> tuple[bytes, dict[str, bytes]]:
    tar, members = random_tar(13, MEMBERS, MEMBER)
    return lzma.compress(tar, preset=0), members


def fetched(faults, key: str, size: int) -> int:  # type: ignore[no-untyped-def]
    """Bytes of `key` GET through the proxy (a GET without Range counts as all of it)."""
    total = 0
    for seen in faults.seen:
        if seen.method != "GET" or key not in seen.path:
            continue
        ranged = {k.lower(): v for k, v in seen.headers.items()}.get("range", "")
        found = re.fullmatch(r"bytes=(\d+)-(\d+)", ranged)
        total += int(found[2]) - int(found[1]) + 1 if found else size
    return total


@pytest.fixture
def mounted(s3, bucket, faults, mount_factory):  # type: ignore[no-untyped-def]
    archive, members = shard()
    s3.put_object(Bucket=bucket, Key="ml/s/shard.tar.xz", Body=archive)
    line = {"kind": "shard", "archive_key": "ml/s/shard.tar.xz", "compression": "xz"}
    s3.put_object(Bucket=bucket, Key="ml/s/manifest.jsonl", Body=json.dumps(line).encode() + b"\n")
    m = mount_factory("--manifest", f"s=s3://{bucket}/ml/s/manifest.jsonl", "--cache-size", CACHE,
                      endpoint=faults.endpoint)
    top = m.path("s", "shard.tar.xz")
    assert sorted(os.listdir(top)) == sorted(members)   # indexed (one pass of its own)
    faults.seen.clear()
    return m, top, archive, members


@pytest.mark.mount
def test_members_in_archive_order_cost_one_download(mounted, faults):  # type: ignore[no-untyped-def]
    m, top, archive, members = mounted
    for name, data in members.items():
        assert (top / name).read_bytes() == data, name
    assert fetched(faults, "shard.tar.xz", len(archive)) <= 1.1 * len(archive)


@pytest.mark.mount
def test_random_members_never_refetch_the_archive_per_read(mounted, faults):  # type: ignore[no-untyped-def]
    m, top, archive, members = mounted
    m.expect_log(r"failed: ENOBUFS \(s3://\S+ decompresses to \d+ MiB, over half the cache")
    names = sorted(members)
    rng = random.Random(7)
    served, refused = 0, 0
    for name in (names[rng.randrange(MEMBERS)] for _ in range(12)):
        try:
            assert (top / name).read_bytes() == members[name], name
            served += 1
        except OSError as exc:
            assert exc.errno == errno.ENOBUFS, exc
            refused += 1
    assert served and refused
    # one pass, plus at most one more should the 12 reads outlast RESTART_INTERVAL
    assert fetched(faults, "shard.tar.xz", len(archive)) <= 2.2 * len(archive)
    assert m.proc.poll() is None


class CountingSource:
    """An in-memory xz archive that counts the bytes read from it."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)
        self.read_bytes = 0

    def read(self, offset: int, size: int) -> bytes:
        self.read_bytes += size
        return self.data[offset:offset + size]


def passes_over(tmp_path: Path, tar_size: int, cache_blocks: int):  # type: ignore[no-untyped-def]
    now = [0.0]
    cache = BlockCache(tmp_path / "blocks", cache_blocks * 4096, tmp_path / "pinned")
    passes = StreamPasses(cache, 4096, Limits(), clock=lambda: now[0])
    plain = random.Random(1).randbytes(tar_size)
    source = CountingSource(lzma.compress(plain, preset=0))
    archive = ObjectRef("b", "a.tar.xz", "e", source.size)
    stream = ObjectRef("b", "a.tar.xz#", "e", tar_size)

    def read(start: int, stop: int) -> bytes:
        return passes.read(archive, source, stream, "xz", start, stop)
    return read, plain, source, now


def test_a_stream_within_half_the_cache_restarts_whenever_needed(tmp_path):  # type: ignore[no-untyped-def]
    read, plain, source, _now = passes_over(tmp_path, 64 << 10, cache_blocks=1024)
    assert read(60000, 61000) == plain[60000:61000]
    assert read(100, 5000) == plain[100:5000]           # cached by the pass
    assert read(65000, 65536) == plain[65000:]          # the tail, past the end of the pass
    assert source.read_bytes == source.size             # one pass


def test_an_over_cache_stream_restarts_once_per_interval(tmp_path):  # type: ignore[no-untyped-def]
    read, plain, source, now = passes_over(tmp_path, 1 << 20, cache_blocks=16)
    assert read(500_000, 501_000) == plain[500_000:501_000]
    assert read(900_000, 910_000) == plain[900_000:910_000]     # ahead: the same pass goes on
    with pytest.raises(StreamTooBig) as info:
        read(0, 10)                                             # behind, evicted: refused
    assert info.value.errno == errno.ENOBUFS
    assert source.read_bytes <= source.size
    now[0] += RESTART_INTERVAL
    assert read(0, 10) == plain[:10]                            # a new pass, once
    assert read(900_000, 900_010) == plain[900_000:900_010]
    with pytest.raises(StreamTooBig):
        read(5000, 5010)


def test_a_pass_that_s3_failed_under_is_dropped_not_served_short(tmp_path):  # type: ignore[no-untyped-def]
    read, plain, source, _now = passes_over(tmp_path, 1 << 20, cache_blocks=16)
    real = source.read

    def offline(offset: int, size: int) -> bytes:
        raise OSError("S3 unreachable")
    source.read = offline
    with pytest.raises(OSError):
        read(500_000, 500_010)
    source.read = real
    assert read(500_000, 500_010) == plain[500_000:500_010]    # a new pass, not refused
