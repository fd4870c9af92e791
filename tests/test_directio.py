"""Block files read past the page cache: every byte, whatever the size, on disk
(tmp_path) and on tmpfs, with O_DIRECT and without (a file system that refuses it)."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.cache import directio
from s3fuse.cache.directio import read_file

SIZES = [0, 3, 4096, 4096 * 3 + 33, 1 << 20, (1 << 20) + 1, (8 << 20) + 33]


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


def test_an_o_direct_read_refused_goes_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """EINVAL from an O_DIRECT read (an alignment the device does not take) turns O_DIRECT
    off for that file and the same bytes are read buffered."""
    data = os.urandom(3 * 4096 + 5)
    real_preadv = os.preadv
    refused = []

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if _is_direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(directio.os, "preadv", preadv)
    path = tmp_path / "block"
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert read_file(f.fileno()) == data
    assert refused == [0]
