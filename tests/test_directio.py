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


WRITE_SIZES = [0, 5, 100_000, 1 << 20, (1 << 20) + 1, (8 << 20) - 7, 8 << 20]


def _buffer_at(size: int, misalignment: int) -> memoryview:
    """A writable buffer of `size` random bytes starting `misalignment` bytes past a page
    (a GET body's bytearray starts 16 bytes past one)."""
    backing = bytearray(size + 2 * directio.ALIGN)
    start = (-directio._address(backing)) % directio.ALIGN + misalignment
    view = memoryview(backing)[start:start + size]
    view[:] = os.urandom(size)
    return view


@pytest.mark.parametrize("misalignment", [0, 16, 4095])
@pytest.mark.parametrize("size", WRITE_SIZES)
def test_write_new_writes_head_and_data(directory: Path, size: int, misalignment: int):
    data = _buffer_at(size, misalignment)
    head_size = 161
    offset = directio.data_offset(head_size, data)
    assert offset >= head_size
    if size >= directio.DIRECT_WRITE_MIN:  # file and memory aligned alike
        assert (offset - directio._address(data)) % directio.ALIGN == 0
    head = os.urandom(offset)
    path = directory / "block"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert directio.write_new(fd, head, data) == offset + size
    finally:
        os.close(fd)
    assert path.read_bytes() == head + data


def test_big_blocks_are_written_past_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On a file system that takes O_DIRECT, the aligned middle of a big block goes in one
    O_DIRECT pwritev; bytes read-only in memory (no address to align to) go buffered."""
    real_pwritev = os.pwritev
    direct: list[bool] = []

    def pwritev(fd: int, parts: list[memoryview], offset: int) -> int:
        direct.append(_is_direct(fd))
        return real_pwritev(fd, parts, offset)
    monkeypatch.setattr(directio.os, "pwritev", pwritev)
    data = _buffer_at(3 << 20, 16)
    for source in (data, bytes(data)):
        head = os.urandom(directio.data_offset(200, source))
        path = tmp_path / f"block{len(direct)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            directio.write_new(fd, head, source)
        finally:
            os.close(fd)
        assert path.read_bytes() == head + data
    assert direct == [True, False]


def test_an_o_direct_write_refused_or_short_goes_buffered(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """EINVAL from the O_DIRECT write (an alignment the device does not take) or a short
    one: the whole file is written again buffered, at its exact size."""
    real_pwritev = os.pwritev
    data = _buffer_at((2 << 20) + 100, 16)
    head = os.urandom(directio.data_offset(300, data))
    for failure in ("EINVAL", "short"):
        def pwritev(fd: int, parts: list[memoryview], offset: int) -> int:
            if not _is_direct(fd):
                return real_pwritev(fd, parts, offset)
            if failure == "EINVAL":
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwritev(fd, parts[:1], offset)
        monkeypatch.setattr(directio.os, "pwritev", pwritev)
        path = tmp_path / failure
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            assert directio.write_new(fd, head, data) == len(head) + len(data)
        finally:
            os.close(fd)
        assert path.read_bytes() == head + data
