"""Data cache on diskcache: (bucket, key, etag, block) -> verified bytes, LRU, size cap.

Every stored block carries a header with a digest of its identity and a CRC of its
bytes, so a truncated, zeroed or swapped block file is detected on read and treated
as a miss (and dropped) instead of being served. All methods block: call them from
worker threads.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import threading
import zlib
from pathlib import Path

import diskcache

from ..errors import CorruptData
from .safedisk import SafeDisk

log = logging.getLogger(__name__)

_MAGIC = b"S3FB"
_HEADER = struct.Struct(">4sBI16sQ")  # magic, version, crc32, identity digest, length
_VERSION = 1


def block_id(bucket: str, key: str, etag: str, index: int) -> str:
    """The cache key of one block; never used as a path."""
    return f"b\x00{bucket}\x00{key}\x00{etag}\x00{index}"


def _identity(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def header(name: str, data: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, _VERSION, zlib.crc32(data), _identity(name), len(data))


def seal(name: str, data: bytes) -> bytes:
    return header(name, data) + data


class _SealedReader:
    """File-like header+data for diskcache's streaming store: no 8 MiB concatenation."""

    def __init__(self, name: str, data: bytes):
        self._parts = [memoryview(header(name, data)), memoryview(data)]

    def read(self, size: int = -1) -> memoryview | bytes:
        while self._parts and not len(self._parts[0]):
            self._parts.pop(0)
        if not self._parts:
            return b""
        part = self._parts[0]
        size = len(part) if size < 0 else size
        self._parts[0] = part[size:]
        return part[:size]


def unseal(name: str, blob: bytes) -> memoryview:
    """The payload of `blob` (zero-copy) if it is the intact block `name`; CorruptData otherwise."""
    if len(blob) < _HEADER.size:
        raise CorruptData(f"cache block too short ({len(blob)} bytes)")
    magic, version, crc, ident, length = _HEADER.unpack_from(blob)
    data = memoryview(blob)[_HEADER.size:]
    if magic != _MAGIC or version != _VERSION:
        raise CorruptData("cache block has a bad header")
    if ident != _identity(name):
        raise CorruptData("cache block belongs to another object or block")
    if length != len(data) or zlib.crc32(data) != crc:
        raise CorruptData("cache block fails its checksum")
    return data


class BlockCache:
    """Size-capped LRU store of object blocks in `<cache>/blocks`.

    Calls are serialized by a lock: concurrent diskcache transactions would
    otherwise meet in SQLite's busy handler, which sleeps milliseconds per retry.
    """

    def __init__(self, directory: Path, size_limit: int):
        self.directory = directory
        self._lock = threading.Lock()
        self._cache = diskcache.Cache(
            str(directory),
            disk=SafeDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=16,
            statistics=False,
        )

    def get(self, bucket: str, key: str, etag: str, index: int) -> memoryview | None:
        name = block_id(bucket, key, etag, index)
        try:
            with self._lock:
                blob = self._cache.get(name)
        except (CorruptData, OSError) as exc:
            log.warning("cache block for s3://%s/%s #%d unreadable (%s): dropped", bucket, key, index, exc)
            self._drop(name)
            return None
        if blob is None:
            return None
        try:
            return unseal(name, blob)
        except CorruptData as exc:
            log.warning("cache block for s3://%s/%s #%d corrupt (%s): dropped", bucket, key, index, exc)
            self._drop(name)
            return None

    def _drop(self, name: str) -> None:
        with self._lock:
            self._cache.delete(name)

    def put(self, bucket: str, key: str, etag: str, index: int, data: bytes) -> None:
        name = block_id(bucket, key, etag, index)
        with self._lock:
            self._cache.set(name, _SealedReader(name, data), read=True)

    def contains(self, bucket: str, key: str, etag: str, index: int) -> bool:
        with self._lock:
            return block_id(bucket, key, etag, index) in self._cache

    def volume(self) -> int:
        with self._lock:
            return int(self._cache.volume())

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        with self._lock:
            self._cache.close()
