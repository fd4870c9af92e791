"""Writes survive outages, SIGKILL and hung uploads; conflicts, failures, SSE and the
read/write key split, all through the real mount in front of moto."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.test_write_mount import body, keys, sync

pytestmark = pytest.mark.mount


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    """Fault injection sits in front of moto (SeaweedFS checks signatures of the proxy's host)."""
    return moto_backend


def uploads(mountpoint: Path) -> dict:
    return json.loads(os.getxattr(str(mountpoint), "user.s3fuse.uploads"))


def kill(m) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the daemon, as a crash would, and clear its dead mount."""
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    subprocess.run(["fusermount3", "-uz", str(m.mountpoint)], capture_output=True)
    m.expect_log(r".*")


def test_offline_writes_are_uploaded_when_the_link_returns(s3, bucket, mount_factory, proxy):
    s3.put_object(Bucket=bucket, Key="docs/old.txt", Body=b"old")
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    root = m.path(bucket)
    assert os.listdir(root / "docs") == ["old.txt"]
    proxy.cut()
    (root / "docs" / "new.txt").write_bytes(b"written offline")
    os.mkdir(root / "offline-dir")
    (root / "offline-dir" / "inner.txt").write_bytes(b"inner")
    os.makedirs(root / "made" / "sub")               # a directory made offline moves offline:
    (root / "made" / "sub" / "a.txt").write_bytes(b"a")  # all of it is local (EHOSTUNREACH)
    os.rename(root / "made", root / "moved")
    os.unlink(root / "docs" / "old.txt")
    with open(root / "docs" / "synced.txt", "wb") as fh:     # fsync offline: durable locally
        fh.write(b"fsynced")
        os.fsync(fh.fileno())
    assert sorted(os.listdir(root / "docs")) == ["new.txt", "synced.txt"]
    assert (root / "offline-dir" / "inner.txt").read_bytes() == b"inner"
    queue = uploads(m.mountpoint)
    assert queue["files"] >= 5 and queue["online"] is False
    assert sync(m.mountpoint, timeout=1).returncode == 1     # cannot finish offline
    proxy.restore()
    assert sync(m.mountpoint).returncode == 0
    assert keys(s3, bucket) == {"docs/new.txt", "docs/synced.txt", "offline-dir/",
                                "offline-dir/inner.txt", "moved/", "moved/sub/",
                                "moved/sub/a.txt"}
    assert body(s3, bucket, "docs/new.txt") == b"written offline"
    m.expect_log(r"unreachable|offline")
    m.stop()
    proxy.cut()                                             # what we wrote is cached as read
    again = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="again",
                          cache_dir=m.cache_dir)
    again.expect_log(r"unreachable|offline")
    assert again.path(bucket, "docs", "new.txt").read_bytes() == b"written offline"
    assert again.path(bucket, "offline-dir", "inner.txt").read_bytes() == b"inner"


def test_sigkill_with_queued_uploads_then_remount_finishes_them(s3, bucket, mount_factory, proxy):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    root = m.path(bucket)
    os.listdir(root)
    proxy.cut()
    payload = os.urandom(3 << 20)
    (root / "a.bin").write_bytes(payload)
    (root / "b.txt").write_bytes(b"bee")
    os.mkdir(root / "d")
    kill(m)
    proxy.restore()
    again = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint, name="again",
                          cache_dir=m.cache_dir)
    assert {"a.bin", "b.txt", "d"} <= set(os.listdir(again.path(bucket)))  # shown at once
    assert again.path(bucket, "a.bin").read_bytes() == payload
    assert sync(again.mountpoint).returncode == 0
    assert body(s3, bucket, "a.bin") == payload and body(s3, bucket, "b.txt") == b"bee"
    assert "d/" in keys(s3, bucket)
    again.assert_idle()                         # the sync pass after the last upload
    assert not list((m.cache_dir / "staging").iterdir())     # nothing left behind
    again.expect_log(r"still to send|interrupted|unreachable|offline")


def test_hang_on_second_part_then_sigkill_leaves_no_partial_object(s3, bucket, mount_factory,
                                                                   faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint)
    held = faults.hold(lambda method, path: method == "PUT" and "partNumber=2" in path)
    payload = os.urandom(20 << 20)
    m.path(bucket, "big.bin").write_bytes(payload)
    assert held.wait(30), "part 2 was never sent"
    assert "big.bin" not in keys(s3, bucket)                 # no partial object, ever
    kill(m)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the crash left one
    faults.release()
    again = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint, name="again",
                          cache_dir=m.cache_dir)
    assert sync(again.mountpoint).returncode == 0
    assert body(s3, bucket, "big.bin") == payload
    again.assert_idle()                         # the start-up cleanup is done
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    again.expect_log(r"aborted|interrupted|still to send")


def test_conflict_keeps_both_versions(s3, bucket, mount_factory):
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"original")
    m = mount_factory("--source", f"s3://{bucket}")
    m.expect_log(r"changed in S3 since it was opened")
    path = m.path(bucket, "shared.txt")
    with open(path, "r+b") as fh:
        s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"someone else")  # meanwhile
        fh.seek(0, os.SEEK_END)
        fh.write(b" + mine")
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "shared.txt") == b"someone else"
    conflicts = [k for k in keys(s3, bucket) if k.startswith("shared.txt.s3fuse-conflict-")]
    assert len(conflicts) == 1 and body(s3, bucket, conflicts[0]) == b"original + mine"
    status = uploads(m.mountpoint)
    assert status["conflicts"][0]["conflict_uri"] == f"s3://{bucket}/{conflicts[0]}"


def test_permanent_failure_is_kept_reported_and_retried(s3, bucket, mount_factory, faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint)
    m.expect_log(r"failed and is kept")
    faults.fail(lambda method, path: method == "PUT", status=403)
    m.path(bucket, "denied.txt").write_bytes(b"keep me")
    result = sync(m.mountpoint)
    assert result.returncode == 1 and "denied.txt" in result.stderr
    assert m.path(bucket, "denied.txt").read_bytes() == b"keep me"   # still readable locally
    text = subprocess.run([sys.executable, "-m", "s3fuse", "status", str(m.mountpoint)],
                          capture_output=True, text=True).stdout
    assert "FAILED" in text and "denied.txt" in text
    faults.release()
    assert sync(m.mountpoint, "--retry").returncode == 0
    assert body(s3, bucket, "denied.txt") == b"keep me"


def test_sse_and_the_read_write_key_split(s3, bucket, mount_factory, faults, tmp_path):
    s3.put_object(Bucket=bucket, Key="in.txt", Body=b"input")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"S3_ENDPOINT={faults.endpoint}\n"
                       "S3_DOWNLOAD_ACCESS_KEY=READKEY\nS3_DOWNLOAD_SECRET_KEY=readsecret\n"
                       "S3_UPLOAD_ACCESS_KEY=WRITEKEY\nS3_UPLOAD_SECRET_KEY=writesecret\n")
    secrets.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    m = mount_factory("--source", f"s3://{bucket}", "--secrets-env", str(secrets),
                      "--sse", "AES256", "--addressing-style", "path", env=env)
    root = m.path(bucket)
    assert (root / "in.txt").read_bytes() == b"input"
    (root / "out.txt").write_bytes(b"output")
    (root / "big.bin").write_bytes(os.urandom(10 << 20))     # multipart
    os.unlink(root / "in.txt")
    assert sync(m.mountpoint).returncode == 0
    reads = [s for s in faults.seen if s.method in ("GET", "HEAD")]
    writes = [s for s in faults.seen if s.method in ("PUT", "POST", "DELETE")]
    assert reads and {s.access_key for s in reads} == {"READKEY"}
    assert writes and {s.access_key for s in writes} == {"WRITEKEY"}
    creating = [s for s in writes if s.method == "PUT" and "partNumber" not in s.path
                or s.method == "POST" and s.path.endswith("?uploads")]
    assert creating and all(s.headers.get("x-amz-server-side-encryption") == "AES256"
                            for s in creating)
    assert s3.head_object(Bucket=bucket, Key="out.txt")["ServerSideEncryption"] == "AES256"
    assert urlsplit(faults.endpoint).port


def test_umount_waits_for_uploads_and_sigterm_drain_times_out(s3, bucket, mount_factory, faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint)
    held = faults.hold(lambda method, path: method == "PUT")
    m.path(bucket, "slow.txt").write_bytes(b"slow")
    assert held.wait(30)
    umount = subprocess.Popen([sys.executable, "-m", "s3fuse", "umount", str(m.mountpoint)],
                              stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert umount.poll() is None and os.path.ismount(m.mountpoint)  # waiting for the upload
    faults.release()
    assert umount.wait(60) == 0
    assert "waiting for uploads" in umount.stderr.read()
    assert body(s3, bucket, "slow.txt") == b"slow"
    m.proc.wait(10)
    # SIGTERM with an upload that cannot finish: unmounts after --drain-timeout, keeps it
    second = mount_factory("--source", f"s3://{bucket}", "--drain-timeout", "2",
                           endpoint=faults.endpoint, name="second")
    second.expect_log(r"not done at unmount")
    faults.hold(lambda method, path: method == "PUT")
    second.path(bucket, "kept.txt").write_bytes(b"kept")
    began = time.monotonic()
    second.proc.send_signal(signal.SIGTERM)
    second.proc.wait(30)
    assert 1.5 < time.monotonic() - began < 5  # the drain's 2 s, not 5 s more for the stop
    assert "not done at unmount" in second.log()
    # the next start, S3 still silent: its cleanup of what the last one left (the condition
    # probe's scratch key, when that probe was held too) must not hold the unmount either
    faults.hold(lambda method, path: method in ("PUT", "DELETE"))
    held = mount_factory("--source", f"s3://{bucket}", "--drain-timeout", "2",
                         endpoint=faults.endpoint, name="held", cache_dir=second.cache_dir)
    held.expect_log(r"not done at unmount|still to send|interrupted|not deleted yet")
    time.sleep(1)
    began = time.monotonic()
    held.proc.send_signal(signal.SIGTERM)
    held.proc.wait(30)
    assert time.monotonic() - began < 5
    faults.release()
    third = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint, name="third",
                          cache_dir=second.cache_dir)
    third.expect_log(r"still to send|interrupted")
    assert sync(third.mountpoint).returncode == 0
    assert body(s3, bucket, "kept.txt") == b"kept"


def test_reopening_a_file_whose_upload_waits_edits_the_pending_version(s3, bucket, mount_factory,
                                                                       proxy):
    """r+ of a closed file not uploaded yet (offline): the edit starts from its local bytes."""
    m = mount_factory("--source", f"s3://{bucket}", endpoint=proxy.endpoint)
    root = m.path(bucket)
    os.listdir(root)
    proxy.cut()
    (root / "p.txt").write_bytes(b"first version")
    with open(root / "p.txt", "r+b") as fh:               # a copy of the pending staging file
        fh.seek(0, os.SEEK_END)
        fh.write(b", then more")
    assert (root / "p.txt").read_bytes() == b"first version, then more"
    proxy.restore()
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "p.txt") == b"first version, then more"
    m.expect_log(r"unreachable|offline")


def test_umount_with_a_failed_upload_says_what_stays_and_exits_1(s3, bucket, mount_factory,
                                                                  faults):
    """It exited 0 and said nothing: `s3fuse umount M && rm -rf CACHE` lost the only copy."""
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint)
    m.expect_log(r"failed and is kept|not done at unmount")
    faults.fail(lambda method, path: method == "PUT", status=403)
    m.path(bucket, "denied.txt").write_bytes(b"keep me")
    assert sync(m.mountpoint).returncode == 1
    done = subprocess.run([sys.executable, "-m", "s3fuse", "umount", str(m.mountpoint)],
                          env=m.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and not os.path.ismount(m.mountpoint)
    assert done.stderr.splitlines()[-1] == (
        f"s3fuse: unmounted, but 1 change(s) stay queued in {m.cache_dir} (1 failed for good: "
        "`s3fuse sync` lists them): the next mount with this cache dir sends them; keep it")
    faults.release()
    m.start()  # the next mount sends it once retried
    assert sync(m.mountpoint, "--retry").returncode == 0
    assert body(s3, bucket, "denied.txt") == b"keep me"
