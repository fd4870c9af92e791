"""Open handles on files whose newest bytes are local (being written, or not uploaded yet).

Part of the bucket namespace (see tree/bucket/__init__.py): the handles `open`,
`create` and `open_write` return when the write-back layer holds the newest bytes,
so reads see unflushed writes and the staging file lives as long as its handles.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from ...errors import NotFound
from ...upload.localfile import LocalFile
from ...upload.writeback import StagedFile, WriteBack
from ..contract import FileHandle

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
        self._held: int | None = None  # the upload its last flush holds (writeback.py)

    async def write(self, offset: int, data: bytes, append: bool = False) -> int:
        return await self.target.write(offset, data, append)

    async def truncate(self, size: int) -> None:
        await self.target.truncate(size)

    @property
    def dropped(self) -> bool:
        return self.target.failed_version

    async def flush(self) -> None:
        """Only a writer's close uploads (a reader closing must not cut a version); the
        upload waits for this handle's release (a forked child's close flushes too)."""
        self._held = await self.writes.flush(self.target, hold=True, held=self._held)

    async def close(self) -> None:
        await self.writes.release(self.target, writer=True, held=self._held)


class FollowingReader:
    """A read handle that follows this mount's own changes of its file, as a local file
    system's does: `tail -f` of a log that `>>` appends to, a viewer of a file an editor
    saves. It reads one version (S3's, or a pending upload's snapshot); once a handle of
    this mount opens the key for writing, the write-back layer marks it `stale`
    (writeback.py, `follow`), and its next read opens the newest version (the writer's
    shared local file, a pending upload, or the object it became) and reads that.

    A handle on the shared local file itself needs none of this: writes go into it. A
    change made elsewhere (another machine) is not followed: such a handle keeps its
    version, and a read of bytes S3 no longer has fails with ESTALE, as documented."""

    def __init__(self, source: FileHandle, writes: WriteBack, bucket: str, key: str,
                 reopen: Callable[[str], Awaitable[FileHandle]]):
        self.source = source
        self.writes = writes
        self.bucket = bucket
        self.key = key
        self.stale = False
        self._reopen = reopen
        self._reading = 0  # reads in flight (the kernel sends several at once)
        self._switching = trio.Lock()  # one switch at a time, so the newest stays current
        self._retired: list[FileHandle] = []  # sources left, closed once no read is on them
        self._taken: FileHandle | None = None  # the next source, given by `take`
        writes.follow(self)

    @property
    def size(self) -> int:
        """The size of what the next read reads (a file handed over by `take`: fstat of a
        handle whose name is gone showed the old size, and the kernel padded reads to it)."""
        return (self._taken or self.source).size

    @property
    def version(self) -> str:
        return self.source.version

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.stale:
            async with self._switching:
                if self.stale:
                    await self._switch()
        self._reading += 1
        try:
            return await self.source.read(offset, size)
        finally:
            self._reading -= 1
            if not self._reading and self._retired:
                await self._close_retired()

    async def _switch(self) -> None:
        """Read the newest version from now on (the key's, as renames carried it)."""
        self.stale = False
        newer, self._taken = self._taken, None
        if newer is None:
            try:
                newer = await self._reopen(self.key)
            except NotFound:  # gone meanwhile (removed, renamed away): read what it read
                self.writes.unfollow(self)
                return
        self._retired.append(self.source)
        self.source = newer
        if not self._reading:
            await self._close_retired()
        if isinstance(newer, LocalReader) and isinstance(newer.target, LocalFile):
            self.writes.unfollow(self)  # the shared file: later writes land in it

    def take(self, local: LocalFile) -> None:
        """The file loses its name while a writer has changed it (an unlink, a rename over
        it): read that writer's local file from the next read on, as the handle of a
        local file would (its name is no way back to these bytes any more)."""
        local.adopt()  # released when this handle closes, or when another replaces it
        if self._taken is not None:
            self._retired.append(self._taken)
        self._taken = LocalReader(local, self.writes)
        self.stale = True

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for source in retired:
            await source.close()

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        await self.source.pin(keep, progress)

    async def fsync(self) -> None:
        await self.source.fsync()

    async def close(self) -> None:
        self.writes.unfollow(self)
        self._retired.append(self.source)
        if self._taken is not None:
            self._retired.append(self._taken)
            self._taken = None
        await self._close_retired()
