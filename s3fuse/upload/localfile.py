"""One key being written: its staging file, open read-write while handles use it.

Every open handle of a key shares one LocalFile, so readers and writers of the same
file see the same bytes. A staging file handed to the upload queue is immutable:
the next write after a submit first moves to a copy (copy-on-write), so the queue
uploads exactly what was closed. Disk I/O runs in threads (`limiter`).
"""
from __future__ import annotations

import errno
import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from ..cache.overlay import Change
from .journal import UNKNOWN, Expected
from .staging import Staging, start_writeback

T = TypeVar("T")

#: Start writeback of a file being written every so many bytes, so dirty pages never pile
#: up and the fsync at close waits for the last few MiB only.
WRITEBACK_STEP = 8 << 20


class LocalFile:
    def __init__(self, staging: Staging, staging_id: str, path: Path, *, bucket: str, key: str,
                 expected: Expected, change: Change, limiter: trio.CapacityLimiter):
        self.staging = staging
        self.staging_id = staging_id
        self.bucket = bucket
        self.key = key
        self.expected = expected      # what S3 held when the file was opened (If-Match)
        self.change = change          # the overlay entry: size and mtime as listings show them
        self.limiter = limiter
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.change.size = self.size
        self.dirty = False            # changed since the last submit
        self.frozen = False           # the staging file was submitted: copy before writing
        self.unlinked = False         # removed while open: never uploaded
        self.error: int | None = None  # errno of a failed write/truncate, for the next flush
        self.users = 0                # open handles
        self.job: int | None = None   # the last submitted upload
        self.revision = 0             # bumped by every change (the page-cache version)
        self.lock = trio.Lock()       # writes, truncates and submits one at a time
        self._written_back = 0        # writeback started up to here (sequential writers)

    @property
    def version(self) -> str:
        return f"local:{self.staging_id}:{self.revision}"

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.limiter)

    async def _writable(self) -> None:
        """Copy-on-write: the submitted staging file belongs to the queue now."""
        if not self.frozen:
            return
        copy_id, path = await self._io(self.staging.copy_fd, self.fd)
        old = self.fd
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.close(old)
        self.staging_id = copy_id
        self.frozen = False
        self.expected = UNKNOWN  # based on the version just queued (the journal chains them)

    def _changed(self) -> None:
        self.dirty = True
        self.revision += 1
        self.change.size = self.size
        self.change.mtime_ns = time.time_ns()

    async def write(self, offset: int, data: bytes) -> int:
        async with self.lock:
            try:
                await self._writable()
                written = await self._io(self._pwrite, data, offset)
            except OSError as exc:  # ENOSPC: reported now, and again by close (see WriteBack.flush)
                self.error = exc.errno or errno.EIO
                raise
            self.size = max(self.size, offset + written)
            self._changed()
        return written

    def _pwrite(self, data: bytes, offset: int) -> int:
        """pwrite, and every WRITEBACK_STEP bytes start writing them to disk (blocking)."""
        written = os.pwrite(self.fd, data, offset)
        end = offset + written
        if end - self._written_back >= WRITEBACK_STEP:
            start = min(self._written_back, offset)
            start_writeback(self.fd, start, end - start)
            self._written_back = end
        return written

    async def truncate(self, size: int) -> None:
        async with self.lock:
            try:
                await self._writable()
                await self._io(os.ftruncate, self.fd, size)
            except OSError as exc:
                self.error = exc.errno or errno.EIO
                raise
            self.size = size
            self._changed()

    async def read(self, offset: int, size: int) -> bytes:
        return await self._io(os.pread, self.fd, size, offset)

    async def fill_from(self, read: Callable[[int, int], Any], size: int, chunk: int = 8 << 20) -> None:
        """Copy the current content (from S3 or the cache) into the staging file."""
        offset = 0
        while offset < size:
            data = await read(offset, min(chunk, size - offset))
            if not data:
                raise OSError(f"s3://{self.bucket}/{self.key}: short read at {offset} of {size}")
            await self._io(os.pwrite, self.fd, bytes(data), offset)
            offset += len(data)
        self.size = size
        self.change.size = size

    def submitted(self, job: int) -> None:
        self.job = job
        self.dirty = False
        self.frozen = True

    def close(self) -> None:
        os.close(self.fd)
