"""Many open handles on a huge directory keep the daemon's memory bounded (issue 13).

opendir of a bucket directory took a snapshot of its whole listing (~460 bytes per
entry), so any user who could open a 1M-key directory a hundred times held tens of GB.
Here a 100,000-entry listing (stored and fresh: S3 is not listed), read once through
the mount, is opened by 30 readers at once, each reading one getdents buffer, then three of them
read to the end interleaved: the daemon's peak RSS grows by a bounded amount (the
snapshots took ~46 MB per handle, 1.4 GB in all), every reader sees every name once,
and another file is served meanwhile.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from s3fuse.cache.meta import MetaStore
from s3fuse.model import Entry
from s3fuse.tree.bucket.keys import BucketKeys

pytestmark = pytest.mark.mount

ENTRIES = 100_000
HANDLES = 30
#: Peak RSS growth allowed while the handles are open (one chunk and a few checkpoint
#: names each; the rest is readdir traffic and Python's allocator slack). The inode
#: table readdirplus fills (~55 MiB for these names) is filled before, by one reader.
GROWTH_MIB = 16


def name(i: int) -> str:
    return f"part-{i:06d}-5f0c2a8e-3b1d-4c6e-9a7f-{i:012d}.parquet"


def hwm_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024


def test_open_handles_on_a_huge_directory_keep_memory_bounded(s3, bucket, mount_factory,
                                                              tmp_path: Path):
    s3.put_object(Bucket=bucket, Key="big/real", Body=b"r")
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"small")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    meta = MetaStore(cache / "meta.sqlite")
    now = time.time()
    meta.replace_listing(BucketKeys(bucket, "").ns_id, "big",
                         (Entry(name(i), False, 123, 1, "e", now) for i in range(ENTRIES)), now)
    meta.close()
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "3600", cache_dir=cache)
    big = m.path(bucket, "big")
    assert m.path(bucket, "small.txt").read_bytes() == b"small"
    with os.scandir(big) as first:  # the inodes readdirplus hands the kernel: not per handle
        assert sum(1 for _ in first) == ENTRIES
    before = hwm_mib(m.pid)

    readers = [os.scandir(big) for _ in range(HANDLES)]
    try:
        firsts = [next(r).name for r in readers]
        assert firsts == [name(0)] * HANDLES
        assert m.path(bucket, "small.txt").read_bytes() == b"small"  # served meanwhile
        seen: list[list[str]] = [[first] for first in firsts[:3]]
        done = [False] * 3
        while not all(done):  # three readers to the end, a few entries each in turn
            for i in range(3):
                for _ in range(500):
                    entry = next(readers[i], None)
                    if entry is None:
                        done[i] = True
                        break
                    seen[i].append(entry.name)
        grown = hwm_mib(m.pid) - before
    finally:
        for r in readers:
            r.close()
    expected = [name(i) for i in range(ENTRIES)]
    for names in seen:
        assert sorted(names) == expected  # each name once (scandir's order is readdir's)
    assert grown < GROWTH_MIB, f"peak RSS grew {grown:.0f} MiB with {HANDLES} handles open"
