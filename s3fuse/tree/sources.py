"""The ready-made handles namespaces hand out: an object's bytes and a directory's listing.

One job: serve what a namespace opened, so each namespace does not write its own.
ObjectSource reads one version of an S3 object (or a virtual one, through a loader)
via the block reader; SliceSource serves such a virtual object from the cached blocks of
the object it is a range of; SnapshotDir serves a small directory listing taken at opendir,
with readdir offsets that index the snapshot and so stay stable.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

from ..data.reader import BlockReader, Loader, ReadState
from ..errors import CorruptData, NotFound, StaleObject
from ..model import Entry, ObjectRef, Ref

log = logging.getLogger(__name__)


class SnapshotDir:
    """A directory listing taken at opendir, as (ref, entry) pairs: offsets index the
    snapshot, so they stay stable however the remote side changes while it is read.
    For small listings only (the root's names, a test's): a bucket directory is paged
    from the store instead (tree/bucket/paged.py)."""

    def __init__(self, items: Sequence[tuple[Ref, Entry]]):
        self._items = items

    async def page(self, start: int, limit: int,
                   attrs: bool = True) -> list[tuple[int, Ref, Entry]]:
        end = min(start + limit, len(self._items))
        return [(i + 1, *self._items[i]) for i in range(start, end)]


class ObjectSource:
    """An S3 object (or a virtual one, with a loader) served through the block reader."""

    def __init__(self, reader: BlockReader, ref: ObjectRef, loader: Loader | None = None,
                 changed: Callable[[], None] | None = None):
        self.reader = reader
        self.ref = ref
        self.size = ref.size
        self.version = ref.etag
        self._loader = loader
        self._changed = changed  # S3 holds another version (or none): the namespace is told
        self._state = ReadState()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """StaleObject (ESTALE) once S3 holds another version; with `changed` (a bucket's
        file), also once it holds none: a removed object's 404 was ENOENT, no errno for a
        read (a manifest's entry whose object is gone stays ENOENT: the manifest says it
        is there)."""
        try:
            return await self.reader.read(self.ref, offset, size, self._state, self._loader)
        except (StaleObject, NotFound) as exc:
            if self._changed is None:
                raise
            self._changed()
            if isinstance(exc, NotFound):
                raise StaleObject(f"{self.ref.uri}: removed from S3 since it was opened") from None
            raise

    async def fsync(self) -> None:
        """Nothing to make durable: these bytes are S3's."""

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        await self.reader.pin(self.ref, self._loader, keep, progress)

    async def close(self) -> None:
        """Nothing held: the block cache owns the bytes read."""


class SliceSource(ObjectSource):
    """A virtual object that is a plain byte range of another (a member of a plain tar),
    read from that object's blocks where they are already cached: indexing the tar
    fetched them, so its members cost no request and no second copy on disk. Pinning
    keeps the virtual object itself (what `s3fuse pin` holds for offline use)."""

    def __init__(self, reader: BlockReader, ref: ObjectRef, loader: Loader,
                 whole: ObjectRef, offset: int):
        super().__init__(reader, ref, loader)
        self._whole = whole
        self._offset = offset

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """The member's bytes; CorruptData (EIO) when the archive ends before them, since
        a member is never read short (an index that placed it past the end is wrong)."""
        size = min(size, self.size - offset)
        if size <= 0:
            return b""
        data = await self.reader.read(self._whole, self._offset + offset, size, self._state)
        if len(data) != size:
            raise CorruptData(f"{self._whole.uri} ends inside member {self.ref.key!r}: got "
                              f"{len(data)} of {size} bytes at member offset {offset}")
        return data
