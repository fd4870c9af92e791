"""The core types every layer shares: a directory entry, a version of an object, a ref.

They live at the bottom of the import graph (next to errors.py) so that the cache,
the namespaces, the read path and the FUSE adapter all speak the same types without
importing each other. This module imports nothing of ours but posix.py (as low as it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from .posix import Posix

#: How a namespace names one of its nodes: a relative path (buckets), a rowid (manifests).
Ref = Hashable


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory, as last seen in S3 (or as local changes show it)."""

    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""
    checked_at: float = 0.0
    #: POSIX metadata from the object's headers; None: not looked up yet (a listing
    #: does not return headers), NO_HEADERS: looked up, none stored.
    posix: Posix | None = None


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One version of one object: what the block cache keys its bytes by."""

    bucket: str
    key: str
    etag: str
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"
