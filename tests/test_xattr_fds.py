"""xattr queries through the real mount hold no file open: 10,000 `getfattr -d` on a file
whose upload is pending leave the daemon's fd count flat (each used to open the pending
version's staging file for user.s3fuse.cached and never close it)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procs import wait_until
from tests.test_write_mount import body, sync

pytestmark = [pytest.mark.mount, pytest.mark.timeout(300)]

QUERIES = 10_000
PER_PROCESS = 1_000  # file arguments per getfattr: seconds, not minutes, of process starts


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def getfattr_dump(path: str, times: int) -> str:
    done = subprocess.run(["getfattr", "-d", *[path] * times], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_getfattr_on_a_pending_upload_leaves_the_fd_count_flat(s3, bucket, mount_factory, faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint)
    m.expect_log(r"unreachable|offline|retrying|timed out")
    held = faults.hang(method="PUT", path=r"/pending\.txt")
    path = m.path(bucket, "pending.txt")
    path.write_bytes(b"not in S3 yet")
    assert wait_until(lambda: held.hits >= 1, 30)  # the upload is sent and held
    first = getfattr_dump(str(path), 10)          # warm: lookups, lazily made state
    assert 'user.s3fuse.cached="1"' in first and 'user.s3fuse.pinned="0"' in first
    before = open_fds(m.pid)
    for _ in range(QUERIES // PER_PROCESS):
        out = getfattr_dump(str(path), PER_PROCESS)
        assert out.count('user.s3fuse.cached="1"') == PER_PROCESS
    after = open_fds(m.pid)
    assert after - before <= 5, f"{after - before} more fds open after {QUERIES} getfattr -d"
    faults.clear()                                 # the upload lands
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "pending.txt") == b"not in S3 yet"
