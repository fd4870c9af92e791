"""Local changes S3 does not show yet, laid over its listings.

Between a write and the end of its upload (seconds, or hours offline) S3 still lists
the old state. The overlay holds, per key, what the mount must show instead: a file
with its local size, a new directory (a pending `dir/` marker), a removal, or only new
POSIX metadata of an object whose bytes S3 has (`etag` names that version: reads go to
S3). Every change carries the metadata its pending request will store (`posix`). Bucket
trees consult it on every lookup, stat and listing; the write-back layer fills it and
clears a key once S3 has caught up. In memory only: at start it is rebuilt from the
upload journal, which holds every change not yet in S3.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from ..posix import Posix


@dataclass(slots=True)
class Change:
    """What the mount shows for one key until S3 has it."""

    is_dir: bool = False
    deleted: bool = False
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    generation: int = 0  # bumped by every change: a stale clear() must not undo a newer one
    posix_as_set: Posix | None = None  # `posix` as last set, without the last write's times
    etag: str = ""  # a metadata-only change: the version in S3 it applies to (its bytes)
    restamp: bool = False  # written since: `posix` takes the times of the last write
    made: bool = False  # a directory made here (not a metadata change of one in S3)

    @property
    def posix(self) -> Posix | None:
        """The metadata the pending change stores (None: no headers), with the times of the
        last write. Stamped when asked, not at every write: a copy of the metadata per
        write(2) was a quarter of the daemon's time for a `write` of 10 KiB."""
        if self.restamp:
            self.restamp = False
            if self.posix_as_set is not None:
                self.posix_as_set = self.posix_as_set.replace(mtime_ns=self.mtime_ns,
                                                          ctime_ns=self.mtime_ns)
        return self.posix_as_set

    @posix.setter
    def posix(self, posix: Posix | None) -> None:
        self.posix_as_set = posix
        self.restamp = False

    @property
    def meta_only(self) -> bool:
        """New metadata of bytes S3 has (reads go to S3 with `etag`)."""
        return bool(self.etag)

    def wrote(self, now_ns: int) -> None:
        """The bytes changed locally: modified and changed now, no longer S3's version."""
        self.mtime_ns = now_ns
        self.etag = ""
        self.restamp = True

    def set_posix(self, posix: Posix) -> None:
        """Metadata set (chmod, utimens, ...): shown, and stored by the pending change."""
        self.posix = posix
        if posix.mtime_ns is not None:
            self.mtime_ns = posix.mtime_ns


class Overlay:
    """(bucket, key) -> Change, indexed by parent prefix for listings."""

    def __init__(self) -> None:
        self._changes: dict[tuple[str, str], Change] = {}
        self._children: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._generation = 0

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        """'a/b/c' -> ('a/b/', 'c'); a marker 'a/b/' -> ('a/', 'b')."""
        head, _, name = key.rstrip("/").rpartition("/")
        return (head + "/" if head else ""), name

    def _set(self, bucket: str, key: str, change: Change) -> Change:
        self._generation += 1
        change.generation = self._generation
        self._changes[(bucket, key)] = change
        parent, _ = self._split(key)
        self._children[(bucket, parent)].add(key)
        return change

    def file(self, bucket: str, key: str, size: int, mtime_ns: int | None = None,
             posix: Posix | None = None) -> Change:
        """A file written locally (its size follows later writes through the Change)."""
        if mtime_ns is None and posix is not None:
            mtime_ns = posix.mtime_ns
        if mtime_ns is None:  # (0 is a time: 1970-01-01)
            mtime_ns = time.time_ns()
        return self._set(bucket, key, Change(size=size, mtime_ns=mtime_ns, posix_as_set=posix))

    def directory(self, bucket: str, key: str, posix: Posix | None = None) -> Change:
        """A directory made locally; `key` ends with '/'."""
        mtime_ns = posix.mtime_ns if posix is not None else None
        if mtime_ns is None:
            mtime_ns = time.time_ns()
        return self._set(bucket, key, Change(is_dir=True, mtime_ns=mtime_ns, posix_as_set=posix,
                                             made=True))

    def metadata(self, bucket: str, key: str, posix: Posix, *, size: int, etag: str,
                 mtime_ns: int) -> Change:
        """New metadata of the object `etag` (bytes unchanged: S3's), or of a directory's
        marker (`key` ending with '/'); `mtime_ns`: the time shown when `posix` has none."""
        return self._set(bucket, key, Change(
            is_dir=key.endswith("/"), size=size,
            mtime_ns=mtime_ns if posix.mtime_ns is None else posix.mtime_ns,
            posix_as_set=posix, etag=etag))

    def delete(self, bucket: str, key: str) -> Change:
        """A file or a directory marker removed locally."""
        return self._set(bucket, key, Change(deleted=True))

    def get(self, bucket: str, key: str) -> Change | None:
        return self._changes.get((bucket, key))

    def clear(self, bucket: str, key: str, generation: int | None = None) -> None:
        """S3 shows the change now; with `generation`, only if nothing newer happened since."""
        change = self._changes.get((bucket, key))
        if change is None or (generation is not None and change.generation != generation):
            return
        del self._changes[(bucket, key)]
        parent, _ = self._split(key)
        siblings = self._children.get((bucket, parent))
        if siblings is not None:
            siblings.discard(key)
            if not siblings:
                del self._children[(bucket, parent)]

    def children(self, bucket: str, prefix: str) -> dict[str, Change]:
        """Name -> change of the keys directly under `prefix` ('' or ending with '/')."""
        keys = self._children.get((bucket, prefix), ())
        return {self._split(key)[1]: self._changes[(bucket, key)] for key in keys}

    def has_live_under(self, bucket: str, prefix: str) -> bool:
        """Does any local file or directory (not a removal) live below `prefix`?"""
        return any(b == bucket and k.startswith(prefix) and k != prefix and not c.deleted
                   for (b, k), c in self._changes.items())

    def keys_under(self, bucket: str, prefix: str) -> list[str]:
        return [k for (b, k) in self._changes if b == bucket and k.startswith(prefix)]
