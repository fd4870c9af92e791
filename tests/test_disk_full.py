"""Disk full: the cache directory on a 64 MiB tmpfs, filled to the last page by a ballast
file beside it.

The promise (docs/writing.md, "Where the bytes are"): reads keep working (blocks that
cannot be cached are served uncached); a write that does not fit fails at once with
ENOSPC from write(2), not later at upload; the close of that file reports the error and
the failed version is not uploaded (S3 keeps what it had); everything closed before the
disk filled is still uploaded byte-exact once there is room; and the upload journal
(SQLite) running out of space answers ENOSPC and logs it, without killing the daemon.

Needs root (mount -t tmpfs); the tmpfs is always unmounted at teardown.
"""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.mount import Mount
from tests.support.procs import wait_until
from tests.test_write_mount import body, keys, sync

pytestmark = pytest.mark.mount

TMPFS_SIZE = 64 << 20


@pytest.fixture
def backend(moto_backend):  # type: ignore[no-untyped-def]
    return moto_backend


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (requested before mount_factory, so unmounted after the daemon)."""
    yield from tmpfs(tmp_path / "small-disk", TMPFS_SIZE)


def tmpfs(disk: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of `size` bytes at `disk`, yield it, and always unmount it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(disk)], check=True, capture_output=True)
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # never left behind
        assert not os.path.ismount(disk)


def fill(disk: Path) -> int:
    """Write a ballast file until the disk refuses a single page; returns its size."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for step in (1 << 20, 4096, 1):
            chunk = b"\0" * step
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return ballast.stat().st_size


def free(disk: Path) -> None:
    (disk / "ballast").unlink()


def staging_empty(m: Mount) -> None:
    """Staging files of finished uploads go at the queue's next sync pass (not at once):
    once the daemon is idle, no sync pass is due and none is left behind (the empty ones
    left are made ahead for new files: staging.SPARES)."""
    m.assert_idle()
    left = [f for f in (m.cache_dir / "staging").iterdir() if f.stat().st_size]
    assert not left, "staging files left behind"


def alive(m: Mount) -> bool:
    assert m.proc is not None
    return m.proc.poll() is None and os.path.ismount(m.mountpoint)


