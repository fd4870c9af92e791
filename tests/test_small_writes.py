"""Writes in small pieces through the real mount (upload/localfile.py, the tail): what
`tar -x`, `curl -o` and line-buffered programs do. The bytes gathered in memory must be
what every reader sees at once, through the same handle or another, and what S3 gets."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from tests.test_write_mount import body, sync

pytestmark = pytest.mark.mount

KiB = 1 << 10


def test_small_writes_read_back_at_once_and_reach_s3(s3, bucket, mount_factory):
    m = mount_factory("--source", f"s3://{bucket}")
    path = m.path(bucket, "log.txt")
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    other = None
    try:
        for n in range(600):                                   # ~2.4 MiB in 4 KiB pieces
            piece = f"{n:06d}".encode() * 682 + b"\n" * 4
            assert os.write(fd, piece) == len(piece)
            expected += piece
            if n == 10:
                other = os.open(path, os.O_RDONLY)             # a second handle, meanwhile
            if n % 97 == 0:                                    # the newest bytes, then
                assert os.pread(fd, 4 * KiB, len(expected) - 4 * KiB) == expected[-4 * KiB:]
                assert os.pread(fd, 64 * KiB, 0) == expected[:64 * KiB]  # the oldest ones
        assert other is not None
        assert os.pread(other, len(expected) + 1, 0) == expected  # disk and memory at once
        assert os.fstat(fd).st_size == len(expected)
        os.ftruncate(fd, 5000)                                 # the tail goes first
        assert os.pwrite(fd, b"END", 5000) == 3
        expected = expected[:5000] + b"END"
        assert os.pread(fd, 10_000, 0) == expected
    finally:
        os.close(fd)
        if other is not None:
            os.close(other)
    assert path.read_bytes() == bytes(expected)
    assert sync(m.mountpoint).returncode == 0 and body(s3, bucket, "log.txt") == expected


def test_tar_extracts_members_written_in_10_KiB_pieces(s3, bucket, mount_factory, tmp_path):
    members = {f"d/m{n}.bin": os.urandom(n * 300 * KiB + 123) for n in range(1, 6)}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    m = mount_factory("--source", f"s3://{bucket}")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(m.path(bucket))], check=True,
                   timeout=60)
    for name, data in members.items():
        assert m.path(bucket, name).read_bytes() == data
    assert sync(m.mountpoint).returncode == 0
    for name, data in members.items():
        assert body(s3, bucket, name) == data
