"""FileRange: a range of a file as the seekable stream botocore sends a part from."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import pytest

from s3fuse.util.filerange import FileRange, SourceReadError, body_bytes, body_length

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    opened = os.open(path, os.O_RDONLY)
    yield opened
    os.close(opened)


def test_reads_its_range_only(fd: int) -> None:
    part = FileRange(fd, 1000, 3000)
    assert part.read(100) == DATA[1000:1100]
    assert part.tell() == 100
    assert part.read() == DATA[1100:4000]
    assert part.read(10) == b"" and part.read() == b""


def test_seeks_within_the_range_as_botocore_does(fd: int) -> None:
    """botocore finds the length by seeking to the end, and rewinds to where it started
    to sign the body and again to send it."""
    part = FileRange(fd, 500, 2000)
    assert part.seek(0, io.SEEK_END) == 2000
    assert part.seek(-10, io.SEEK_CUR) == 1990 and part.read() == DATA[2490:2500]
    part.seek(0)
    chunks = iter(lambda: part.read(700), b"")
    assert b"".join(chunks) == DATA[500:2500]
    with pytest.raises(ValueError):
        part.seek(-1)
    assert part.readable() and part.seekable() and not part.writable()


def test_readinto_fills_what_is_left(fd: int) -> None:
    part = FileRange(fd, 10_000, 240)
    buffer = bytearray(1000)
    assert part.readinto(buffer) == 240 and buffer[:240] == DATA[10_000:]
    assert part.readinto(buffer) == 0


def test_a_file_shorter_than_the_range_fails_and_says_so(fd: int) -> None:
    part = FileRange(fd, 10_000, 1000)
    with pytest.raises(OSError, match="760 bytes before the end") as failed:
        part.read()
    assert part.failed is failed.value


def test_helpers_take_either_kind_of_body(fd: int) -> None:
    part = FileRange(fd, 0, 100)
    part.read(50)
    assert body_bytes(part) == DATA[:100] and body_length(part) == 100
    assert body_bytes(memoryview(DATA)[:5]) == DATA[:5] and body_length(b"abc") == 3
