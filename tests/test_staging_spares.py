"""Staging files made ahead for new files: handed out, taken without a system call on the
loop, and never left behind (closed and deleted when unused, swept quietly after a crash)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from s3fuse.upload.staging import SPARES, Staging
from tests.test_write_mount import body, sync

pytestmark = pytest.mark.mount


def test_spares_are_handed_out_taken_and_dropped(tmp_path: Path):
    staging = Staging(tmp_path / "staging")
    assert staging.wants_spares()
    staging.make_spares()
    made = staging.ids()
    assert len(made) == SPARES and not staging.wants_spares()
    assert all(stat.S_IMODE((staging.directory / f).stat().st_mode) == 0o600 for f in made)
    taken, unused = staging.new_id(), staging.new_id()
    assert {taken, unused} <= made
    fd = staging.make(taken)  # made ahead: the same file, no new one
    try:
        assert os.fstat(fd).st_ino == (staging.directory / taken).stat().st_ino
        assert staging.ids() == made
    finally:
        os.close(fd)
    staging.discard(unused)  # handed out, never written: closed and deleted
    assert unused not in staging.ids()
    staging.drop_spares()  # a clean stop: only the one taken is left
    assert staging.ids() == {taken}
    fresh = staging.new_id()  # none left: an id still to create, made by `make`
    os.close(staging.make(fresh))
    assert staging.ids() == {taken, fresh}


def test_no_spare_is_made_when_the_disk_refuses(tmp_path: Path):
    staging = Staging(tmp_path / "staging")
    staging.directory.chmod(0o500)  # (root ignores modes: the test then only checks no error)
    try:
        staging.make_spares()
    finally:
        staging.directory.chmod(0o700)
    assert len(staging.ids()) in (0, SPARES)


def test_a_mount_leaves_no_spare_behind_and_a_crash_is_swept_quietly(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    staging = m.cache_dir / "staging"
    for n in range(3):
        m.path(bucket, f"f{n}.txt").write_bytes(b"x" * n)
    assert sync(m.mountpoint).returncode == 0
    assert len(list(staging.iterdir())) >= SPARES // 2  # made ahead
    m.stop()
    assert list(staging.iterdir()) == []  # uploaded files deleted, spares dropped
    again = mount_factory("--source", f"s3://{bucket}", name="again", cache_dir=m.cache_dir)
    again.path(bucket, "g.txt").write_bytes(b"g")
    assert sync(again.mountpoint).returncode == 0
    # idle: g.txt's staging file is deleted by the sync pass after its upload; a crash
    # before that pass ends leaves it, and the next start removes it with a warning (its
    # bytes are in S3: "uploaded just before a crash"), which CI once hit here
    again.assert_idle()
    again.kill()  # a crash leaves the spares
    assert list(staging.iterdir())
    third = mount_factory("--source", f"s3://{bucket}", name="third", cache_dir=m.cache_dir)
    assert third.path(bucket, "g.txt").read_bytes() == b"g" == body(s3, bucket, "g.txt")
    third.wait_idle()
    assert "empty staging file(s)" in third.log()  # swept, with no warning (the fixture checks)
    assert "no upload needs (writes never closed" not in third.log()


def test_a_copy_of_a_sparse_staging_file_keeps_its_holes(tmp_path: Path) -> None:
    """A file reopened for writing while its version waits for upload is copied: a sparse
    one (`truncate -s 512M`, then `>>`) was copied dense, 512 MiB of zeros on the disk."""
    staging = Staging(tmp_path / "staging")
    source_id, source = staging.create()
    with open(source, "r+b") as fh:
        fh.truncate(64 << 20)
        fh.seek(8 << 20)
        fh.write(b"data in the middle")
        fh.seek((64 << 20) - 3)
        fh.write(b"end")
    with open(source, "rb") as fh:
        copy_id, copy = staging.copy_fd(fh.fileno())
    assert copy.read_bytes() == source.read_bytes()
    assert os.stat(copy).st_blocks * 512 < 1 << 20  # two pages of data, not 64 MiB
    with open(source, "r+b") as fh:
        fh.truncate(32 << 20)                         # a hole at the end
    with open(source, "rb") as fh:
        _, tail_hole = staging.copy_fd(fh.fileno())
    assert os.path.getsize(tail_hole) == 32 << 20 and tail_hole.read_bytes() == source.read_bytes()
