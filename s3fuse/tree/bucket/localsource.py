"""Open handles on files whose newest bytes are local (being written, or not uploaded yet).

Part of the bucket namespace (see tree/bucket/__init__.py): the handles `open`,
`create` and `open_write` return when the write-back layer holds the newest bytes,
so reads see unflushed writes and the staging file lives as long as its handles.
"""
from __future__ import annotations

import logging
from typing import Callable

from ...upload.localfile import LocalFile
from ...upload.writeback import StagedFile, WriteBack

log = logging.getLogger(__name__)


class LocalReader:
    """A read handle over a LocalFile (shared by every handle of the key) or a staged file.

    Every handle on a LocalFile counts as one of its users, so the staging file stays
    open until the last handle is released; `close` is that release. A staged file (a
    pending upload's bytes) is an fd of its own, closed with the handle."""

    def __init__(self, target: LocalFile | StagedFile, writes: WriteBack):
        self.target = target
        self.writes = writes

    @property
    def size(self) -> int:
        return self.target.size

    @property
    def version(self) -> str:
        return self.target.version

    async def read(self, offset: int, size: int) -> bytes:
        return await self.target.read(offset, size)

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        progress(self.size)  # local already; the block cache gets them once uploaded and read

    async def fsync(self) -> None:
        if isinstance(self.target, LocalFile):  # another handle's writes: durable now
            await self.writes.fsync(self.target)

    async def close(self) -> None:
        if isinstance(self.target, LocalFile):
            await self.writes.release(self.target, writer=False)
        else:
            self.target.close()


class LocalWriter(LocalReader):
    """A write handle over a LocalFile: its close (or flush) queues the new version."""

    target: LocalFile

    def __init__(self, target: LocalFile, writes: WriteBack):
        super().__init__(target, writes)

    async def write(self, offset: int, data: bytes) -> int:
        return await self.target.write(offset, data)

    async def truncate(self, size: int) -> None:
        await self.target.truncate(size)

    async def flush(self) -> None:
        """Only a writer's close uploads (a reader closing must not cut a version)."""
        await self.writes.flush(self.target)

    async def close(self) -> None:
        await self.writes.release(self.target, writer=True)
