"""The protocol every namespace (bucket, manifest, ...) implements.

Paths inside a namespace are '/'-joined relative strings; "" is its top-level
directory. The FUSE layer maps inodes to (namespace, path) and never needs to
know what kind of namespace answers.
"""
from __future__ import annotations

import logging
from typing import Protocol

from ..cache.meta import Entry
from ..data.reader import BlockReader, ObjectRef, ReadState

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255


class FileSource(Protocol):
    """The bytes of one file as an open handle sees them."""

    size: int
    version: str  # changes whenever the content may have changed (keep_cache decision)

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...


class Namespace(Protocol):
    name: str
    writable: bool

    async def listdir(self, path: str) -> list[Entry]: ...

    async def lookup(self, path: str, name: str) -> Entry | None: ...

    async def stat(self, path: str) -> Entry: ...

    async def open(self, path: str) -> FileSource: ...

    def xattrs(self, path: str, entry: Entry) -> dict[str, bytes]: ...


def is_posix_name(name: str) -> bool:
    """Can `name` be one path component? (never '.', '..', empty, NUL or over 255 bytes)."""
    return (bool(name) and name not in (".", "..") and "\0" not in name and "/" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES)


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def split(path: str) -> tuple[str, str]:
    """'a/b/c' -> ('a/b', 'c'); 'c' -> ('', 'c')."""
    head, _, tail = path.rpartition("/")
    return head, tail


class OnceLogger:
    """Logs a message about a given subject only once per daemon (hidden keys etc.)."""

    def __init__(self, logger: logging.Logger, limit: int = 100_000):
        self._log = logger
        self._seen: set[str] = set()
        self._limit = limit

    def info(self, subject: str, msg: str, *args: object) -> None:
        if subject in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(subject)
        self._log.info(msg, *args)


class ObjectSource:
    """A plain S3 object served through the block reader."""

    def __init__(self, reader: BlockReader, ref: ObjectRef):
        self.reader = reader
        self.ref = ref
        self.size = ref.size
        self.version = ref.etag
        self._state = ReadState()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.reader.read(self.ref, offset, size, self._state)
