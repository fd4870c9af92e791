"""The top directory of a source: a prefix's shows its marker's mode, owner and times,
a bucket's keeps what was set on it for the mount's life.

A source `team=s3://bucket/team` shows the prefix `team/` as its top directory. Other
directories learn their marker's metadata from their parent's listing and a HEAD; the
top has no parent listing in this tree, and it showed the `--dir-mode/--uid/--gid`
defaults whatever `team/` stored: a 0700 directory showed 0755 to every user of an
`--allow-other` mount, and a `chmod` of the top, built on those defaults, wrote them over
the stored owner and group. So the top's marker is HEADed here, at the first stat and
again once older than the metadata TTL.

A bucket's top (no prefix) has no object to keep them: a change of its mode, owner or times
is kept here for the mount's life. Refused, it failed `rsync -a src/ mnt/bucket/` (exit 23),
`tar -x -C mnt/bucket` and `cp -a src/. mnt/bucket/`, which set the times of the top.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import trio

from ...cache.overlay import Overlay
from ...errors import NotFound, S3FuseError
from ...model import Entry
from ...posix import Posix, from_headers, stored_mtime
from ...store.protocol import Store
from ...upload.journal import UNKNOWN, Expected
from ...upload.uploader import UploadResult
from .keys import BucketKeys

log = logging.getLogger(__name__)


class TopDir:
    def __init__(self, keys: BucketKeys, store: Store, overlay: Overlay, *, ttl: float,
                 enabled: bool, limiter: trio.CapacityLimiter):
        self._keys = keys
        self._store = store
        self._overlay = overlay
        self._ttl = ttl
        self._marked = bool(keys.dir_prefix(""))  # a prefix's top: its marker keeps them
        self._enabled = enabled and self._marked
        self._limiter = limiter
        self._known: Entry | None = None  # the marker's metadata as last HEADed
        self._kept: Posix | None = None  # a bucket's top: as last set here
        self._lock = trio.Lock()  # one HEAD for stats arriving together

    async def entry(self, shown: Entry, for_change: bool = False) -> Entry:
        """`shown` (the top with the mount's defaults) with its marker's metadata: looked
        up when unknown or older than the TTL; the last known (or the defaults) while S3
        cannot say. Under --no-posix-metadata only for a change (`for_change`: it keeps
        what the marker stores), and what that found or stored shows from then on."""
        if self._kept is not None:
            return replace(shown, posix=self._kept,
                           mtime_ns=stored_mtime(self._kept, shown.mtime_ns))
        if not self._marked:
            return shown
        change = self._overlay.get(self._keys.bucket, self._keys.dir_prefix(""))
        if change is not None and not change.deleted and change.posix is not None:
            return replace(shown, posix=change.posix,  # a change of it not landed yet
                           mtime_ns=stored_mtime(change.posix, shown.mtime_ns))
        known = await self._fresh() if self._enabled or for_change else self._known
        if known is None or known.posix is None:
            return shown
        return replace(shown, posix=known.posix, mtime_ns=stored_mtime(known.posix, known.mtime_ns))

    async def marker(self) -> Expected:
        """What a change of the top expects of its marker: its ETag, None when it has none
        (the change makes one), UNKNOWN when S3 cannot say now. Copied onto a marker that
        is not there, a chmod was dropped (moto) or refused for ever (SeaweedFS, whose HEAD
        of a prefix with keys answers 200 where its copy finds nothing)."""
        known = await self._fresh()
        if known is None:
            return UNKNOWN
        return known.etag or None

    @property
    def keeps(self) -> bool:
        """A bucket's top: its metadata is kept here, not in S3."""
        return not self._keys.dir_prefix("")

    def keep(self, posix: Posix) -> None:
        """chmod, chown, utimens of a bucket's top: shown until the unmount."""
        self._kept = posix

    def landed(self, result: UploadResult | None) -> None:
        """A change of the marker made here landed: what it stored is known for the TTL
        (SeaweedFS keeps no metadata on markers: a HEAD at once showed the defaults again
        while every other directory's change shows for the metadata cache's life); a
        removal or a change S3 dropped: HEAD it at the next stat."""
        if result is None or result.kept_remote or result.posix is None:
            self._known = None
            return
        self._known = Entry("", True, 0, stored_mtime(result.posix, 0), result.etag,
                            time.time(), result.posix)

    async def _fresh(self) -> Entry | None:
        """The marker as HEADed within the TTL (once for requests arriving together); None
        when it was never known and S3 cannot say now."""
        async with self._lock:
            known = self._known
            if known is None or time.time() - known.checked_at >= self._ttl:
                known = await self._head(known)
        return known

    async def _head(self, known: Entry | None) -> Entry | None:
        marker = self._keys.dir_prefix("")
        try:
            info = await trio.to_thread.run_sync(self._store.head, self._keys.bucket, marker,
                                                 limiter=self._limiter)
        except NotFound:  # keys only: the top shows the defaults (a chmod makes a marker)
            info = None
        except S3FuseError as exc:  # offline, denied: what was known, else the defaults
            log.debug("HEAD of the top %s: %s", self._keys.uri(marker), exc)
            return known
        if info is None or (info.size == 0 and not info.metadata):
            # an empty marker without metadata holds nothing to keep: as none (SeaweedFS
            # answers a HEAD of a prefix with keys so, and refuses every If-Match on it)
            self._known = Entry("", True, checked_at=time.time())
            return self._known
        posix = from_headers(info.metadata or {}, is_dir=True)
        self._known = Entry("", True, 0, info.mtime_ns, info.etag, time.time(), posix)
        return self._known
