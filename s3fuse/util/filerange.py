"""A byte range of an open file as a seekable, read-only stream: a part's request body.

A multipart upload sent each part as bytes read whole from the staging file first: 4
parts of 8 MiB in flight held 32 MiB, and a 64 MiB `cp` took the daemon to a peak RSS of
100 MiB. Streamed from the file (which the page cache holds anyway), a part in flight
costs the buffers botocore reads it through (1 MiB to sign it, 16 KiB chunks to send it).
"""
from __future__ import annotations

import errno
import io
import os
from typing import Union


class SourceReadError(OSError):
    """The file a body is read from failed: a local error, not S3's (botocore's own
    network errors are OSErrors too, so this type is what tells them apart)."""


class FileRange(io.RawIOBase):
    """Bytes [offset, offset + length) of the open file `fd` (not closed here), read on
    demand; positions count from `offset`. Blocking: use from worker threads."""

    def __init__(self, fd: int, offset: int, length: int):
        super().__init__()
        self._fd, self._start, self.length = fd, offset, length
        self._pos = 0
        #: The error reading the file met, if any: botocore reports one met while sending
        #: as a failed connection, which it is not (S3Store.upload_part raises this instead)
        self.failed: SourceReadError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        if base + pos < 0:
            raise ValueError(f"negative seek position {base + pos}")
        self._pos = base + pos
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self.length - self._pos)
        want = left if size is None or size < 0 else min(size, left)
        try:
            data = os.pread(self._fd, want, self._start + self._pos) if want else b""
        except OSError as exc:
            self.failed = SourceReadError(exc.errno, f"reading the file to upload: {exc.strerror}")
            raise self.failed from None
        if len(data) != want:
            self.failed = SourceReadError(errno.EIO, f"file ended {want - len(data)} bytes before "
                                                     "the end of the range being uploaded")
            raise self.failed
        self._pos += want
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read()


#: What a part's body may be: bytes in memory, or a range of a file streamed from disk
PartBody = Union[bytes, bytearray, memoryview, FileRange]


def body_length(body: PartBody) -> int:
    return body.length if isinstance(body, FileRange) else len(body)


def body_bytes(body: PartBody) -> bytes:
    """All of `body`, in memory (a FileRange read from its start)."""
    if isinstance(body, FileRange):
        body.seek(0)
        return body.read()
    return bytes(body)