def write_until_full(path: Path, size: int) -> tuple[int, OSError | None, OSError | None]:
    """Write `size` bytes in 1 MiB writes; returns (bytes written, write error, close error)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, write_error, close_error = 0, None, None
    try:
        while written < size:
            written += os.write(fd, os.urandom(min(1 << 20, size - written)))
    except OSError as exc:
        write_error = exc
    try:
        os.close(fd)
    except OSError as exc:
        close_error = exc
    return written, write_error, close_error


@pytest.mark.timeout(120)
def test_reads_work_when_the_cache_disk_is_full(s3, bucket, small_disk, mount_factory):
    big = os.urandom(24 << 20)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    for n in range(20):
        s3.put_object(Bucket=bucket, Key=f"dir/{n:02d}.txt", Body=f"file {n}\n".encode())
    m = mount_factory("--source", f"s3://{bucket}", cache_dir=small_disk / "cache")
    m.expect_log(r"cannot write to the block cache|cache metadata|disk is full|No space left")
    root = m.path(bucket)
    assert os.listdir(root) == ["big.bin", "dir"] or sorted(os.listdir(root)) == ["big.bin", "dir"]
    # `dir` is listed ahead in the background: stored before the disk fills, then served
    # with the disk full (a refresh that cannot be stored keeps the stored listing)
    m.assert_idle()
    fill(small_disk)
    assert (root / "big.bin").read_bytes() == big                     # served uncached
    assert sorted(os.listdir(root / "dir")) == [f"{n:02d}.txt" for n in range(20)]
    assert (root / "dir" / "07.txt").read_bytes() == b"file 7\n"
    assert alive(m)
    free(small_disk)
    assert (root / "big.bin").read_bytes() == big


@pytest.mark.timeout(120)
def test_writes_fail_at_write_time_and_closed_files_survive(s3, bucket, small_disk,
                                                             mount_factory, faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint,
                      cache_dir=small_disk / "cache")
    m.expect_log(r"No space left|ENOSPC|disk is full|cannot write to the block cache")
    root = m.path(bucket)
    os.listdir(root)
    faults.hold(lambda method, path: method in ("PUT", "POST"))      # closed files stay staged
    small, large = os.urandom(1 << 20), os.urandom(12 << 20)
    (root / "small.txt").write_bytes(small)
    (root / "large.bin").write_bytes(large)
    s3.put_object(Bucket=bucket, Key="kept.txt", Body=b"S3 version")
    fill(small_disk)
    written, write_error, close_error = write_until_full(root / "new.bin", 32 << 20)
    assert write_error is not None and write_error.errno == errno.ENOSPC, write_error
    assert written < 1 << 20                                          # at write time
    assert close_error is not None and close_error.errno == errno.ENOSPC, close_error
    _, write_error, close_error = write_until_full(root / "kept.txt", 8 << 20)  # an overwrite
    assert write_error is not None and write_error.errno == errno.ENOSPC
    assert close_error is not None and close_error.errno == errno.ENOSPC
    assert alive(m)
    assert (root / "small.txt").read_bytes() == small                 # staged, readable
    assert (root / "large.bin").read_bytes() == large
    free(small_disk)
    faults.release()
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "small.txt") == small and body(s3, bucket, "large.bin") == large
    assert body(s3, bucket, "kept.txt") == b"S3 version"             # the failed version is not
    assert keys(s3, bucket) == {"small.txt", "large.bin", "kept.txt"}  # uploaded; no new.bin
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    staging_empty(m)
    (root / "after.txt").write_bytes(b"room again")                   # writes work again
    assert sync(m.mountpoint).returncode == 0 and body(s3, bucket, "after.txt") == b"room again"


@pytest.mark.timeout(120)
def test_full_journal_answers_enospc_and_the_daemon_lives(s3, bucket, small_disk, mount_factory,
                                                          faults):
    m = mount_factory("--source", f"s3://{bucket}", endpoint=faults.endpoint,
                      cache_dir=small_disk / "cache")
    m.expect_log(r"No space left|ENOSPC|disk is full|journal|not recorded in the stored listing")
    root = m.path(bucket)
    os.listdir(root)
    held = faults.hold(lambda method, path: method == "PUT")
    (root / "queued.txt").write_bytes(b"closed before the disk filled")
    assert held.wait(30)
    fd = os.open(root / "open.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"staged before the disk filled")
    fill(small_disk)
    with pytest.raises(OSError) as closing:                            # the journal row: no room
        os.close(fd)
    assert closing.value.errno == errno.ENOSPC
    faults.release()                 # queued.txt lands in S3; recording that needs the journal
    assert wait_until(lambda: "cannot record the upload" in m.log()      # refused (retried)
                      or not m.status()["uploads"]["files"], timeout=30)  # or it found room
    assert "queued.txt" in keys(s3, bucket)
    assert alive(m), m.log()[-3000:]
    assert os.listdir(root)
    assert "No space left" in m.log() or "disk is full" in m.log()
    free(small_disk)
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "queued.txt") == b"closed before the disk filled"
    assert keys(s3, bucket) == {"queued.txt"}                         # no conflict copy
    staging_empty(m)
    assert alive(m)


@pytest.mark.timeout(120)
def test_listings_with_a_full_disk(s3, bucket, small_disk, mount_factory):
    """Listings live in the cache's SQLite. With the disk full, a listed directory whose
    refresh cannot be stored is served from the stored listing; a never-listed one that
    does not fit answers ENOSPC (clean, logged, the daemon lives) until there is room."""
    for n in range(300):
        s3.put_object(Bucket=bucket, Key=f"many/{n:04d}-{'x' * 60}.txt", Body=b"x")
        s3.put_object(Bucket=bucket, Key=f"deep/er/more/{n:04d}-{'y' * 60}.txt", Body=b"y")
    m = mount_factory("--source", f"s3://{bucket}", "--metadata-ttl", "1",
                      cache_dir=small_disk / "cache")
    m.expect_log(r"cache metadata|disk is full|No space left|block cache|ENOSPC")
    root = m.path(bucket)
    assert sorted(os.listdir(root)) == ["deep", "many"]
    assert len(os.listdir(root / "many")) == 300
    fill(small_disk)
    time.sleep(1.5)                                                   # the TTL passed
    assert len(os.listdir(root / "many")) == 300                      # the stored listing
    assert "serving stored listings without refreshing them" in m.log()
    more = root / "deep" / "er" / "more"
    try:
        assert len(os.listdir(more)) == 300                           # if it fit after all
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    assert alive(m)
    free(small_disk)
    assert len(os.listdir(more)) == 300
    assert (more / f"0007-{'y' * 60}.txt").read_bytes() == b"y"


@pytest.mark.timeout(120)
def test_failed_mkdir_and_rename_leave_mount_and_s3_agreeing(s3, bucket, small_disk,
                                                             mount_factory):
    """On a full disk a mkdir answered ENOSPC and was listed all the same (never reaching
    S3), and a rename answered ENOSPC after its server-side copy: S3 held both names, the
    mount showed one. Now both fail before anything happened."""
    s3.put_object(Bucket=bucket, Key="exist.txt", Body=b"old content")
    m = mount_factory("--source", f"s3://{bucket}", cache_dir=small_disk / "cache")
    m.expect_log(r"No space left|ENOSPC|disk is full|reserve")
    root = m.path(bucket)
    assert os.listdir(root) == ["exist.txt"]
    fill(small_disk)
    with pytest.raises(OSError) as made:
        os.mkdir(root / "nd")
    assert made.value.errno == errno.ENOSPC
    assert os.listdir(root) == ["exist.txt"] and not (root / "nd").exists()
    with pytest.raises(OSError) as moved:
        os.rename(root / "exist.txt", root / "e2.txt")
    assert moved.value.errno == errno.ENOSPC
    assert keys(s3, bucket) == {"exist.txt"}
    free(small_disk)
    assert sync(m.mountpoint).returncode == 0
    assert keys(s3, bucket) == {"exist.txt"} and os.listdir(root) == ["exist.txt"]
    assert not [f for f in (m.cache_dir / "staging").iterdir() if f.stat().st_size]
    assert alive(m)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("room", [0, 1 << 20], ids=["full", "partly-written"])
def test_a_failed_overwrite_shows_the_s3_version_again(s3, bucket, small_disk, mount_factory,
                                                      room: int):
    """`cp` over an uploaded file fails with ENOSPC (at once, or after some bytes): S3
    keeps its version, and so must the mount. It showed the failed version's size (0, or
    the bytes written) until the metadata TTL after a `chmod`, and reads of a partly
    written one failed with EIO (a helper's finding)."""
    old = os.urandom(3 << 20)
    s3.put_object(Bucket=bucket, Key="kept.bin", Body=old)
    m = mount_factory("--source", f"s3://{bucket}", cache_dir=small_disk / "cache")
    m.expect_log(r"No space left|ENOSPC|disk is full|reserve|block cache")
    root = m.path(bucket)
    assert (root / "kept.bin").stat().st_size == len(old)
    fill(small_disk)
    if room:
        os.truncate(small_disk / "ballast", (small_disk / "ballast").stat().st_size - room)
    _, write_error, close_error = write_until_full(root / "kept.bin", 8 << 20)
    assert write_error is not None and write_error.errno == errno.ENOSPC, write_error
    assert close_error is not None and close_error.errno == errno.ENOSPC, close_error
    # the kernel hears of the dropped version at the release, which close(2) does not
    # wait for
    assert wait_until(lambda: (root / "kept.bin").stat().st_size == len(old), timeout=10)
    assert (root / "kept.bin").read_bytes() == old                    # served uncached
    try:
        os.chmod(root / "kept.bin", 0o600)  # journalled: may find no room
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    assert (root / "kept.bin").stat().st_size == len(old)
    free(small_disk)
    os.chmod(root / "kept.bin", 0o600)
    shown = os.stat(root / "kept.bin")
    assert (shown.st_size, stat.S_IMODE(shown.st_mode)) == (len(old), 0o600)
    assert (root / "kept.bin").read_bytes() == old
    assert sync(m.mountpoint).returncode == 0
    assert body(s3, bucket, "kept.bin") == old
    assert s3.head_object(Bucket=bucket, Key="kept.bin")["Metadata"]["mode"] == str(
        stat.S_IFREG | 0o600)
    assert alive(m)
