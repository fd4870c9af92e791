"""The protocol every namespace (bucket, manifest, ...) implements.

A namespace names its nodes with opaque, hashable refs: a bucket uses relative
paths ("" is its top directory), a manifest uses the rowids of its SQLite index.
The FUSE layer maps inodes to (namespace, ref) and never needs to know what kind
of namespace answers. A namespace with `inode_base` set numbers its own inodes
(ino = base + ref*2 + is_dir), so a million-entry manifest needs no inode table.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

from ..data.reader import BlockReader, Loader, ReadState
from ..model import Entry, ObjectRef, Ref

log = logging.getLogger(__name__)

STATIC_SHIFT = 41
STATIC_START = 1 << STATIC_SHIFT


def static_base(ns_index: int) -> int:
    """The inode base of an indexed namespace (refs below 2**39; ino = base + 2*ref + is_dir)."""
    return (ns_index + 1) << STATIC_SHIFT


class FileSource(Protocol):
    """The bytes of one file as an open handle sees them."""

    size: int
    version: str  # changes whenever the content may have changed (keep_cache decision)

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def cached(self) -> bool: ...

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None: ...


class DirStream(Protocol):
    """An open directory: pages of (offset of the next entry, ref, entry), stable offsets."""

    async def page(self, start: int, limit: int) -> Sequence[tuple[int, Ref, Entry]]: ...


class Namespace(Protocol):
    name: str
    writable: bool
    root: Ref
    inode_base: int | None

    async def lookup(self, ref: Ref, name: str) -> tuple[Ref, Entry] | None: ...

    async def opendir(self, ref: Ref) -> DirStream: ...

    async def stat(self, ref: Ref) -> Entry: ...

    async def open(self, ref: Ref) -> FileSource: ...

    async def xattrs(self, ref: Ref, entry: Entry) -> dict[str, bytes]: ...

    def parent(self, ref: Ref) -> Ref: ...

    def describe(self, ref: Ref) -> str: ...


class SnapshotDir:
    """A directory listing taken at opendir: offsets index the snapshot, so they stay
    stable however the remote side changes while the directory is being read."""

    def __init__(self, items: Sequence[tuple[Ref, Entry]]):
        self._items = items

    async def page(self, start: int, limit: int) -> list[tuple[int, Ref, Entry]]:
        end = min(start + limit, len(self._items))
        return [(i + 1, *self._items[i]) for i in range(start, end)]




class OnceLogger:
    """Logs a message about a given subject only once per daemon (hidden keys etc.)."""

    def __init__(self, logger: logging.Logger, limit: int = 100_000):
        self._log = logger
        self._seen: set[str] = set()
        self._limit = limit

    def info(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.INFO, subject, msg, *args)

    def warning(self, subject: str, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, subject, msg, *args)

    def _emit(self, level: int, subject: str, msg: str, *args: object) -> None:
        if subject in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(subject)
        self._log.log(level, msg, *args)


class ObjectSource:
    """An S3 object (or a virtual one, with a loader) served through the block reader."""

    def __init__(self, reader: BlockReader, ref: ObjectRef, loader: Loader | None = None):
        self.reader = reader
        self.ref = ref
        self.size = ref.size
        self.version = ref.etag
        self._loader = loader
        self._state = ReadState()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.reader.read(self.ref, offset, size, self._state, self._loader)

    async def cached(self) -> bool:
        return await self.reader.is_cached(self.ref)

    async def pin(self, keep: bool, progress: Callable[[int], None]) -> None:
        await self.reader.pin(self.ref, self._loader, keep, progress)
