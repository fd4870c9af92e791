"""Open handles on files whose newest bytes are local (being written, or not uploaded yet)."""
from __future__ import annotations

from typing import Callable

from ..errors import InvalidArgument
from ..upload.localfile import LocalFile
from ..upload.writeback import StagedFile, WriteBack


class LocalSource:
    """A FileSource over a LocalFile (shared by every handle of the key) or a staged file.

    Every handle on a LocalFile counts as one of its users, so the staging file stays
    open until the last handle is released; `close` is that release (and the flush of
    a writer that did not flush)."""

    def __init__(self, target: LocalFile | StagedFile, writes: WriteBack, writable: bool = False):
        self.target = target
        self.writes = writes
        self.writable = writable

    @property
    def size(self) -> int:
        return self.target.size

    @property
    def version(self) -> str:
        return self.target.version

    async def read(self, offset: int, size: int) -> bytes:
        return await self.target.read(offset, size)

    async def cached(self) -> bool:
        return True  # the bytes are on this disk

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        progress(self.size)  # local already; the block cache gets them once uploaded and read

    def _local(self) -> LocalFile:
        if not self.writable or not isinstance(self.target, LocalFile):
            raise InvalidArgument("handle not open for writing")  # EBADF-like: EINVAL
        return self.target

    async def write(self, offset: int, data: bytes) -> int:
        return await self._local().write(offset, data)

    async def truncate(self, size: int) -> None:
        await self._local().truncate(size)

    async def flush(self) -> None:
        """Only a writer's close uploads (a reader closing must not cut a version)."""
        if self.writable and isinstance(self.target, LocalFile):
            await self.writes.flush(self.target)

    async def fsync(self) -> None:
        if isinstance(self.target, LocalFile):
            await self.writes.fsync(self.target)

    async def close(self) -> None:
        if isinstance(self.target, LocalFile):
            await self.writes.release(self.target, writer=self.writable)
        else:
            self.target.close()
