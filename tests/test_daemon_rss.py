"""The daemon's peak RSS stays bounded through a representative workload (issue 16).

It was ~198 MiB over `make bench`, most of it the 256 MiB sequential read: 64 MiB of
blocks kept in memory behind the reader, every GET's body held twice (a list of chunks,
then their join), blocks fetched while others waited for the disk, and boto3 with
every AWS endpoint and model docstring loaded (docs/memory.md). Here: `ls -l` of a
directory of 2,000 objects, then a 64 MiB object read through (cold: from S3) and
checked; VmHWM, the peak since the daemon started, must stay under the bound.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

FILES = 2000
BIG = 64 << 20
#: docs/memory.md: ~52 MiB mounted and idle, a sequential reader's 32 MiB window and the
#: blocks waiting for the disk cache, ~2 MiB for the listing and inodes of 2,000 entries.
#: Measured 90-99 MiB (moto and SeaweedFS); 149-155 MiB before issue 16.
BOUND_MIB = 110


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_peak_rss_of_a_listing_and_a_large_read_stays_bounded(s3, bucket, mount_factory):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"dir/f{i:05d}", Body=b"x"),
                      range(FILES)))
    data = os.urandom(BIG)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    m = mount_factory("--source", f"s3://{bucket}")
    listing = subprocess.run(["ls", "-l", str(m.path(bucket, "dir"))], capture_output=True,
                             text=True, check=True).stdout
    assert len(listing.splitlines()) == FILES + 1  # "total N" first
    digest = hashlib.sha256()
    with open(m.path(bucket, "big.bin"), "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    peak = hwm_mib(m.pid)
    assert peak < BOUND_MIB, f"daemon peak RSS {peak:.0f} MiB (bound {BOUND_MIB} MiB)"
