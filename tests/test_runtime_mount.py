"""The supervised runtime through a real mount: a background task that fails (a bug, a
full cache disk) is handled by its kind's policy and shown by `s3fuse status`; the mount
keeps serving. Tests wait on the idle query, never on a guessed sleep."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from s3fuse.upload.queue import WORKERS
from tests import test_disk_full
from tests.support.mount import Mount
from tests.test_pin_cache import s3fuse
from tests.test_write_mount import body

pytestmark = pytest.mark.mount
MiB = 1 << 20
FAILURES = r"background .* failed \(|Traceback"
small_disk = test_disk_full.small_disk


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


def failing(backend: Any, kinds: str) -> dict[str, str]:
    """The daemon's environment with the first task of each of `kinds` failing."""
    return {**backend.env(), "S3FUSE_TEST_TASK_FAILURE": kinds}


def jobs(m: Mount) -> list[dict[str, Any]]:
    return json.loads(os.getxattr(m.mountpoint, "user.s3fuse.jobs"))


def serving(m: Mount, path: Path, data: bytes) -> bool:
    assert m.proc is not None
    return m.proc.poll() is None and os.path.ismount(m.mountpoint) and path.read_bytes() == data


def test_failing_background_tasks_leave_the_mount_serving_and_show_in_status(
        s3, bucket, backend, mount_factory):
    s3.put_object(Bucket=bucket, Key="a/one/x.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="a/two/y.txt", Body=b"y")
    data = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="data.bin", Body=data)
    m = mount_factory("--source", f"s3://{bucket}",
                      env=failing(backend, "upload-worker,upload-sync,cache-write,list-ahead"))
    m.expect_log(FAILURES)
    root = m.path(bucket)
    assert sorted(os.listdir(root / "a")) == ["one", "two"]        # lists one/ and two/ ahead
    assert (root / "data.bin").read_bytes() == data                # then writes it to the cache
    (root / "out.txt").write_bytes(b"written while a worker restarts")
    m.assert_idle()
    assert body(s3, bucket, "out.txt") == b"written while a worker restarts"
    tasks = m.status()["supervisor"]
    actions = {f["kind"]: f["action"] for f in tasks["recent_failures"]}
    assert actions == {"upload-worker": "restarting it", "upload-sync": "restarting it",
                       "cache-write": "dropped", "list-ahead": "dropped"}
    worker = tasks["kinds"]["upload-worker"]
    assert worker["policy"] == "restart" and worker["running"] + worker["restarting"] == WORKERS
    assert all(k["state"] == "ok" for k in tasks["kinds"].values())  # one failure each
    text = s3fuse("status", str(m.mountpoint), env=m.env)
    assert text.returncode == 0, text.stderr
    assert "upload-worker failed (restarting it): InjectedFailure" in text.stdout
    assert "cache-write failed (dropped)" in text.stdout
    assert serving(m, root / "data.bin", data)
    assert sorted(os.listdir(root / "a" / "one")) == ["x.txt"]


def test_a_crashing_pin_is_marked_failed_and_the_next_pin_succeeds(s3, bucket, backend, mount_factory):
    s3.put_object(Bucket=bucket, Key="keep/f.bin", Body=b"f" * 1000)
    m = mount_factory("--source", f"s3://{bucket}", env=failing(backend, "pin"))
    m.expect_log(FAILURES)
    keep = m.path(bucket, "keep")
    res = s3fuse("pin", str(keep), env=m.env)
    assert res.returncode == 1
    assert "crashed (InjectedFailure)" in res.stderr
    status = m.status()
    assert status["pins"] == [{"path": f"{bucket}/keep", "state": "incomplete"}]
    assert status["supervisor"]["kinds"]["pin"]["state"] == "failed"
    assert "[FAILED: pin]" in s3fuse("status", str(m.mountpoint), env=m.env).stdout
    res = s3fuse("pin", str(keep), env=m.env)                    # not injected a second time
    assert res.returncode == 0, res.stderr
    status = m.status()
    assert status["pins"] == [{"path": f"{bucket}/keep", "state": "complete"}]
    assert status["supervisor"]["kinds"]["pin"]["state"] == "ok"
    assert serving(m, keep / "f.bin", b"f" * 1000)


@pytest.mark.timeout(180)
def test_a_pin_that_fills_the_cache_disk_fails_and_the_mount_stays(s3, bucket, small_disk,
                                                                   mount_factory):
    bodies = {f"big/{n}.bin": os.urandom(12 * MiB) for n in range(4)}
    first = {f"first/{n}.bin": os.urandom(14 * MiB) for n in range(2)}
    for key, data in {**bodies, **first}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"still here")
    m = mount_factory("--source", f"s3://{bucket}", cache_dir=small_disk / "cache")
    m.expect_log(r"cannot write to the block cache|pin of .* failed|No space left|disk is full"
                 r"|is not recorded|reserve")
    # 28 MiB pinned first: the 48 MiB pin of big/ passes the check made before it starts
    # (pinned data might be its own) and fills the disk on the way
    assert s3fuse("pin", str(m.path(bucket, "first")), env=m.env).returncode == 0
    res = s3fuse("pin", str(m.path(bucket, "big")), env=m.env)
    assert res.returncode == 1, res.stderr
    assert "ENOSPC" in res.stderr
    job, = [j for j in jobs(m) if j["path"] == f"{bucket}/big"]
    assert job["state"] == "failed"
    failed = {line.split(":")[0] for line in job["failures"]}
    pinned = {f"{bucket}/{key}" for key in bodies} - failed
    assert failed and all("ENOSPC" in line for line in job["failures"])  # each file accounted
    assert f"{len(pinned)} of 4 files" in res.stderr
    for path in pinned:                                    # and what it says is pinned, is
        assert os.getxattr(m.path(*path.split("/")), "user.s3fuse.cached") == b"1"
    assert m.status()["pins"] == [{"path": f"{bucket}/big", "state": "incomplete"},
                                  {"path": f"{bucket}/first", "state": "complete"}]
    assert m.wait_idle(30)["tasks"] == {}                           # the job is over
    assert serving(m, m.path(bucket, "small.txt"), b"still here")
    assert m.path(bucket, "big", "3.bin").read_bytes() == bodies["big/3.bin"]  # served uncached
