"""Block files read and written past the page cache: every byte, whatever the size, on
disk (tmp_path) and on tmpfs, with O_DIRECT and without (a file system that refuses it)."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.cache import directio
from s3fuse.cache.directio import WRITE_CHUNK, read_file, write_file

SIZES = [0, 3, 4096, 4096 * 3 + 33, WRITE_CHUNK, WRITE_CHUNK + 1, (8 << 20) + 33]


@pytest.fixture(params=["disk", "tmpfs", "no O_DIRECT"])
def directory(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    if request.param == "no O_DIRECT":  # as FUSE mounts, and tmpfs before Linux 6.6
        real_fcntl = fcntl.fcntl

        def refusing(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_fcntl(fd, cmd, arg)
        monkeypatch.setattr(directio.fcntl, "fcntl", refusing)
    if request.param != "tmpfs":
        yield tmp_path
        return
    shm = Path("/dev/shm") / f"s3fuse-test-directio-{os.getpid()}"
    shm.mkdir()
    try:
        yield shm
    finally:
        for path in shm.iterdir():
            path.unlink()
        shm.rmdir()


def _is_direct(fd: int) -> bool:
    return bool(os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL))


@pytest.mark.parametrize("size", SIZES)
def test_read_file_reads_every_byte(directory: Path, size: int):
    path = directory / "block"
    data = os.urandom(size)
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert read_file(f.fileno()) == data


@pytest.mark.parametrize("size", SIZES)
def test_write_file_writes_every_byte(directory: Path, size: int):
    """Written as a header and a body, as a block is; the size padded for O_DIRECT is cut back."""
    path = directory / "block"
    data = os.urandom(size)
    assert write_file(str(path), [data[:33], memoryview(data)[33:]]) == size
    assert path.read_bytes() == data


def test_write_file_never_overwrites(tmp_path: Path):
    path = tmp_path / "block"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_file(str(path), [b"new"])
    assert path.read_bytes() == b"old"


def test_o_direct_refused_by_a_read_or_a_write_goes_buffered(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """EINVAL from an O_DIRECT read or write (an alignment the device does not take) turns
    O_DIRECT off for that file and the same bytes are read or written buffered."""
    data = os.urandom(3 * 4096 + 5)
    real_preadv, real_pwrite = os.preadv, os.pwrite
    refused = []

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if _is_direct(fd):
            refused.append("read")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if _is_direct(fd):
            refused.append("write")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio.os, "preadv", preadv)
    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    path = tmp_path / "block"
    assert write_file(str(path), [data]) == len(data)
    with open(path, "rb") as f:
        assert read_file(f.fileno()) == data
    assert refused == ["write", "read"]


def test_writes_one_after_another_share_one_aligned_buffer(tmp_path: Path):
    for i in range(3):
        write_file(str(tmp_path / f"block{i}"), [os.urandom(WRITE_CHUNK + 7)])
    assert len(directio._pool) <= 1
